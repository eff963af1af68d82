"""``hybridiso demo``, the README's first command, as a new user runs it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.docker_fixtures import reap


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # the demo works in a temp dir of its own; TMPDIR keeps it inside this test's
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "hybridiso", "demo", "--files", "40", *args],
        capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL,
    )


def report_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0] in ("worktree", "clone", "container") and re.fullmatch(r"\d+", cells[1]):
            rows[cells[0]] = cells
    return rows


def test_demo_brings_up_every_strategy_and_ends_with_the_cost_report(tmp_path: Path) -> None:
    r = run_demo(tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    for step in ("$ hybridiso plan", "$ hybridiso up", "$ hybridiso status", "$ hybridiso down", "$ hybridiso report --compare 2"):
        assert step in out
    assert re.search(r"ui sees PORT_WEB=\d+ in \S+sample-shop\.agents/ui", out)
    assert re.search(r"rewriter\s+clone\s+ready", out)  # auto -> clone, from workload.needs
    # the report comes last, with both strategies measured and the ratios
    rows = report_rows(r.stdout)
    assert set(rows) == {"worktree", "clone"} and rows["worktree"][4] == "1.00x"
    assert r.stdout.rstrip().splitlines()[-1].split()[0] in ("worktree", "clone")
    assert "tree: 42 files" in r.stdout  # 40 + .gitignore + hybridiso.yaml
    # nothing is left behind: the sample repository and its environments are gone
    assert list(tmp_path.iterdir()) == []


@pytest.mark.docker
def test_demo_with_a_container_agent(tmp_path: Path, busybox_image: str, compose_v2: str) -> None:
    try:
        r = run_demo(tmp_path, "--image", busybox_image)
        assert r.returncode == 0, r.stderr
        assert re.search(r"web\s+container\s+ready", r.stdout + r.stderr)
        assert set(report_rows(r.stdout)) == {"worktree", "clone", "container"}
        assert list(tmp_path.iterdir()) == []
        for kind in (["ps", "-aq"], ["network", "ls", "-q"], ["volume", "ls", "-q"]):
            left = subprocess.run(["docker", *kind, "--filter", "label=dev.hybridiso.demo"], capture_output=True, text=True).stdout
            assert left.strip() == "", f"docker {kind[0]}: the demo left {left.split()}"
    finally:
        reap("dev.hybridiso.demo")
