"""docs/faults.md row 40: a program that setup names is not installed: said by ``init``,
``doctor`` and ``plan`` before ``up`` fails on it."""
from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from hybridiso.envs.programs import missing_programs, programs
from tests.support.cli import hybridiso
from tests.support.gitrepo import make_repo

MISSING = "hybridiso-test-no-such-tool"


@pytest.mark.parametrize(
    ("command", "found"),
    [
        ("npm ci", ["npm"]),
        (["uv", "sync"], ["uv"]),
        ("FOO=1 BAR='a b' make -j4 && ./configure; cd web && yarn install", ["make", "./configure", "yarn"]),
        ("if true; then pnpm i; fi", ["pnpm"]),
        ("echo hi > out.txt 2>&1", []),
        ("2>/dev/null tox -q", ["tox"]),
        ("(cd x && bundle install) | tee log", ["bundle", "tee"]),
        ("exec poetry install", ["poetry"]),
        ("npm ci\nnpm run build", ["npm", "npm"]),
        ("for f in a b; do touch $f; done", ["touch"]),
        ("cat <<EOF\nnot a command\nEOF", ["cat"]),
        ("case $x in a) foo;; esac", []),  # not guessed
    ],
)
def test_the_programs_a_setup_command_runs(command: str | list[str], found: list[str]) -> None:
    assert programs(command) == found


def test_what_is_missing_and_what_cannot_be_told(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "mytool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o644)  # there, but not executable
    commands = [f"{MISSING} --x", ["git", "status"], str(tool), "/no/such/dir/tool", "./configure", "$HOME/bin/x", "a 'unclosed"]
    found = {(m.program, m.why.split(" (")[0]) for m in missing_programs("a", commands, {})}
    assert found == {
        (MISSING, "not installed"),
        (str(tool), "not executable"),
        ("/no/such/dir/tool", "not there"),
        ("/bin/sh", "unable to parse it"),
    }
    # the agent's own PATH (env:) is the one setup runs with
    tool.chmod(0o755)
    assert missing_programs("a", ["mytool"], {"PATH": str(tool.parent)}) == []
    assert [m.program for m in missing_programs("a", ["git"], {"PATH": str(tool.parent)})] == ["git"]


def test_init_proposes_only_setup_commands_that_can_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "r", {"package-lock.json": "{}\n", "uv.lock": "x\n", "Gemfile.lock": "x\n"})
    # a PATH where npm exists and uv and bundle do not, whatever this machine has
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    fake = bin_dir / "npm"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    r = hybridiso(repo, "init")
    text = (repo / "hybridiso.yaml").read_text()
    assert '    - "npm ci"' in text
    assert '    # - "uv sync --frozen"    # uv is not installed here' in text
    assert '    # - "bundle install"    # bundle is not installed here' in text
    assert "uv is not installed here" in r.stderr and "bundle is not installed here" in r.stderr
    rows = json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]
    assert all(r["warnings"] == [] for r in rows)  # what init wrote can run here


def test_plan_and_doctor_say_a_setup_program_is_missing_before_up(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    (repo / "hybridiso.yaml").write_text(
        f"defaults:\n  setup: ['{MISSING} install', 'true']\nagents:\n  - name: a\n  - name: b\n  - name: c\n    setup: [[git, status]]\n"
    )
    plan = hybridiso(repo, "plan")
    assert f"a, b: setup `{MISSING} install` runs '{MISSING}', which is not installed (not found on PATH)" in plan.stderr
    rows = {r["agent"]: r for r in json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]}
    assert any(MISSING in w for w in rows["a"]["warnings"]) and rows["c"]["warnings"] == []
    checks = {c["name"]: c for c in json.loads(hybridiso(repo, "doctor", "--json").stdout)}
    assert checks["setup programs"]["status"] == "warn" and MISSING in checks["setup programs"]["detail"]
    assert checks["manifest"]["status"] == "ok"
    # and up fails on exactly that, as said
    up = hybridiso(repo, "up", "a", ok=False)
    assert up.returncode == 1 and "exit 127" in up.stderr


def test_doctor_reports_a_broken_manifest_as_a_failed_check(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    (repo / "hybridiso.yaml").write_text("agents:\n  - name: a\n    colour: red\n")
    r = hybridiso(repo, "doctor", "--json", ok=False)
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert checks["manifest"]["status"] == "fail" and "line 3: agents[0].colour: unknown key" in checks["manifest"]["detail"]
    assert "1 check failed: manifest" in r.stderr and r.returncode == 1


@pytest.mark.docker
def test_plan_and_doctor_say_an_image_is_not_on_this_machine(tmp_path: Path, busybox_image: str) -> None:
    repo = make_repo(tmp_path / "r")
    (repo / "hybridiso.yaml").write_text(
        f"agents:\n  - {{name: here, image: '{busybox_image}'}}\n  - {{name: gone, image: 'hybridiso-test/no-such-image:404'}}\n"
    )
    rows = {r["agent"]: r for r in json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]}
    assert rows["here"]["warnings"] == []
    assert any("image 'hybridiso-test/no-such-image:404' is not on this machine: `up` pulls it" in w for w in rows["gone"]["warnings"])
    checks = {c["name"]: c for c in json.loads(hybridiso(repo, "doctor", "--json").stdout)}
    assert checks["images"]["status"] == "warn" and checks["images"]["detail"] == "not on this machine: hybridiso-test/no-such-image:404"


def test_init_proposes_a_land_check_whose_program_is_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridiso.manifest_file import parse_manifest

    repo = make_repo(
        tmp_path / "r",
        {"Makefile": "build:\n\ttrue\n\ntest:\n\tpytest\n", "go.mod": "module x\n", "pyproject.toml": "[tool.pytest.ini_options]\n",
         "package.json": '{"scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}\n'},
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    for name in ("make", "pytest"):
        fake = bin_dir / name
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(bin_dir))
    r = hybridiso(repo, "init", "--print")
    m = parse_manifest(r.stdout, repo / "hybridiso.yaml")
    assert m.land.check == ["make test"]  # the project's own entry point first; npm's default test script is no test
    assert '  # check: ["go test ./..."]    # go is not installed here' in r.stdout
    assert "go is not installed here: the land check 'go test ./...' is commented out" in r.stderr
    assert "npm test" not in r.stdout
    # make missing: the next one found that can run
    (bin_dir / "make").unlink()
    r = hybridiso(repo, "init", "--print")
    assert parse_manifest(r.stdout, repo / "hybridiso.yaml").land.check == ["pytest -q"]
    # nothing found: a commented example, and no land section
    bare = make_repo(tmp_path / "bare", {"README.md": "x\n"})
    text = hybridiso(bare, "init", "--print").stdout
    assert parse_manifest(text, bare / "hybridiso.yaml").land.check == [] and '#   check: ["make test"]' in text
