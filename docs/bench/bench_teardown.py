#!/usr/bin/env python3
"""Benchmark: down, gc and sync at scale (issue 15), against plain git, same run.

    python docs/bench/bench_teardown.py [--tmpfs] [--agents 10,50,100,200] [--files 2000]
                                        [--rounds 3] [--baseline af375c2]

For each number of worktree agents N, every round makes a repository of
FILES files (bench_against.make_repo) and, for this checkout's hybridiso and
for the --baseline commit's (exported with `git archive`; alternating which
goes first), runs `hybridiso up` (not timed), then times:
  gc (dry run)    `hybridiso gc`: every agent's work check and merge verdict
  gc --yes        `hybridiso gc --yes` (fresh agents: judged, kept)
  sync (no-op)    `hybridiso sync` with nothing new upstream
  down            `hybridiso down` of all N
and the plain baseline, on a copy of the repository with N worktrees made by
`git worktree add -b`: `git worktree remove` + `git branch -D` per agent,
one after another (what a user does by hand). Prints every round, the medians,
the ratio this/--baseline and, for down, this/plain. Nothing of this
repository's worktrees or refs changes. Not a test. --tmpfs puts the temp
dirs on /dev/shm (say `cat /proc/loadavg` with the figures).

Container agents are not measured here (docs/bench/bench_containers.py
times container creation; their removal is issue 15's part left open).
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
from bench_against import HERE, code_env, export, make_repo, sh, timed  # noqa: E402

COMMANDS = ("gc (dry run)", "gc --yes", "sync (no-op)", "down")


def hybridiso_round(code: Path, repo: Path) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "hybridiso", "up"], cwd=repo, env=code_env(code), check=True, capture_output=True)
    return {
        "gc (dry run)": timed(code, repo, "gc"),
        "gc --yes": timed(code, repo, "gc", "--yes"),
        "sync (no-op)": timed(code, repo, "sync"),
        "down": timed(code, repo, "down"),
    }


def plain_down(repo: Path, n: int) -> float:
    """N worktrees made by hand, then removed by hand, one after another."""
    ws = repo.parent / "plain.agents"
    for i in range(n):
        sh("git", "worktree", "add", "-q", "-b", f"plain/a{i:03d}", str(ws / f"a{i:03d}"), cwd=repo)
    t = time.perf_counter()
    for i in range(n):
        sh("git", "worktree", "remove", str(ws / f"a{i:03d}"), cwd=repo)
        sh("git", "branch", "-q", "-D", f"plain/a{i:03d}", cwd=repo)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="af375c2", help="the commit to compare with (default af375c2, main before issue 15)")
    p.add_argument("--agents", default="10,50,100", help="comma-separated numbers of worktree agents (default 10,50,100)")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tmpfs", action="store_true", help="temp dirs on /dev/shm")
    args = p.parse_args()
    counts = [int(n) for n in args.agents.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="hybridiso-bench-teardown-", dir="/dev/shm" if args.tmpfs else None))
    try:
        versions = {"baseline": export(args.baseline, tmp / "baseline-code"), "this": HERE}
        for code in versions.values():  # write the bytecode caches before timing
            subprocess.run([sys.executable, "-m", "hybridiso", "--help"], env=code_env(code), check=True, capture_output=True)
        for n in counts:
            results: dict[str, dict[str, list[float]]] = {v: {c: [] for c in COMMANDS} for v in versions}
            plain: list[float] = []
            for r in range(args.rounds):
                order = list(versions) if r % 2 == 0 else list(reversed(versions))
                line = []
                template = tmp / f"n{n}-r{r}-template"
                make_repo(template, args.files, n)
                for v in order:
                    repo = tmp / f"n{n}-r{r}-{v}" / "repo"
                    repo.parent.mkdir()
                    shutil.copytree(template, repo, symlinks=True)
                    got = hybridiso_round(versions[v], repo)
                    for c, s in got.items():
                        results[v][c].append(s)
                    line.append(f"{v}: " + ", ".join(f"{c} {s:.2f}s" for c, s in got.items()))
                    shutil.rmtree(repo.parent)
                repo = tmp / f"n{n}-r{r}-plain" / "repo"
                repo.parent.mkdir()
                shutil.copytree(template, repo, symlinks=True)
                plain.append(plain_down(repo, n))
                shutil.rmtree(repo.parent)
                shutil.rmtree(template)
                print(f"N={n} round {r + 1}: " + " | ".join(line) + f" | plain git down {plain[-1]:.2f}s", flush=True)
            plain_m = statistics.median(plain)
            print(f"N={n} medians (this / baseline; down also / plain git {plain_m:.2f}s):")
            for c in COMMANDS:
                this, base = statistics.median(results["this"][c]), statistics.median(results["baseline"][c])
                vs_plain = f"  this/plain {this / plain_m:4.2f}  baseline/plain {base / plain_m:4.2f}" if c == "down" else ""
                print(f"  {c:<13} this {this:6.2f}s  baseline {base:6.2f}s  ratio {this / base:4.2f}{vs_plain}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
