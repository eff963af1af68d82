#!/usr/bin/env python3
"""Benchmark: this checkout's hybridiso against an earlier commit's, same run.

    python docs/bench/bench_against.py --baseline 2514efb [--agents 8,32] [--files 2000] [--rounds 3]

For each number of worktree agents N, both versions get their own copy of
one repository (N agents, FILES files) and are timed doing the same things,
alternating which goes first each round: `up` (creates N), `status` (with
disk), a second `up` that changes nothing, and `down` of all N. Prints
every round, the medians and the ratio this/baseline per command, so a
change that makes a command slower -- or makes its cost grow faster with
N -- shows. The baseline is exported with `git archive` into a temp dir;
nothing of this repository's worktrees or refs changes. Not a test.
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

HERE = Path(__file__).resolve().parents[2]
COMMANDS = ("up", "status", "up (no-op)", "down")


def sh(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def export(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(HERE), "archive", rev, "hybridiso", "templates", "compose"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def make_repo(path: Path, files: int, agents: int) -> None:
    path.mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=path)
    for i in range(files):
        d = path / f"pkg{i // 200:02d}"
        d.mkdir(exist_ok=True)
        (d / f"mod{i:05d}.py").write_text(f"VALUE = {i}\n")
    names = "\n".join(f"  - {{name: a{i:03d}, isolation: worktree}}" for i in range(agents))
    (path / "hybridiso.yaml").write_text(f"agents:\n{names}\n")
    sh("git", "add", "-A", cwd=path)
    sh("git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "init", cwd=path)


def code_env(code: Path) -> dict[str, str]:
    """Run ``code``'s hybridiso as an installed one runs: from its bytecode
    cache (a PYTHONDONTWRITEBYTECODE=1 here would time compiling every
    module, which grows with the code, not with the work)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(code)}


def timed(code: Path, repo: Path, *args: str) -> float:
    env = code_env(code)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hybridiso", *args], cwd=repo, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"hybridiso {' '.join(args)} ({code}) failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return took


def one_round(code: Path, repo: Path) -> dict[str, float]:
    return {
        "up": timed(code, repo, "up"),
        "status": timed(code, repo, "status"),
        "up (no-op)": timed(code, repo, "up"),
        "down": timed(code, repo, "down"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="the commit to compare with (e.g. the last landed main)")
    p.add_argument("--agents", default="8,32", help="comma-separated numbers of agents (default 8,32)")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    counts = [int(n) for n in args.agents.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="hybridiso-bench-against-"))
    try:
        versions = {"baseline": export(args.baseline, tmp / "baseline-code"), "this": HERE}
        for code in versions.values():  # write the bytecode caches before timing
            subprocess.run([sys.executable, "-m", "hybridiso", "--help"], env=code_env(code), check=True, capture_output=True)
        for n in counts:
            results: dict[str, dict[str, list[float]]] = {v: {c: [] for c in COMMANDS} for v in versions}
            for r in range(args.rounds):
                order = list(versions) if r % 2 == 0 else list(reversed(versions))
                line = []
                for v in order:
                    repo = tmp / f"n{n}-r{r}-{v}" / "repo"
                    make_repo(repo, args.files, n)
                    got = one_round(versions[v], repo)
                    for c, s in got.items():
                        results[v][c].append(s)
                    line.append(f"{v}: " + ", ".join(f"{c} {s:.2f}s" for c, s in got.items()))
                print(f"N={n} round {r + 1}: " + " | ".join(line), flush=True)
            print(f"N={n} medians (this / baseline):")
            for c in COMMANDS:
                this, base = statistics.median(results["this"][c]), statistics.median(results["baseline"][c])
                print(f"  {c:<11} this {this:6.2f}s  baseline {base:6.2f}s  ratio {this / base:4.2f}  per agent {this / n * 1000:5.0f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
