"""Usage errors exit 2 with the usage line (issue 11: `up -j 0` was
accepted; `exec AGENT` without a command and `report --compare 0` exited 1),
before anything is read or made."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import git, make_repo

CASES = [
    (("up", "-j", "0"), "argument -j/--jobs: 0 is out of range: use 1 to 256"),
    (("up", "-j", "-3"), "argument -j/--jobs: -3 is out of range"),
    (("up", "-j", "two"), "argument -j/--jobs: 'two' is not a whole number"),
    (("up", "-j", "9223372036854775808"), "is out of range"),
    (("sync", "-j", "0"), "argument -j/--jobs: 0 is out of range"),
    (("exec", "a"), "no command given: hybridiso exec AGENT -- CMD"),
    (("exec", "a", "--"), "no command given"),
    (("report", "--compare", "0"), "argument --compare: 0 is out of range: use 1 to 50"),
    (("report", "--compare", "51"), "argument --compare: 51 is out of range"),
    (("report", "--compare", "1", "--strategies", "vm,clone"), "argument --strategies: unknown strategies: vm"),
    (("report", "--compare", "1", "--strategies", ","), "unknown strategies: (none given)"),
    (("demo", "--files", "0"), "argument --files: 0 is out of range"),
    (("land", "--parallel", "0"), "'0' is not a number of checks at once (1 <= K <= 64"),
    (("land", "--parallel", "99999999999999999999"), "is not a number of checks at once"),
]


@pytest.mark.parametrize(("args", "says"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_usage_errors_exit_2_before_anything_happens(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: a}\n")
    refs = git(repo, "for-each-ref")
    r = hybridiso(repo, *args, ok=False)
    assert r.returncode == 2, r.stderr
    assert f"usage: hybridiso {args[0]}" in r.stderr and says in r.stderr
    assert not (tmp_path / "r.agents").exists() and not (repo / ".git" / "hybridiso").exists()
    assert git(repo, "for-each-ref") == refs


def test_good_numbers_still_work(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: a}\n  - {name: b}\n")
    hybridiso(repo, "up", "-j", "1")
    assert hybridiso(repo, "exec", "a", "--", "git", "rev-parse", "--abbrev-ref", "HEAD").stdout.strip() == "hybridiso/a"
    hybridiso(repo, "sync", "-j", "2")
