#!/usr/bin/env python3
"""Measure the ways to give an agent its own repository, on one synthetic repo
of several thousand files, all in the same run.

    python docs/bench/bench_clone.py [--files 6000] [--rounds 3]

For each way: wall time (median of rounds) and new disk (du, with the source
repository's files counted first so hard links are not counted twice).
docs/clone-strategy.md explains the choice the clone strategy makes.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_up import make_repo, sh  # noqa: E402


def du_new(repo: Path, target: Path) -> int:
    """Bytes under ``target`` not shared (hard-linked) with ``repo``: du counts
    an inode once, at its first appearance."""
    out = subprocess.run(["du", "-s", "-B1", str(repo), str(target)], capture_output=True, text=True, check=True).stdout
    return int(out.splitlines()[-1].split()[0])


WAYS = {
    "git worktree add": lambda repo, dst: ["git", "-C", str(repo), "worktree", "add", "-q", "--detach", str(dst), "main"],
    "clone --local (hard links)": lambda repo, dst: ["git", "clone", "-q", "--local", str(repo), str(dst)],
    "clone --no-hardlinks": lambda repo, dst: ["git", "clone", "-q", "--no-hardlinks", str(repo), str(dst)],
    "clone --shared (alternates)": lambda repo, dst: ["git", "clone", "-q", "--shared", str(repo), str(dst)],
    "clone file:// (network path)": lambda repo, dst: ["git", "clone", "-q", f"file://{repo}", str(dst)],
    "clone file:// --filter=blob:none": lambda repo, dst: ["git", "-c", "uploadpack.allowFilter=true", "clone", "-q", "--filter=blob:none", f"file://{repo}", str(dst)],
}


def add_history(repo: Path, commits: int) -> None:
    """Commits of incompressible changes, so the object store outweighs the
    checkout as in a real project with history."""
    import base64
    import os

    files = sorted(repo.glob("pkg0*/sub*/mod*.py"))[:300]
    for c in range(commits):
        for f in files:
            f.write_text("DATA = '" + base64.b64encode(os.urandom(1500)).decode() + "'\n")
        sh("git", "commit", "-q", "-a", "-m", f"history {c}", cwd=repo)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=6000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--history", type=int, default=40, help="commits that rewrite 300 files each (grows the object store)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hybridiso-clone-bench-"))
    try:
        repo = make_repo(root, args.files)
        sh("git", "config", "uploadpack.allowFilter", "true", cwd=repo)
        # no background auto-gc during the history commits: it would hold
        # gc.pid and make the explicit gc below fail
        sh("git", "config", "gc.auto", "0", cwd=repo)
        add_history(repo, args.history)
        sh("git", "gc", "-q", cwd=repo)  # a real repository keeps its objects packed
        times: dict[str, list[float]] = {w: [] for w in WAYS}
        disk: dict[str, int] = {}
        for r in range(args.rounds):
            for way, argv in WAYS.items():
                dst = root / f"w{r}-{abs(hash(way))}"
                t = time.perf_counter()
                proc = subprocess.run(argv(repo, dst), capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{way} failed: {proc.stderr}")
                times[way].append(time.perf_counter() - t)
                disk[way] = du_new(repo, dst)
                if way == "git worktree add":
                    sh("git", "worktree", "remove", "--force", str(dst), cwd=repo)
                else:
                    shutil.rmtree(dst)
        base = statistics.median(times["git worktree add"])
        store = subprocess.run(["du", "-s", "-B1", str(repo / ".git")], capture_output=True, text=True).stdout.split()[0]
        print(f"{args.files} files, {args.history} commits of history, .git {int(store) / (1 << 20):.1f} MiB packed; {args.rounds} rounds; median wall time and new disk")
        print(f"{'way':36} {'time':>8} {'vs worktree':>12} {'new disk':>10}")
        for way in WAYS:
            m = statistics.median(times[way])
            print(f"{way:36} {m:7.2f}s {m / base:11.2f}x {disk[way] / (1 << 20):8.1f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
