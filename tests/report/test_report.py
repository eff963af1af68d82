"""Cost reports measured on real repositories, checked against du and git."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybridiso.report.measure import disk_report
from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import git, make_repo


def du(*paths: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", "--", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines())


def repo_with_files(tmp_path: Path, n: int = 300) -> Path:
    files = {f"src/m{i // 30}/f{i}.py": f"value = {i}\n" * (1 + i % 50) for i in range(n)}
    files[".gitignore"] = ".env\n"
    repo = make_repo(tmp_path / "proj", files)
    git(repo, "gc", "-q")
    return repo


def test_disk_report_matches_du_and_counts_hard_links_once(tmp_path: Path) -> None:
    repo = repo_with_files(tmp_path)
    write_manifest(repo, "agents:\n  - {name: w1}\n  - {name: w2}\n  - {name: c1, isolation: clone}\n")
    hybridiso(repo, "up")
    ws = tmp_path / "proj.agents"
    envs = {n: ws / n for n in ("w1", "w2", "c1")}
    store = repo / ".git"
    report = disk_report(store, envs, exclude=[store / "hybridiso"])
    # du counts an inode once across its arguments: the same rule
    expected_total = du(store, *envs.values()) - du(store / "hybridiso")
    assert abs(report.total_bytes - expected_total) <= 64 * 1024  # du rounds directories differently; 16 blocks of slack
    # a worktree's checkout is its own: unique bytes ~ du of the env alone
    assert abs(report.envs["w1"].unique_bytes - du(ws / "w1")) <= 16 * 1024
    # the clone's pack is hard-linked to the store: shared, not unique
    pack = next((ws / "c1" / ".git" / "objects" / "pack").glob("*.pack"))
    assert report.envs["c1"].shared_bytes >= pack.stat().st_blocks * 512
    assert report.envs["c1"].unique_bytes < du(ws / "c1")


def test_live_report_json_shape(tmp_path: Path) -> None:
    repo = repo_with_files(tmp_path, 50)
    write_manifest(repo, "defaults: {setup: ['sleep 0.3']}\nagents:\n  - {name: w1}\n  - {name: c1, isolation: clone}\n")
    hybridiso(repo, "up")
    data = json.loads(hybridiso(repo, "report", "--format", "json").stdout)
    assert data["schema_version"] == 1 and data["mode"] == "live"
    rows = {r["strategy"]: r for r in data["strategies"]}
    assert set(rows) == {"worktree", "clone"}
    assert rows["worktree"]["ratios"]["disk_bytes_per_env"] == 1.0
    assert rows["clone"]["ratios"]["disk_bytes_per_env"] > 1.0
    assert rows["worktree"]["startup_seconds"] > 0
    # startup, step by step as up timed it: the parts add up to the whole
    for env in data["envs"]:
        parts = env["startup_parts"]
        assert {"create", "includes", "setup", "start"} <= set(parts), parts
        assert parts["setup"] >= 0.3 and parts["create"] > 0
        assert sum(parts.values()) <= env["startup_seconds"] + 0.01
    text = hybridiso(repo, "report").stdout
    assert "per environment (startup as `up` timed it, step by step)" in text
    assert any(line.split()[:2] == ["c1", "clone"] for line in text.splitlines())


def test_compare_measures_fetch_once_for_worktrees_n_times_for_clones(tmp_path: Path) -> None:
    repo = repo_with_files(tmp_path)
    write_manifest(repo, "agents:\n  - name: a\n")
    plan = hybridiso(repo, "plan")
    before = plan.stderr
    # nothing measured yet: disk estimated (~), startup unknown, and said so
    assert "* ~ = estimated: disk from the base tree (301 files)" in before and "startup unknown until measured" in before
    assert not re.search(r"measured \d{4}-", before)
    row = next(line.split() for line in plan.stdout.splitlines() if line.startswith("a "))
    assert row[-3].startswith("~") and row[-1] == "unknown", row
    r = hybridiso(repo, "report", "--compare", "3", "--strategies", "worktree,clone", "--format", "json")
    data = json.loads(r.stdout)
    rows = {x["strategy"]: x for x in data["strategies"]}
    assert rows["worktree"]["fetches"] == 1 and rows["clone"]["fetches"] == 3
    assert rows["worktree"]["fetch_bytes"] > 0 and rows["clone"]["fetch_bytes"] > rows["worktree"]["fetch_bytes"]
    assert len(rows["clone"]["startup_seconds_each"]) == 3
    assert data["repository"]["files"] == 301
    for x in rows.values():
        assert set(x["ratios"]) == {"disk_bytes_per_env", "fetch_seconds", "startup_seconds"}
    assert min(x["ratios"]["disk_bytes_per_env"] for x in rows.values()) == 1.0
    # nothing left behind, nothing changed in the user's repository
    assert not list(tmp_path.glob(".proj.hybridiso-compare-*"))
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert git(repo, "log", "--oneline").count("\n") == 0  # still one commit
    # plan now uses the measurement, and says so
    plan = hybridiso(repo, "plan")
    after = plan.stderr
    assert re.search(r"\* measured \d{4}-\d\d-\d\d \d\d:\d\d UTC by `report --compare 3`", after) and "estimated" not in after
    row = next(line.split() for line in plan.stdout.splitlines() if line.startswith("a "))
    assert "~" not in " ".join(row) and "unknown" not in row, row
    shown = json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"][0]
    assert shown["projected_disk_bytes"] == rows["worktree"]["disk_bytes_per_env"] and shown["projected_disk_measured"] is True
    assert shown["projected_startup_seconds"] == rows["worktree"]["startup_seconds"] and shown["projected_startup_measured"] is True


def test_compare_needs_no_manifest_and_reports_the_branch_it_measured(tmp_path: Path) -> None:
    # a repository as cloned from anywhere: no hybridiso.yaml, default branch not "main"
    repo = make_repo(tmp_path / "proj", {"a.txt": "a\n", "b/c.txt": "c\n"}, branch="devel")
    r = hybridiso(repo, "report", "--compare", "2", "--strategies", "worktree", "--format", "json")
    data = json.loads(r.stdout)
    assert data["repository"]["base"] == "devel" and data["repository"]["files"] == 2
    assert [x["envs"] for x in data["strategies"]] == [2]
    assert "built worktree work0" in r.stderr and "built worktree work1" in r.stderr
    assert not (repo / "hybridiso.yaml").exists()  # measuring writes no manifest
    # the other commands still ask for one
    assert "no manifest" in hybridiso(repo, "status", ok=False).stderr


def test_formats_and_self_contained_html(tmp_path: Path) -> None:
    repo = repo_with_files(tmp_path, 40)
    write_manifest(repo, "agents: []\n")
    out = tmp_path / "report.html"
    hybridiso(repo, "report", "--compare", "1", "--strategies", "worktree,clone", "--format", "html", "-o", str(out))
    html = out.read_text()
    assert html.startswith("<!doctype html>") and html.count("<svg") == 3
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html and "<script" not in html
    md = hybridiso(repo, "report", "--compare", "1", "--strategies", "worktree", "--format", "markdown").stdout
    assert "| STRATEGY" in md and "| worktree" in md
    table = hybridiso(repo, "report", "--compare", "1", "--strategies", "worktree").stdout
    assert "STRATEGY" in table and "worktree" in table


def test_compare_cleans_up_when_interrupted(tmp_path: Path) -> None:
    repo = repo_with_files(tmp_path, 40)
    marker = tmp_path / "setup-ran"
    write_manifest(repo, f"defaults:\n  setup: ['touch {marker}; sleep 30']\nagents: []\n")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "report", "--compare", "2", "--strategies", "worktree"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 60
    while not marker.exists() and time.time() < end:
        time.sleep(0.05)
    assert list(tmp_path.glob(".proj.hybridiso-compare-*")), "the throwaway workspace should exist mid-run"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert not list(tmp_path.glob(".proj.hybridiso-compare-*"))
    # the setup command was stopped too, not left running
    left = subprocess.run(["pgrep", "-f", f"touch {marker}"], capture_output=True, text=True).stdout
    assert left.strip() == ""


def test_report_errors_are_clear(tmp_path: Path) -> None:
    repo = repo_with_files(tmp_path, 5)
    write_manifest(repo, "agents: []\n")
    r = hybridiso(repo, "report", ok=False)
    assert "no live environments" in r.stderr and "--compare" in r.stderr
    r = hybridiso(repo, "report", "--compare", "1", "--strategies", "vm", ok=False)
    assert "unknown strategies: vm" in r.stderr
    # an output path that cannot be written is refused before any measuring
    r = hybridiso(repo, "report", "--compare", "1", "-o", str(tmp_path / "missing" / "r.html"), ok=False)
    assert r.returncode == 1 and "does not exist" in r.stderr and "measuring" not in r.stderr
    r = hybridiso(repo, "report", "--compare", "1", "-o", str(tmp_path), ok=False)
    assert r.returncode == 1 and "is a directory" in r.stderr
    assert not (tmp_path / f"{repo.name}.agents").exists() and "hybridiso" not in git(repo, "worktree", "list")


@pytest.mark.docker
def test_compare_includes_containers_when_docker_is_there(tmp_path: Path, busybox_image: str, compose_v2: str) -> None:
    repo = repo_with_files(tmp_path, 20)
    write_manifest(repo, 'labels: {dev.hybridiso.test: "1"}\nagents: []\n')
    # another comparison's container, running beside this one: not ours to remove
    other = subprocess.run(
        ["docker", "create", "--label", "dev.hybridiso.compare=1", "--label", "dev.hybridiso.test=1", busybox_image, "sleep", "60"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    try:
        data = json.loads(hybridiso(repo, "report", "--compare", "1", "--image", busybox_image, "--format", "json").stdout)
        assert subprocess.run(["docker", "inspect", other], capture_output=True).returncode == 0
    finally:
        subprocess.run(["docker", "rm", "-f", other], capture_output=True)
    rows = {x["strategy"]: x for x in data["strategies"]}
    assert set(rows) == {"worktree", "clone", "container"} and data["skipped"] == {}
    assert rows["container"]["startup_seconds"] > rows["worktree"]["startup_seconds"]
    left = subprocess.run(["docker", "ps", "-aq", "--filter", "label=dev.hybridiso.compare"], capture_output=True, text=True).stdout
    assert left.strip() == ""


def test_gc_removes_what_a_killed_compare_left_and_spares_a_running_one(tmp_path: Path, busybox_image: str, compose_v2: str) -> None:
    import os

    repo = repo_with_files(tmp_path, 20)
    # a container agent's setup runs in its container (issue 12): the marker
    # goes into its worktree, which is inside the comparison's workdir
    write_manifest(repo, 'labels: {dev.hybridiso.test: "1"}\ndefaults:\n  setup: ["touch setup-ran; sleep 30"]\nagents: []\n')
    argv = [sys.executable, "-m", "hybridiso", "report", "--compare", "1", "--strategies", "container", "--image", busybox_image]
    proc = subprocess.Popen(argv, cwd=repo, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.time() + 60
        while not list(tmp_path.glob(".proj.hybridiso-compare-*/**/setup-ran")) and time.time() < end:
            time.sleep(0.05)
        [workdir] = tmp_path.glob(".proj.hybridiso-compare-*")

        def leftovers() -> list[dict[str, object]]:
            found = json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"]
            return [f for f in found if "report --compare" in str(f["target"])]

        assert leftovers() == []  # running: not gc's to touch
        os.killpg(proc.pid, signal.SIGKILL)  # no cleanup at all: a power cut, an OOM kill
        proc.wait(timeout=30)
        label = f"label=dev.hybridiso.compare={workdir.name}"
        assert workdir.exists() and subprocess.run(["docker", "network", "ls", "-q", "--filter", label], capture_output=True, text=True).stdout.strip()
        [finding] = leftovers()
        owns = list(finding["owns"])  # type: ignore[call-overload]
        assert finding["action"] == "remove" and f"directory {workdir}" in owns and any(o.startswith("network ") for o in owns)
        hybridiso(repo, "gc", "--yes")
        assert not workdir.exists() and leftovers() == []
        for kind in (["ps", "-aq"], ["network", "ls", "-q"], ["volume", "ls", "-q"]):
            assert subprocess.run(["docker", *kind, "--filter", label], capture_output=True, text=True).stdout.strip() == ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
