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
import resource
import shutil
import signal
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


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of ``fn``; the CPU seconds its processes used (user +
    sys, which a loaded machine stretches far less than wall time) go to
    ``LAST_CPU``."""
    global LAST_CPU
    cpu = _children_cpu()
    t = time.perf_counter()
    fn()
    took = time.perf_counter() - t
    LAST_CPU = _children_cpu() - cpu
    return took


LAST_CPU = 0.0


def hybridiso(code: Path, repo: Path, *args: str) -> Callable[[], None]:
    return lambda: run([sys.executable, "-m", "hybridiso", *args], repo, code_env(code))


def git_status(tree: Path) -> None:
    run(["git", "status", "--porcelain=v1", "-z", "--untracked-files=all"], tree)


def by_hand(repo: Path, trees: list[Path], cpu: dict[str, float]) -> dict[str, float]:
    """The plain baselines: wall seconds, and their CPU seconds into ``cpu``."""
    got: dict[str, float] = {}

    def one(name: str, fn: Callable[[], object]) -> None:
        got[name] = timed(fn)
        cpu[name] = LAST_CPU

    one("git status x N", lambda: [git_status(t) for t in trees])
    with ThreadPoolExecutor(CORES) as pool:
        one(PARALLEL, lambda: list(pool.map(git_status, trees)))
    one("du -s all", lambda: run(["du", "-s", str(repo / ".git"), *map(str, trees)], repo))
    one("for-each-ref ahead-behind", lambda: run(["git", "for-each-ref", "--format=%(refname) %(ahead-behind:main)", "refs/heads"], repo))
    one("rev-list --count x N", lambda: [run(["git", "rev-list", "--left-right", "--count", f"main...hybridiso/{t.name}"], repo) for t in trees])
    for d in (got, cpu):
        d[HAND] = d[PARALLEL] + d["du -s all"] + d["for-each-ref ahead-behind"]
    return got


PARALLEL = f"git status x N, {CORES} at a time"
HAND = "by hand (status+du+drift)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", default="10,50,100", help="comma-separated numbers of worktree agents (default 10,50,100)")
    p.add_argument("--files", type=int, default=2000, help="files in the repository (default 2000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tmpfs", action="store_true", help="work under /dev/shm")
    p.add_argument("--baseline", help="also time this commit's hybridiso (e.g. af375c2), on the same repositories")
    args = p.parse_args()
    counts = [int(n) for n in args.agents.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` still removes the temp dir
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
            cpus: dict[str, list[float]] = {}
            for r in range(args.rounds):
                got: dict[str, float] = {}
                cpu: dict[str, float] = {}
                order = list(versions) if r % 2 == 0 else list(reversed(versions))
                for v in order:
                    code = versions[v]
                    for label, argv in (("status", ["status"]), ("status --no-disk", ["status", "--no-disk"]), ("up (no-op)", ["up"]), ("--version", ["--version"])):
                        got[f"{v}: {label}"] = timed(hybridiso(code, repo, *argv))
                        cpu[f"{v}: {label}"] = LAST_CPU
                got.update(by_hand(repo, trees, cpu))
                for k, s in got.items():
                    results.setdefault(k, []).append(s)
                    cpus.setdefault(k, []).append(cpu[k])
                print(f"N={n} round {r + 1}: " + ", ".join(f"{k} {s:.2f}s (cpu {cpu[k]:.2f})" for k, s in got.items()), flush=True)
            med = {k: statistics.median(v) for k, v in results.items()}
            mcpu = {k: statistics.median(v) for k, v in cpus.items()}
            print(f"N={n} medians, wall and CPU (user+sys) seconds (load {open('/proc/loadavg').read().split()[:3]}):")
            for k, s in med.items():
                print(f"  {k:<34} {s:6.2f}s  cpu {mcpu[k]:6.2f}s  per agent {s / n * 1000:6.1f} ms")
            for name, m in (("wall", med), ("cpu", mcpu)):
                for v in versions:
                    print(
                        f"  {name} {v}: status / by hand {m[f'{v}: status'] / m[HAND]:4.2f};"
                        f" status --no-disk / git status parallel {m[f'{v}: status --no-disk'] / m[PARALLEL]:4.2f};"
                        f" no-op up / git status parallel {m[f'{v}: up (no-op)'] / m[PARALLEL]:4.2f}"
                    )
                if "baseline" in versions:
                    print(f"  {name} this / baseline: " + "; ".join(
                        f"{c} {m[f'this: {c}'] / m[f'baseline: {c}']:4.2f}" for c in ("status", "status --no-disk", "up (no-op)")
                    ))
            shutil.rmtree(repo.parent, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
