#!/usr/bin/env python3
"""Benchmark: `hybridiso up` of 8 worktree agents vs plain sequential
`git worktree add` of the same 8, measured in the same run; and `status`.

    python docs/bench/bench_up.py [--files 6000] [--agents 8] [--rounds 5]

Prints each round and the medians, with the ratio hybridiso / git (target:
<= 1.0) and the time of `hybridiso status` for the agents (target: < 0.5 s).
Not a test: timings depend on the machine; docs/benchmarks.md has the figures.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# hybridiso runs here as an installed user runs it: with Python's bytecode
# cache (some CI images set PYTHONDONTWRITEBYTECODE, which would make every
# run recompile the package and charge that to hybridiso)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def sh(*argv: str, cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, env=ENV, check=True, capture_output=True)


def make_repo(root: Path, files: int) -> Path:
    repo = root / "repo"
    repo.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    for i in range(files):
        d = repo / f"pkg{i % 60:02d}" / f"sub{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i:05d}.py").write_text(f"VALUE = {i}\n" + "x = 1\n" * (i % 40))
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "files", cwd=repo)
    return repo


def settle(limit: float = 30.0) -> None:
    """Let the previous phase's writes and deletes reach the disk first: on
    small VMs they otherwise slow the next phase several-fold.  Waits for the
    kernel's I/O pressure (PSI) to drop, or ``limit`` seconds."""
    os.sync()
    end = time.time() + limit
    while time.time() < end:
        try:
            some = open("/proc/pressure/io").readline().split()[1]
        except OSError:
            time.sleep(2)
            return
        if float(some.split("=")[1]) < 0.5:
            return
        time.sleep(1)


def timed(fn, settle_first: bool = True) -> float:  # type: ignore[no-untyped-def]
    if settle_first:
        settle()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def plain_git(repo: Path, ws: Path, n: int, round_: int) -> float:
    def go() -> None:
        for i in range(n):
            sh("git", "worktree", "add", "-q", "--no-track", "-b", f"plain/r{round_}a{i}", str(ws / f"r{round_}a{i}"), "main", cwd=repo)

    return timed(go)


def hybridiso(repo: Path, n: int, round_: int) -> tuple[float, float, float]:
    cli = [sys.executable, "-m", "hybridiso"]
    names = [f"r{round_}a{i}" for i in range(n)]
    agents = "".join(f"  - name: {name}\n    isolation: worktree\n" for name in names)
    (repo / "hybridiso.yaml").write_text(f"version: 1\nbase: main\nagents:\n{agents}")
    up = timed(lambda: sh(*cli, "up", cwd=repo))
    status = statistics.median(timed(lambda: sh(*cli, "status", "--no-disk", *names, cwd=repo), False) for _ in range(3))
    with_disk = statistics.median(timed(lambda: sh(*cli, "status", *names, cwd=repo), False) for _ in range(3))
    return up, status, with_disk


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=6000)
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hybridiso-bench-"))
    try:
        repo = make_repo(root, args.files)
        plain_ws = root / "plain"
        plain_ws.mkdir()
        print(f"repository: {args.files} files; {args.agents} agents; {os.cpu_count()} cores; git {subprocess.run(['git', '--version'], capture_output=True, text=True).stdout.split()[-1]}")
        g, h, s, sd = [], [], [], []
        for r in range(args.rounds):
            # alternate who goes first, so neither always meets a fresh disk;
            # nothing is deleted until the end (on this machine's ext4 with
            # `discard`, a mass delete slows the next phase several-fold)
            if r % 2 == 0:
                g.append(plain_git(repo, plain_ws, args.agents, r))
                up, status, with_disk = hybridiso(repo, args.agents, r)
            else:
                up, status, with_disk = hybridiso(repo, args.agents, r)
                g.append(plain_git(repo, plain_ws, args.agents, r))
            h.append(up)
            s.append(status)
            sd.append(with_disk)
            print(f"round {r + 1}: git worktree add x{args.agents} (sequential) {g[-1]:.2f}s | hybridiso up {up:.2f}s | "
                  f"status --no-disk {status:.3f}s | status (with disk) {with_disk:.3f}s")
        mg, mh, ms = statistics.median(g), statistics.median(h), statistics.median(s)
        print(f"median: git {mg:.2f}s, hybridiso up {mh:.2f}s, ratio hybridiso/git = {mh / mg:.2f} (target <= 1.0)")
        print(f"  per-round ratios: {', '.join(f'{a / b:.2f}' for a, b in zip(h, g))}")
        print(f"median hybridiso status for {args.agents} agents: --no-disk {ms:.3f}s, with disk {statistics.median(sd):.3f}s (target < 0.5s)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
