#!/usr/bin/env python3
"""Benchmark for issue 15: `up`'s speed with admission control, and that it
keeps the machine's load near its core count.

    python docs/bench/bench_admission.py [--files 2000] [--agents 100] [--rounds 3]
                                         [--setups 20] [--seconds 5] [--tmpfs] [--only speed|load|io]
                                         [--compare-with CHECKOUT]

speed: `hybridiso up` of AGENTS worktree agents against plain sequential
  `git worktree add` of as many, in the same run, alternating who goes
  first; medians and the ratio (target: up <= 0.7x git).
load: `up` of SETUPS agents whose setup burns SECONDS of CPU (a Python
  loop; workload.kind unset, so counted compute-bound), against the same
  setups all started at once (what a runner without admission does).  Every
  0.2 s it samples how many setups run (marker files each setup makes and
  removes) and the kernel's runnable tasks (/proc/loadavg's 4th field), and
  prints the most of each and the 1-minute load at the end (target: at
  most one setup per core; the baseline has them all).
io: the same SETUPS agents with `workload: {kind: io}` and a setup that
  waits SECONDS (sleeps, like a download): how many run at once, and the
  time against the compute-bound rule's.

--tmpfs puts everything under /dev/shm.  Not a test: timings depend on the
machine and its load (said at the start and the end); docs/benchmarks.md
"Issue 15: admission control" has the figures.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # as bench_up.py: run as installed

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}
CLI = [sys.executable, "-m", "hybridiso"]

BURN = """import os, sys, time
me = os.path.join(sys.argv[1], os.environ.get("HYBRIDISO_AGENT") or str(os.getpid()))
open(me, "w").close()
while time.process_time() < float(sys.argv[2]):
    pass
os.remove(me)
"""
WAIT = """import os, sys, time
me = os.path.join(sys.argv[1], os.environ["HYBRIDISO_AGENT"])
open(me, "w").close()
time.sleep(float(sys.argv[2]))
os.remove(me)
"""


def sh(*argv: str, cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, env=ENV, check=True, capture_output=True)


def loadavg() -> tuple[float, int]:
    """The 1-minute load, and the tasks runnable now."""
    fields = Path("/proc/loadavg").read_text().split()
    return float(fields[0]), int(fields[3].split("/")[0])


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


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class Sampler:
    """Every 0.2 s: setups running (marker files) and runnable tasks."""

    def __init__(self, marks: Path) -> None:
        self.marks = marks
        self.most = 0
        self.most_runnable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.most = max(self.most, len(os.listdir(self.marks)))
            self.most_runnable = max(self.most_runnable, loadavg()[1])
            self._stop.wait(0.2)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def speed(root: Path, files: int, agents: int, rounds: int, other: str | None = None) -> None:
    repo = make_repo(root, files)
    plain = root / "plain"
    plain.mkdir()
    g: list[float] = []
    h: list[float] = []
    o: list[float] = []
    for r in range(rounds):
        names = [f"r{r}a{i}" for i in range(agents)]
        manifest = "version: 1\nbase: main\nagents:\n" + "".join(f"  - {{name: {n}, isolation: worktree}}\n" for n in names)

        def git_adds(names: list[str] = names) -> None:
            for n in names:
                sh("git", "worktree", "add", "-q", "--no-track", "-b", f"plain/{n}", str(plain / n), "main", cwd=repo)

        def up(manifest: str = manifest) -> None:
            (repo / "hybridiso.yaml").write_text(manifest)
            sh(*CLI, "up", cwd=repo)

        def other_up(manifest: str = manifest, r: int = r) -> None:  # the same agents under other names, by another checkout's hybridiso
            (repo / "hybridiso.yaml").write_text(manifest.replace(f"name: r{r}a", f"name: o{r}a"))
            subprocess.run([*CLI, "up"], cwd=repo, env={**ENV, "PYTHONPATH": str(other)}, check=True, capture_output=True)

        if r % 2 == 0:
            g.append(timed(git_adds))
            h.append(timed(up))
            if other:
                o.append(timed(other_up))
        else:
            if other:
                o.append(timed(other_up))
            h.append(timed(up))
            g.append(timed(git_adds))
        also = f" | --compare-with's up {o[-1]:.2f}s" if other else ""
        print(f"  round {r + 1}: git worktree add x{agents} (sequential) {g[-1]:.2f}s | hybridiso up {h[-1]:.2f}s | ratio {h[-1] / g[-1]:.2f}{also}")
    mg, mh = statistics.median(g), statistics.median(h)
    print(f"speed: median git {mg:.2f}s, hybridiso up {mh:.2f}s, ratio up/git = {mh / mg:.2f} (target <= 0.7)")
    if other:
        mo = statistics.median(o)
        print(f"speed: median up of {other} {mo:.2f}s, ratio up/that = {mh / mo:.2f}")


def _setup_repo(root: Path, name: str, setups: int, script: str, seconds: float, kind: str | None) -> tuple[Path, Path]:
    repo = root / name
    repo.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("git", "commit", "-q", "--allow-empty", "-m", "init", cwd=repo)
    marks = root / f"{name}-marks"
    marks.mkdir()
    prog = root / f"{name}.py"
    prog.write_text(script)
    extra = f", workload: {{kind: {kind}}}" if kind else ""
    agents = "".join(f"  - {{name: s{i:02d}{extra}}}\n" for i in range(setups))
    (repo / "hybridiso.yaml").write_text(f"version: 1\nbase: main\ndefaults:\n  setup: ['{sys.executable} {prog} {marks} {seconds}']\nagents:\n{agents}")
    return repo, marks


def _up_sampled(repo: Path, marks: Path) -> tuple[float, Sampler, str]:
    with Sampler(marks) as s:
        t = time.perf_counter()
        proc = subprocess.run([*CLI, "up", "-j", "8"], cwd=repo, env=ENV, capture_output=True, text=True, check=True)
        took = time.perf_counter() - t
    return took, s, proc.stderr


def load(root: Path, setups: int, seconds: float) -> None:
    cores = len(os.sched_getaffinity(0))
    repo, marks = _setup_repo(root, "load", setups, BURN, seconds, None)
    took, s, stderr = _up_sampled(repo, marks)
    waits = [line for line in stderr.splitlines() if line.endswith(" waits")]
    print(f"load, hybridiso up: {setups} setups of {seconds:g} s CPU on {cores} cores in {took:.1f}s; "
          f"at most {s.most} setups at once, at most {s.most_runnable} runnable tasks, 1-min load at the end {loadavg()[0]:.2f}")
    print(f"  it said who waits {len(waits)} times, e.g. {waits[0] if waits else '(none)'!r}")
    # baseline: the same setups all at once, as a runner without admission does
    base_marks = root / "base-marks"
    base_marks.mkdir()
    prog = root / "load.py"
    with Sampler(base_marks) as b:
        t = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, str(prog), str(base_marks), str(seconds)]) for _ in range(setups)]
        for p in procs:
            p.wait()
        base_took = time.perf_counter() - t
    print(f"load, baseline (all {setups} at once): {base_took:.1f}s; at most {b.most} setups at once, at most {b.most_runnable} runnable tasks, "
          f"1-min load at the end {loadavg()[0]:.2f}; time up/baseline = {took / base_took:.2f}")


def io(root: Path, setups: int, seconds: float) -> None:
    repo, marks = _setup_repo(root, "io", setups, WAIT, seconds, "io")
    took, s, _ = _up_sampled(repo, marks)
    plan = subprocess.run([*CLI, "plan"], cwd=repo, env=ENV, capture_output=True, text=True, check=True).stderr
    why = next((line for line in plan.splitlines() if line.startswith("setups at once")), "")
    print(f"io, hybridiso up: {setups} setups waiting {seconds:g} s each, kind io: {took:.1f}s, at most {s.most} at once ({why})")
    repo2, marks2 = _setup_repo(root, "io-as-compute", setups, WAIT, seconds, None)
    took2, s2, _ = _up_sampled(repo2, marks2)
    print(f"io, the same setups with kind unset (compute-bound rule): {took2:.1f}s, at most {s2.most} at once; time io/compute = {took / took2:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--setups", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--tmpfs", action="store_true", help="work under /dev/shm")
    ap.add_argument("--only", choices=["speed", "load", "io"])
    ap.add_argument("--compare-with", metavar="CHECKOUT", help="also time `up` of another hybridiso checkout (e.g. main before issue 15)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hybridiso-bench-admission-", dir="/dev/shm" if args.tmpfs else None))
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    print(f"{len(os.sched_getaffinity(0))} usable cores; git {git_version}; under {root}; /proc/loadavg at the start: {Path('/proc/loadavg').read_text().strip()}")
    try:
        if args.only in (None, "speed"):
            speed(root, args.files, args.agents, args.rounds, args.compare_with)
        if args.only in (None, "load"):
            load(root, args.setups, args.seconds)
        if args.only in (None, "io"):
            io(root, args.setups, args.seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"/proc/loadavg at the end: {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
