#!/usr/bin/env python3
"""Benchmark: `hybridiso status` and a no-op `hybridiso up` as the number of
worktree agents grows (issue 15), against what the same questions cost asked
of git and du by hand, in the same run.

    python docs/bench/bench_observe.py [--agents 10,50,100,200] [--files 2000] [--rounds 3]
                                      [--tmpfs] [--baseline af375c2]

For each number of agents N: one repository of FILES files (bench_against.py's
make_repo), `hybridiso up` makes its N worktree agents (not timed), then each
round times, in alternating order:
  - this checkout's `status`, `status --no-disk` and `up` (nothing to do);
    the same for the commit --baseline names (exported with `git archive`),
    on the same repository (status reads; a no-op up changes nothing);
  - by hand: `git status --porcelain=v1 -z --untracked-files=all` in all N
    worktrees (one at a time, and as many at a time as there are cores),
    `du -s` of all of them and the repository's .git, one `git for-each-ref`
    with %(ahead-behind:main), `python -m hybridiso --version` (the
    interpreter and the imports, what every command pays before it starts);
    "by hand" = git status in parallel + du + for-each-ref: what `status`
    is asked to be within 1.3x of.
Prints every round, the medians and the ratios. --tmpfs puts the repository
under /dev/shm (the figures of docs/benchmarks.md). Nothing outside its temp
dir is touched. Not a test. Say the load (`cat /proc/loadavg`) with figures.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_against import HERE, code_env, export, make_repo

CORES = max(2, os.cpu_count() or 1)


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed in {cwd} ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def hybridiso(code: Path, repo: Path, *args: str) -> Callable[[], None]:
    return lambda: run([sys.executable, "-m", "hybridiso", *args], repo, code_env(code))


def git_status(tree: Path) -> None:
    run(["git", "status", "--porcelain=v1", "-z", "--untracked-files=all"], tree)


def by_hand(repo: Path, trees: list[Path]) -> dict[str, float]:
    with ThreadPoolExecutor(CORES) as pool:
        parallel = timed(lambda: list(pool.map(git_status, trees)))
    got = {
        "git status x N": timed(lambda: [git_status(t) for t in trees]),
        f"git status x N, {CORES} at a time": parallel,
        "du -s all": timed(lambda: run(["du", "-s", str(repo / ".git"), *map(str, trees)], repo)),
        "for-each-ref ahead-behind": timed(
            lambda: run(["git", "for-each-ref", "--format=%(refname) %(ahead-behind:main)", "refs/heads"], repo)
        ),
        "rev-list --count x N": timed(
            lambda: [run(["git", "rev-list", "--left-right", "--count", f"main...hybridiso/{t.name}"], repo) for t in trees]
        ),
    }
    got["by hand (status+du+drift)"] = got[f"git status x N, {CORES} at a time"] + got["du -s all"] + got["for-each-ref ahead-behind"]
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", default="10,50,100", help="comma-separated numbers of worktree agents (default 10,50,100)")
    p.add_argument("--files", type=int, default=2000, help="files in the repository (default 2000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tmpfs", action="store_true", help="work under /dev/shm")
    p.add_argument("--baseline", help="also time this commit's hybridiso (e.g. af375c2), on the same repositories")
    args = p.parse_args()
    counts = [int(n) for n in args.agents.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="hybridiso-bench-observe-", dir="/dev/shm" if args.tmpfs else None))
    try:
        versions = {"this": HERE}
        if args.baseline:
            versions["baseline"] = export(args.baseline, tmp / "baseline-code")
        for code in versions.values():  # write the bytecode caches before timing
            hybridiso(code, tmp, "--help")()
        print(f"cores {os.cpu_count()}, load {open('/proc/loadavg').read().split()[:3]}", flush=True)
        for n in counts:
            repo = tmp / f"n{n}" / "repo"
            make_repo(repo, args.files, n)
            hybridiso(HERE, repo, "up")()
            trees = sorted((repo.parent / "repo.agents").iterdir())
            assert len(trees) == n, trees
            results: dict[str, list[float]] = {}
            for r in range(args.rounds):
                got: dict[str, float] = {}
                order = list(versions) if r % 2 == 0 else list(reversed(versions))
                for v in order:
                    code = versions[v]
                    got[f"{v}: status"] = timed(hybridiso(code, repo, "status"))
                    got[f"{v}: status --no-disk"] = timed(hybridiso(code, repo, "status", "--no-disk"))
                    got[f"{v}: up (no-op)"] = timed(hybridiso(code, repo, "up"))
                    got[f"{v}: --version"] = timed(hybridiso(code, repo, "--version"))
                got.update(by_hand(repo, trees))
                for k, s in got.items():
                    results.setdefault(k, []).append(s)
                print(f"N={n} round {r + 1}: " + ", ".join(f"{k} {s:.2f}s" for k, s in got.items()), flush=True)
            med = {k: statistics.median(v) for k, v in results.items()}
            print(f"N={n} medians (load {open('/proc/loadavg').read().split()[:3]}):")
            for k, s in med.items():
                print(f"  {k:<34} {s:6.2f}s  per agent {s / n * 1000:5.1f} ms")
            hand = med["by hand (status+du+drift)"]
            for v in versions:
                print(
                    f"  {v}: status / by hand {med[f'{v}: status'] / hand:4.2f};"
                    f" status --no-disk / git status x N parallel {med[f'{v}: status --no-disk'] / med[f'git status x N, {CORES} at a time']:4.2f};"
                    f" no-op up / git status x N parallel {med[f'{v}: up (no-op)'] / med[f'git status x N, {CORES} at a time']:4.2f}"
                )
            if "baseline" in versions:
                for c in ("status", "status --no-disk", "up (no-op)"):
                    print(f"  {c:<17} this / baseline {med[f'this: {c}'] / med[f'baseline: {c}']:4.2f}")
            shutil.rmtree(repo.parent, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
