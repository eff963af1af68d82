#!/usr/bin/env python3
"""Check `hybridiso report --compare` against plain git and du, same run.

    python docs/bench/check_report.py REPO [--n 3] [--rounds 2]

1. Runs `hybridiso report --compare N --strategies worktree,clone --format json`
   in REPO.
2. Does the same by hand with nothing but git and du, in a temporary
   directory beside REPO (same filesystem): a bare upstream and a main clone of
   REPO, N `git worktree add` and N `git clone --local` (timed), `du -s -B1`
   for disk (a worktree alone; a clone after the main .git, so du counts the
   hard-linked objects once, in the main repository), then one upstream
   commit touching 20 files and `git fetch` timed in the main repository
   (serving every worktree) and in each clone, bytes from `du` of the object
   store before and after.
3. Prints a markdown table: each figure from hybridiso beside the one taken by
   hand, and how far apart they are.  With several rounds the two alternate
   who goes first (this machine's file system slows down after heavy file
   creation, which would otherwise favour whoever runs first) and each figure
   is the mean over the rounds.

Nothing in REPO changes; the temporary directory is removed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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


def sh(*argv: str, cwd: Path | None = None) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stdout


def timed(*argv: str, cwd: Path | None = None) -> float:
    t = time.perf_counter()
    sh(*argv, cwd=cwd)
    return time.perf_counter() - t


def du(*paths: Path) -> list[int]:
    """`du -s -B1 P...`: one figure per path, hard links counted at their first path."""
    out = sh("du", "-s", "-B1", "--", *map(str, paths))
    return [int(line.split()[0]) for line in out.splitlines()]


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def by_hand(repo: Path, base: str, n: int) -> dict[str, dict[str, float]]:
    work = Path(tempfile.mkdtemp(prefix=f".{repo.name}.by-hand-", dir=repo.parent))
    try:
        up, main = work / "up.git", work / "main"
        sh("git", "clone", "-q", "--bare", "--local", "--", str(repo), str(up))
        sh("git", "clone", "-q", "--local", "--branch", base, "--", str(up), str(main))
        wt_s, cl_s, wts, cls = [], [], [], []
        for i in range(n):  # round-robin, like hybridiso
            wt, cl = work / f"wt{i}", work / f"cl{i}"
            wt_s.append(timed("git", "worktree", "add", "-q", "-b", f"hand{i}", str(wt), base, cwd=main))
            cl_s.append(timed("git", "clone", "-q", "--local", "--", str(main), str(cl)))
            sh("git", "remote", "set-url", "origin", str(up), cwd=cl)
            wts.append(wt)
            cls.append(cl)
        os.sync()
        wt_disk = [du(w)[0] for w in wts]
        cl_disk = [du(main / ".git", c)[1] for c in cls]
        mover = work / "mover"
        sh("git", "clone", "-q", "--local", "--branch", base, "--", str(up), str(mover))
        tracked = [p for p in sh("git", "ls-files", "-z", cwd=mover).split("\0") if p][:20]
        for i, rel in enumerate(tracked):
            with open(mover / rel, "ab") as f:
                f.write(b"\n# upstream change %d\n" % i + os.urandom(2048).hex().encode())
        sh("git", "-c", "user.name=check", "-c", "user.email=check@example.invalid", "commit", "-q", "-a", "-m", "move", cwd=mover)
        sh("git", "push", "-q", "origin", f"HEAD:refs/heads/{base}", cwd=mover)

        def fetch(path: Path) -> tuple[float, int]:
            before = du(path / ".git" / "objects")[0]
            seconds = timed("git", "fetch", "-q", "--no-tags", "origin", cwd=path)
            return seconds, du(path / ".git" / "objects")[0] - before

        shared = fetch(main)
        clones = [fetch(c) for c in cls]
        return {
            "worktree": {"startup": statistics.median(wt_s), "disk": statistics.median(wt_disk), "fetch_s": shared[0], "fetch_b": shared[1]},
            "clone": {
                "startup": statistics.median(cl_s),
                "disk": statistics.median(cl_disk),
                "fetch_s": sum(s for s, _ in clones),
                "fetch_b": sum(b for _, b in clones),
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", type=Path)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    repo = args.repo.resolve()

    def ours() -> tuple[str, dict[str, dict[str, float]]]:
        r = subprocess.run(
            [sys.executable, "-m", "hybridiso", "report", "--compare", str(args.n), "--strategies", "worktree,clone", "--format", "json"],
            cwd=repo, capture_output=True, text=True,
        )
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        data = json.loads(r.stdout)
        rows = {row["strategy"]: row for row in data["strategies"]}
        figures = {
            s: {"startup": rows[s]["startup_seconds"], "disk": rows[s]["disk_bytes_per_env"], "fetch_s": rows[s]["fetch_seconds"], "fetch_b": rows[s]["fetch_bytes"]}
            for s in rows
        }
        repo_info.update(data["repository"])
        return data["repository"]["base"], figures

    repo_info: dict[str, object] = {}
    mine_runs, hand_runs = [], []
    base = None
    for r in range(args.rounds):
        if r % 2 == 0:
            base, figures = ours()
            mine_runs.append(figures)
            hand_runs.append(by_hand(repo, base, args.n))
        else:
            hand_runs.append(by_hand(repo, base or "main", args.n))
            mine_runs.append(ours()[1])

    def mean(runs: list[dict[str, dict[str, float]]], strategy: str, key: str) -> float:
        return statistics.mean(run[strategy][key] for run in runs)

    info = repo_info
    store = du(repo / ".git")[0]
    print(f"repository: {repo.name}, {info['files']} files ({mib(info['tree_bytes'])} in the tree), .git {mib(store)} by du; "
          f"{os.cpu_count()} cores, {platform.system()}; N={args.n}, {args.rounds} rounds\n")
    print("| strategy | figure | hybridiso report | by hand (git, du) | difference |")
    print("|---|---|---|---|---|")
    for strategy in ("worktree", "clone"):
        for label, key, fmt in (
            ("disk unique to one env (median)", "disk", mib),
            ("startup, median", "startup", lambda v: f"{v:.2f} s"),
            ("fetch time, all envs", "fetch_s", lambda v: f"{v:.3f} s"),
            ("fetch bytes, all envs", "fetch_b", mib),
        ):
            mine, theirs = mean(mine_runs, strategy, key), mean(hand_runs, strategy, key)
            diff = f"{(mine - theirs) / theirs * 100:+.0f}%" if theirs else "-"
            print(f"| {strategy} | {label} | {fmt(mine)} | {fmt(theirs)} | {diff} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
