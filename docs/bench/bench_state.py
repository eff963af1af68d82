#!/usr/bin/env python3
"""Benchmark: the state file at N agents (issue 15), and what a real `up`
of N agents writes to it.

    python docs/bench/bench_state.py [--agents 10,50,100,200] [--rounds 7] [--tmpfs] [--no-up] [--lock S] [--tree DIR]

1. Synthetic: a state of N worktree records as `up` writes them (ports,
   timings, include patterns, copied includes).  Prints the file's size
   (bytes per agent), and the medians of: a save under the lock
   (StateStore.save: typed records -> JSON -> temp file + os.replace),
   a plain baseline in the same run (json.dump of the same dict + os.replace),
   a load (parse and type-check every record), and a save while `up` has
   let the lock go (retake the lock, load, merge this run's one record,
   write, let go), each with its ratio to the baseline and per agent.
2. A real `hybridiso up` of N worktree agents with a one-command setup, run
   with every write of state.json counted: how many times the whole file was
   written, and the bytes, per agent.  A whole-file save per agent is O(N)
   each, so the bytes written per agent grow with N; batching saves of
   agents that finish together keeps the count below N.

3. ``--lock S``: what waits for a long `up`: `up slow` runs a setup that
   blocks until the script lets it go, S seconds after it started; meanwhile
   `status`, `exec` (of a ready agent), `plan`, `up` of another agent,
   `down` of another agent and `gc` run, and each one's wall time is
   printed.  A command that waits for the setup takes about S; run it with
   ``--tree`` of an older hybridiso for the baseline.

Not a test: timings depend on the machine; docs/benchmarks.md has the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}

COUNTING = r"""
import atexit, json, os, sys
from hybridiso import state
calls = [0, 0]
real = state.atomic_write_text
def counted(path, text, **kw):
    if path.name == "state.json":
        calls[0] += 1
        calls[1] += len(text)
    real(path, text, **kw)
state.atomic_write_text = counted
atexit.register(lambda: open(os.environ["BENCH_COUNT"], "w").write(json.dumps(calls)))
from hybridiso.main import main
sys.argv[0] = "hybridiso"
sys.exit(main(sys.argv[1:]))
"""


def record(i: int, root: Path):  # type: ignore[no-untyped-def]
    from hybridiso.state import AgentRecord

    name = f"agent{i:03d}"
    return AgentRecord(
        name=name,
        strategy="worktree",
        branch=f"hybridiso/{name}",
        path=str(root / "repo.agents" / name),
        base="main",
        base_commit="0" * 40,
        phase="ready",
        created_branch=True,
        ports={"web": 20000 + 2 * i, "db": 20001 + 2 * i},
        timings={"create": 0.05, "includes": 0.001, "setup": 1.2, "start": 0.0, "total": 1.3},
        config_hash="c" * 16,
        setup_hash="s" * 64,
        include_patterns=["/.env", ".env.*"],
        included=[".env"],
        owns_path=True,
        checkout=str(root / "repo"),
    )


def median_of(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def synthetic(root: Path, n: int, rounds: int) -> dict[str, float]:
    from hybridiso.state import State, StateStore

    common = root / f"synthetic{n}" / ".git"
    common.mkdir(parents=True)
    store = StateStore(common)
    state = State(agents={r.name: r for r in (record(i, root) for i in range(n))})
    store.save(state)
    size = store.path.stat().st_size
    data = state.to_json()
    plain = common / "plain.json"

    def baseline() -> None:
        tmp = plain.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, plain)

    save = median_of(lambda: store.save(state), rounds)
    base = median_of(baseline, rounds)
    load = median_of(store.load, rounds)
    merge = float("nan")
    if not hasattr(store, "claim"):  # a hybridiso from before issue 15: no merge-save
        shutil.rmtree(common.parent)
        return {"size": size, "save": save, "plain": base, "load": load, "merge": merge}
    with store.locked("up", wait_message=False):
        store.claim(["agent000"])
        with store.unlocked():
            merge = median_of(lambda: store.save(state), rounds)
    shutil.rmtree(common.parent)
    return {"size": size, "save": save, "plain": base, "load": load, "merge": merge}


def real_up(root: Path, n: int, tree: Path) -> tuple[int, int, float]:
    work = root / f"up{n}"
    repo = work / "repo"
    repo.mkdir(parents=True)
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "commit", "-q", "--allow-empty", "-m", "init"]):
        subprocess.run(argv, cwd=repo, env=ENV, check=True, capture_output=True)
    (repo / "hybridiso.yaml").write_text(
        "defaults:\n  setup: ['true']\nagents:\n" + "".join(f"  - name: agent{i:03d}\n" for i in range(n))
    )
    count = work / "count.json"
    env = {**ENV, "PYTHONPATH": str(tree), "BENCH_COUNT": str(count)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", COUNTING, "up", "-j", "4"], cwd=repo, env=env, check=True, capture_output=True)
    seconds = time.perf_counter() - t
    saves, written = json.loads(count.read_text())
    shutil.rmtree(work)
    return saves, written, seconds


def lock_waits(root: Path, tree: Path, hold: float) -> None:
    import threading

    work = root / "lock"
    repo = work / "repo"
    repo.mkdir(parents=True)
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "commit", "-q", "--allow-empty", "-m", "init"]):
        subprocess.run(argv, cwd=repo, env=ENV, check=True, capture_output=True)
    started, release = work / "started", work / "release"
    (repo / "hybridiso.yaml").write_text(
        "agents:\n  - name: b\n  - name: c\n  - name: d\n  - name: slow\n"
        f"    setup: ['touch {started}; i=0; while [ ! -e {release} ] && [ $i -lt 6000 ]; do sleep 0.05; i=$((i+1)); done']\n"
    )
    env = {**ENV, "PYTHONPATH": str(tree)}
    hy = [sys.executable, "-m", "hybridiso"]
    subprocess.run([*hy, "up", "b", "d"], cwd=repo, env=env, check=True, capture_output=True)
    t0 = time.perf_counter()
    slow = subprocess.Popen([*hy, "up", "slow"], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not started.exists():
        time.sleep(0.02)
    took: dict[str, tuple[float, int]] = {}

    def one(args: list[str]) -> None:
        t = time.perf_counter()
        r = subprocess.run([*hy, *args], check=False, cwd=repo, env=env, capture_output=True, text=True)
        took[" ".join(args)] = (time.perf_counter() - t, r.returncode)

    commands = [["status", "--no-disk"], ["exec", "b", "--", "true"], ["plan"], ["up", "c"], ["down", "d"], ["gc"]]
    threads = [threading.Thread(target=one, args=(a,)) for a in commands]
    for th in threads:
        th.start()
    time.sleep(max(0.0, hold - (time.perf_counter() - t0)))
    release.touch()
    for th in threads:
        th.join()
    slow.wait()
    print(f"\nwhile `up slow` holds its setup {hold:.0f} s ({tree}):")
    for args in commands:
        seconds, code = took[" ".join(args)]
        print(f"  {' '.join(args):24s} {seconds:6.2f} s  exit {code}")
    shutil.rmtree(work)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", default="10,50,100,200", help="the N to measure, comma-separated (default 10,50,100,200)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per synthetic figure; the median is printed (default 7)")
    ap.add_argument("--tmpfs", action="store_true", help="work under /dev/shm (the disk's own noise left out)")
    ap.add_argument("--no-up", action="store_true", help="only the synthetic figures (no real `up`)")
    ap.add_argument("--lock", type=float, default=0, metavar="S", help="also time what waits for an up whose setup blocks S seconds")
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent.parent), help="the hybridiso source tree the real `up` runs (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, args.tree)  # the synthetic figures too are the tree's
    sizes = [int(x) for x in args.agents.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-state-", dir="/dev/shm" if args.tmpfs else None))
    try:
        print(f"load: {open('/proc/loadavg').read().strip()}; under {root}")
        print(f"{'N':>4} {'file KiB':>9} {'B/agent':>8} {'save ms':>8} {'plain ms':>9} {'ratio':>6} {'save us/agent':>14} {'load ms':>8} {'merge-save ms':>14}")
        for n in sizes:
            r = synthetic(root, n, args.rounds)
            print(
                f"{n:>4} {r['size'] / 1024:>9.1f} {r['size'] / n:>8.0f} {r['save'] * 1e3:>8.2f} {r['plain'] * 1e3:>9.2f} "
                f"{r['save'] / r['plain']:>6.2f} {r['save'] / n * 1e6:>14.1f} {r['load'] * 1e3:>8.2f} {r['merge'] * 1e3:>14.2f}"
            )
        if not args.no_up:
            print(f"\nreal `hybridiso up -j 4` of N worktree agents (setup: true), {args.tree}")
            print(f"{'N':>4} {'saves':>6} {'saves/agent':>12} {'KiB written':>12} {'KiB/agent':>10} {'up s':>7}")
            for n in sizes:
                saves, written, seconds = real_up(root, n, Path(args.tree))
                print(f"{n:>4} {saves:>6} {saves / n:>12.2f} {written / 1024:>12.0f} {written / 1024 / n:>10.1f} {seconds:>7.1f}")
        if args.lock:
            lock_waits(root, Path(args.tree), args.lock)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
