#!/usr/bin/env python3
"""Benchmark: `hybridiso sync` of 8 worktree agents vs the same by hand with
git, in the same run; and `hybridiso gc` on 50 merged environments.

    python docs/bench/bench_lifecycle.py [--files 5000] [--agents 8] [--rounds 3] [--merged 50]

sync: two identical repositories (clones of one bare "origin"), 8 worktree
agents each with a commit of their own; upstream gets a new commit; then
- by hand, naive: in each worktree `git pull --rebase` (a fetch per worktree);
- by hand, scripted: one `git fetch`, then `git rebase origin/main` in each;
- hybridiso: `hybridiso sync` (one fetch, fast-forward main, rebase all).
gc: 50 agents, half merged with a merge commit and half squash-merged; times
`gc` (dry run) and `gc --yes`, and by hand `git worktree remove` + `git branch -D`
of the same 50 (which cannot tell a squash merge from unmerged work).
Not a test: figures depend on the machine; docs/lifecycle.md has them.
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
HYBRIDISO = [sys.executable, "-m", "hybridiso"]


def sh(*argv: str, cwd: Path) -> str:
    return subprocess.run(argv, cwd=cwd, env=ENV, check=True, capture_output=True, text=True).stdout


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    os.sync()  # let the previous phase's writes reach the disk first
    time.sleep(1)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def make_origin(root: Path, files: int) -> Path:
    seed = root / "seed"
    seed.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=seed)
    for i in range(files):
        d = seed / f"pkg{i % 60:02d}" / f"sub{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i:05d}.py").write_text(f"VALUE = {i}\n" + "x = 1\n" * (i % 40))
    sh("git", "add", "-A", cwd=seed)
    sh("git", "commit", "-q", "-m", "files", cwd=seed)
    sh("git", "clone", "-q", "--bare", str(seed), str(root / "origin.git"), cwd=root)
    return root / "origin.git"


def make_repo(root: Path, origin: Path, name: str, agents: list[str]) -> Path:
    repo = root / name
    sh("git", "clone", "-q", str(origin), str(repo), cwd=root)
    manifest = "version: 1\nbase: main\nagents:\n" + "".join(f"  - name: {a}\n" for a in agents)
    (repo / "hybridiso.yaml").write_text(manifest)
    (repo / ".git" / "info" / "exclude").write_text("hybridiso.yaml\n")
    return repo


def commit(cwd: Path, name: str, text: str) -> None:
    (cwd / name).write_text(text)
    sh("git", "add", "--", name, cwd=cwd)
    sh("git", "commit", "-q", "-m", f"change {name}", cwd=cwd)


def push_upstream(root: Path, origin: Path, n: int) -> None:
    other = root / "upstream"
    if not other.exists():
        sh("git", "clone", "-q", str(origin), str(other), cwd=root)
    sh("git", "pull", "-q", "--ff-only", cwd=other)
    for path in sorted(other.glob("pkg*/sub0/*.py"))[:20]:  # touch 20 files spread over the tree
        path.write_text(path.read_text() + f"# upstream round {n}\n")
    sh("git", "commit", "-q", "-am", f"upstream round {n}", cwd=other)
    sh("git", "push", "-q", "origin", "main", cwd=other)


def bench_sync(root: Path, files: int, agents: int, rounds: int) -> None:
    origin = make_origin(root, files)
    names = [f"a{i}" for i in range(agents)]
    repos = {k: make_repo(root, origin, k, names) for k in ("naive", "scripted", "hybridiso")}
    for kind, repo in repos.items():
        sh(*HYBRIDISO, "up", cwd=repo)  # the same 8 worktrees in each repository
        for a in names:
            commit(root / f"{kind}.agents" / a, f"{a}.txt", f"work of {a}\n")
    results: dict[str, list[float]] = {k: [] for k in repos}
    for n in range(rounds):
        push_upstream(root, origin, n)
        order = list(repos) if n % 2 == 0 else list(reversed(repos))
        for kind in order:
            repo, ws = repos[kind], root / f"{kind}.agents"
            if kind == "naive":
                def go() -> None:
                    for a in names:
                        sh("git", "pull", "-q", "--rebase", "origin", "main", cwd=ws / a)
            elif kind == "scripted":
                def go() -> None:
                    sh("git", "fetch", "-q", "origin", cwd=repo)
                    for a in names:
                        sh("git", "rebase", "-q", "origin/main", cwd=ws / a)
            else:
                def go() -> None:
                    sh(*HYBRIDISO, "sync", cwd=repo)
            results[kind].append(timed(go))
        print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nsync of {agents} worktree agents, {files} files, median of {rounds} rounds:")
    print(f"  by hand, git pull --rebase in each : {med['naive']:.2f} s")
    print(f"  by hand, 1 fetch + rebase in each  : {med['scripted']:.2f} s")
    print(f"  hybridiso sync                     : {med['hybridiso']:.2f} s")
    print(f"  ratio hybridiso / naive            : {med['hybridiso'] / med['naive']:.2f}")
    print(f"  ratio hybridiso / scripted         : {med['hybridiso'] / med['scripted']:.2f}")


def bench_gc(root: Path, files: int, count: int) -> None:
    origin = root / "origin.git"
    if not origin.exists():
        origin = make_origin(root, files)
    names = [f"m{i:02d}" for i in range(count)]
    timings = {}
    for kind in ("gc", "hand"):
        repo = make_repo(root, origin, f"gc-{kind}", names)
        sh(*HYBRIDISO, "up", cwd=repo)
        ws = root / f"gc-{kind}.agents"
        for i, a in enumerate(names):
            commit(ws / a, f"{a}-1.txt", "one\n")
            commit(ws / a, f"{a}-2.txt", "two\n")
            if i % 2 == 0:
                sh("git", "merge", "-q", "--no-ff", "-m", f"merge {a}", f"hybridiso/{a}", cwd=repo)
            else:
                sh("git", "merge", "-q", "--squash", f"hybridiso/{a}", cwd=repo)
                sh("git", "commit", "-q", "-m", f"squash {a}", cwd=repo)
        if kind == "gc":
            timings["dry"] = timed(lambda: sh(*HYBRIDISO, "gc", cwd=repo))
            timings["yes"] = timed(lambda: sh(*HYBRIDISO, "gc", "--yes", cwd=repo))
            left = [p.name for p in ws.iterdir()]
            assert not left, f"gc left {left}"
        else:
            def go() -> None:
                for a in names:
                    sh("git", "worktree", "remove", "--force", str(ws / a), cwd=repo)
                    sh("git", "branch", "-q", "-D", f"hybridiso/{a}", cwd=repo)
            timings["hand"] = timed(go)
    print(f"\ngc of {count} merged worktree environments ({count // 2 + count % 2} merge commits, {count // 2} squash merges), {files} files:")
    print(f"  hybridiso gc (dry run: judge all)   : {timings['dry']:.2f} s ({timings['dry'] / count * 1000:.0f} ms per env)")
    print(f"  hybridiso gc --yes (judge + remove) : {timings['yes']:.2f} s ({timings['yes'] / count * 1000:.0f} ms per env)")
    print(f"  by hand: worktree remove + branch -D: {timings['hand']:.2f} s (no merge check at all)")
    print(f"  ratio gc --yes / by hand            : {timings['yes'] / timings['hand']:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--merged", type=int, default=50)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hybridiso-bench-lifecycle-"))
    try:
        print(f"git {sh('git', '--version', cwd=root).split()[-1]}, {os.cpu_count()} cores, in {root}", flush=True)
        bench_sync(root, args.files, args.agents, args.rounds)
        bench_gc(root, args.files, args.merged)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
