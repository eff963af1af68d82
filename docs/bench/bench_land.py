#!/usr/bin/env python3
"""Benchmark: `hybridiso land` against a hand-written merge loop, in the same run.

    python docs/bench/bench_land.py [--agents 8] [--rounds 3] [--check-seconds 2]
                                    [--files 2000] [--tmpfs] [--scaling 4,8,16]
                                    [--profile] [--fresh-loop]

One repository, N worktree agents (`hybridiso up`), each with one commit that
adds a file of its own (no conflicts).  `land.check` is a shell script outside
the repository that appends a line to a counter file (so every check run is
counted, whoever runs it) and then either sleeps (a check that waits on I/O),
or burns one core for the same time (a CPU-bound check: a busy loop calibrated
to --check-seconds on an idle core), and in the "fail" scenarios exits 1 when
the tree holds the failing agent's file (the 4th of 8: nothing it brings can
land, so it is red on any base).

The loop is what a careful user writes by hand: one scratch worktree made
once (`git worktree add --detach`), then per branch `git checkout --detach
BRANCH`, `git rebase TARGET`, the check, and `git merge --ff-only` of the
result in the main checkout (which has the target checked out); the scratch
worktree is removed at the end.  Its time includes all of that.

Between two timed runs the repository is put back as it was (target, its
checkout and every agent's branch reset to their first commits), so every run
lands the same 8 commits onto the same target; the order of the ways
alternates from round to round.  Medians of --rounds, ratios of the medians
(and per round).

--tmpfs puts everything under /dev/shm (a tmpfs) instead of $TMPDIR.
--scaling N,M,...: sequential land vs loop for each N (I/O check).
--fresh-loop: also the loop with a new scratch worktree per branch
(`worktree add` + `worktree remove` around each check: what land did
before it reused one scratch worktree per run).
--profile: one sequential land of N with a `git` wrapper first on PATH that
records every git process it runs (subcommand, wall time): the per-candidate
costs in docs/benchmarks.md come from it.
Not a test: the figures depend on the machine; docs/benchmarks.md has them.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

# hybridiso runs as an installed user runs it: with Python's bytecode cache
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

SOURCE = Path(__file__).resolve().parents[2]  # the checkout whose hybridiso is measured
ENV = {
    **os.environ,
    "PYTHONPATH": str(SOURCE),
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}
HYBRIDISO = [sys.executable, "-m", "hybridiso"]
FAIL_MARK = "FAIL-THIS-CANDIDATE"


def sh(*argv: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env or ENV, check=check, capture_output=True, text=True)


def calibrate_busy(seconds: float) -> int:
    """Iterations of a busy loop (python -c) that take ``seconds`` of CPU
    here: measured in CPU time, so a loaded machine does not skew it."""
    def cpu_of(code: str) -> float:
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", code], check=True)
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        return now.ru_utime + now.ru_stime - ru.ru_utime - ru.ru_stime

    probe = 20_000_000
    start = cpu_of("pass")
    per = (cpu_of(f"n={probe}\nwhile n: n-=1") - start) / probe
    return max(1, int((seconds - start) / per))


class Bench:
    def __init__(self, root: Path, agents: int, files: int, check_seconds: float, busy: int, fail_index: int) -> None:
        self.root = root
        self.n = agents
        self.names = [f"a{i:02d}" for i in range(agents)]
        self.check_seconds = check_seconds
        self.busy = busy
        self.fail_index = fail_index
        self.repo = root / f"repo{agents}"
        self.ws = root / f"repo{agents}.agents"
        self.counter = root / f"checks{agents}.log"
        self.check = root / f"check{agents}.sh"
        self._make(files)

    # --- the repository -------------------------------------------------------

    def _make(self, files: int) -> None:
        repo = self.repo
        repo.mkdir()
        sh("git", "init", "-q", "-b", "main", cwd=repo)
        for i in range(files):
            d = repo / f"pkg{i % 40:02d}"
            d.mkdir(exist_ok=True)
            (d / f"mod{i:05d}.py").write_text(f"VALUE = {i}\n" + "x = 1\n" * (i % 30))
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-q", "-m", "files", cwd=repo)
        manifest = (
            "version: 1\nbase: main\n"
            f"land:\n  check: [\"sh {self.check}\"]\n  timeout: 10m\n"
            "agents:\n" + "".join(f"  - name: {a}\n    isolation: worktree\n" for a in self.names)
        )
        (repo / "hybridiso.yaml").write_text(manifest)
        (repo / ".git" / "info" / "exclude").write_text("hybridiso.yaml\n")
        self.write_check("sleep")
        sh(*HYBRIDISO, "up", cwd=repo)
        self.start = sh("git", "rev-parse", "HEAD", cwd=repo).stdout.strip()
        self.tips: dict[str, str] = {}
        for i, a in enumerate(self.names):
            env = self.ws / a
            (env / "agents").mkdir(exist_ok=True)
            text = FAIL_MARK if i == self.fail_index else f"work of {a}"
            (env / "agents" / f"{a}.txt").write_text(text + "\n")
            sh("git", "add", "agents", cwd=env)
            sh("git", "commit", "-q", "-m", f"{a}: its own file", cwd=env)
            self.tips[a] = sh("git", "rev-parse", "HEAD", cwd=env).stdout.strip()

    def write_check(self, mode: str) -> None:
        """mode: sleep | cpu, with "-fail": red where the failing agent's file is."""
        work = f"sleep {self.check_seconds}" if mode.startswith("sleep") else f"{sys.executable} -c 'n={self.busy}\nwhile n: n-=1'"
        fail = f"if grep -rqs {FAIL_MARK} agents; then exit 1; fi\n" if mode.endswith("-fail") else ""
        self.check.write_text(f"#!/bin/sh\necho \"$PWD\" >> {self.counter}\n{work}\n{fail}exit 0\n")

    def reset(self) -> None:
        """Back to the first state: target and its checkout at the start,
        each agent's branch (and its worktree) at its own commit."""
        sh("git", "reset", "-q", "--hard", self.start, cwd=self.repo)
        for a in self.names:
            sh("git", "reset", "-q", "--hard", self.tips[a], cwd=self.ws / a)
        self.counter.write_text("")

    def cleanup(self) -> None:
        for path in (self.repo, self.ws):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.counter, self.check):
            path.unlink(missing_ok=True)

    def checks_run(self) -> int:
        return len(self.counter.read_text().splitlines())

    def landed(self) -> list[str]:
        log = sh("git", "log", "--format=%s", f"{self.start}..main", cwd=self.repo).stdout
        return [line.split(":")[0] for line in reversed(log.splitlines())]

    # --- the ways -------------------------------------------------------------

    def land(self, *extra: str, env: dict[str, str] | None = None) -> dict[str, object]:
        r = sh(*HYBRIDISO, "land", "--json", *extra, cwd=self.repo, env=env, check=False)
        if r.returncode not in (0, 1):
            raise SystemExit(f"hybridiso land failed ({r.returncode}):\n{r.stderr}")
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def loop(self, fresh: bool = False) -> None:
        """The hand-written loop; ``fresh``: a new scratch worktree per
        branch, as land makes one (what reusing one saves)."""
        scratch = self.root / f"loop-scratch{self.n}"
        if not fresh:
            sh("git", "worktree", "add", "-q", "--detach", str(scratch), "main", cwd=self.repo)
        try:
            for a in self.names:
                if fresh:
                    if scratch.exists():
                        sh("git", "worktree", "remove", "--force", str(scratch), cwd=self.repo)
                    sh("git", "worktree", "add", "-q", "--detach", str(scratch), f"hybridiso/{a}", cwd=self.repo)
                else:
                    sh("git", "checkout", "-q", "--detach", f"hybridiso/{a}", cwd=scratch)
                if sh("git", "rebase", "-q", "main", cwd=scratch, check=False).returncode != 0:
                    sh("git", "rebase", "--abort", cwd=scratch, check=False)
                    continue
                if sh("sh", str(self.check), cwd=scratch, check=False).returncode != 0:
                    continue
                head = sh("git", "rev-parse", "HEAD", cwd=scratch).stdout.strip()
                sh("git", "merge", "-q", "--ff-only", head, cwd=self.repo)
        finally:
            sh("git", "worktree", "remove", "--force", str(scratch), cwd=self.repo)

    def timed(self, way: str, mode: str) -> tuple[float, float, int, list[str]]:
        """Wall time, CPU time of everything it ran (user + system of all
        its processes: what the machine's load disturbs less), check runs,
        the subjects that landed."""
        self.write_check(mode)
        self.reset()
        os.sync()
        time.sleep(0.5)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        if way == "loop":
            self.loop()
        elif way == "loop-fresh":
            self.loop(fresh=True)
        elif way == "land":
            self.land()
        else:
            self.land(f"--parallel={way.removeprefix('par')}")
        took = time.perf_counter() - t
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = now.ru_utime + now.ru_stime - ru.ru_utime - ru.ru_stime
        return took, cpu, self.checks_run(), self.landed()


SCENARIOS = [  # (label, check mode, ways)
    ("I/O check (sleep)", "sleep", ["loop", "land", "par4"]),  # --fresh-loop adds loop-fresh
    ("CPU-bound check (busy loop)", "cpu", ["loop", "land", "par4"]),
    ("I/O check, 4th candidate red", "sleep-fail", ["loop", "land", "par4"]),
]


def run_matrix(b: Bench, rounds: int, only: set[str], fresh_loop: bool = False) -> None:
    scenarios = [(label, mode, ways + (["loop-fresh"] if fresh_loop and mode == "sleep" else [])) for label, mode, ways in SCENARIOS if not only or mode in only]
    results: dict[tuple[str, str], list[float]] = defaultdict(list)
    cpus: dict[tuple[str, str], list[float]] = defaultdict(list)
    counts: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in range(rounds):
        for _label, mode, ways in scenarios:
            order = ways if r % 2 == 0 else list(reversed(ways))
            histories = {}
            line = []
            for way in order:
                took, cpu, checks, landed = b.timed(way, mode)
                results[(mode, way)].append(took)
                cpus[(mode, way)].append(cpu)
                counts[(mode, way)].append(checks)
                histories[way] = landed
                line.append(f"{way} {took:.2f}s cpu {cpu:.2f}s ({checks} checks)")
            same = len({tuple(h) for h in histories.values()}) == 1
            if not same:
                raise SystemExit(f"the ways landed different histories: {histories}")
            print(f"round {r + 1} {mode:<10}: " + " | ".join(line) + f"  [landed {len(histories['loop'])}, load {os.getloadavg()[0]:.1f}]", flush=True)
    print(f"\nN={b.n} candidates, check {b.check_seconds:g}s, median of {rounds} rounds, ratios of medians (per-round ratios)")
    print(f"{'scenario':<30} {'loop':>8} {'land':>8} {'ratio':>6} {'par4':>8} {'ratio':>6}   checks loop/land/par4")
    for label, mode, _ in scenarios:
        med = {w: statistics.median(results[(mode, w)]) for w in ("loop", "land", "par4")}
        per = {w: [x / y for x, y in zip(results[(mode, w)], results[(mode, "loop")], strict=True)] for w in ("land", "par4")}
        ch = "/".join(str(statistics.median(counts[(mode, w)])) for w in ("loop", "land", "par4"))
        print(
            f"{label:<30} {med['loop']:>7.2f}s {med['land']:>7.2f}s {med['land'] / med['loop']:>6.2f} "
            f"{med['par4']:>7.2f}s {med['par4'] / med['loop']:>6.2f}   {ch}"
        )
        print(f"{'':<30} per round: land {', '.join(f'{x:.2f}' for x in per['land'])}; par4 {', '.join(f'{x:.2f}' for x in per['par4'])}")
        if (mode, "loop-fresh") in results:
            fresh = statistics.median(results[(mode, "loop-fresh")])
            print(f"{'':<30} the loop with a new scratch worktree per branch (as land made before reusing one): {fresh:.2f}s, "
                  f"{fresh / med['loop']:.2f}x the loop; land / that = {med['land'] / fresh:.2f}")
        cpu = {w: statistics.median(cpus[(mode, w)]) for w in ("loop", "land", "par4")}
        print(f"{'':<30} CPU seconds (all processes): loop {cpu['loop']:.2f}, land {cpu['land']:.2f}, par4 {cpu['par4']:.2f}; "
              f"land - loop = {(cpu['land'] - cpu['loop']) / b.n * 1000:.0f} ms per candidate")


def run_scaling(root: Path, sizes: list[int], rounds: int, files: int, check_seconds: float, busy: int) -> None:
    print(f"\nscaling, I/O check {check_seconds:g}s, sequential land vs loop, median of {rounds} rounds")
    print(f"{'N':>4} {'loop':>8} {'land':>8} {'ratio':>6} {'land-loop per candidate':>24}")
    for n in sizes:
        b = Bench(root, n, files, check_seconds, busy, fail_index=-1)
        loop_t, land_t, loop_c, land_c = [], [], [], []
        for r in range(rounds):
            for way in (("loop", "land") if r % 2 == 0 else ("land", "loop")):
                took, cpu, _, _ = b.timed(way, "sleep")
                (loop_t if way == "loop" else land_t).append(took)
                (loop_c if way == "loop" else land_c).append(cpu)
        lo, la = statistics.median(loop_t), statistics.median(land_t)
        clo, cla = statistics.median(loop_c), statistics.median(land_c)
        print(f"{n:>4} {lo:>7.2f}s {la:>7.2f}s {la / lo:>6.2f} {(la - lo) / n * 1000:>21.0f} ms"
              f"   CPU loop {clo:.2f}s land {cla:.2f}s ({cla / n * 1000:.0f} ms per candidate), load {os.getloadavg()[0]:.1f}", flush=True)
        b.cleanup()


def profile(b: Bench) -> None:
    """One sequential land with every git process it runs recorded."""
    wrap = b.root / "gitwrap"
    wrap.mkdir(exist_ok=True)
    log = b.root / "git-calls.log"
    real = shutil.which("git")
    (wrap / "git").write_text(
        "#!/bin/bash\n"
        "s=$EPOCHREALTIME\n"
        f"{real} \"$@\"\nrc=$?\n"
        # the subcommand: the first argument that is not an option (or -c's value)
        "sub=''; skip=0; for a in \"$@\"; do if [ $skip = 1 ]; then skip=0; continue; fi;"
        " case $a in -c|-C) skip=1;; -*) ;; *) sub=$a; break;; esac; done\n"
        f"echo \"$s $EPOCHREALTIME $sub $*\" >> {log}\n"
        "exit $rc\n"
    )
    (wrap / "git").chmod(0o755)
    b.write_check("sleep")
    b.reset()
    log.write_text("")
    env = {**ENV, "PATH": f"{wrap}:{ENV['PATH']}"}
    t = time.perf_counter()
    out = b.land(env=env)
    wall = time.perf_counter() - t
    check = sum(float(c["check_seconds"]) for c in out["candidates"])  # type: ignore[index, union-attr]
    calls = [line.split() for line in log.read_text().splitlines() if line.strip()]
    n = Counter(c[2] if len(c) > 2 else "?" for c in calls)
    secs: dict[str, float] = defaultdict(float)
    for c in calls:
        secs[c[2] if len(c) > 2 else "?"] += float(c[1]) - float(c[0])
    total_git = sum(secs.values())
    print(f"\nprofile: one sequential land of {b.n} candidates: wall {wall:.2f}s, checks {check:.2f}s, "
          f"everything else {wall - check:.2f}s ({(wall - check) / b.n * 1000:.0f} ms per candidate)")
    print(f"  {len(calls)} git processes ({len(calls) / b.n:.1f} per candidate), {total_git:.2f}s of git wall time "
          f"({total_git / b.n * 1000:.0f} ms per candidate)")
    if os.environ.get("BENCH_GIT_LOG"):
        shutil.copy(log, os.environ["BENCH_GIT_LOG"])
    print(f"  {'git subcommand':<16} {'calls':>6} {'per cand':>9} {'seconds':>8} {'ms/call':>8}")
    for sub, _ in sorted(secs.items(), key=lambda kv: -kv[1]):
        print(f"  {sub:<16} {n[sub]:>6} {n[sub] / b.n:>9.1f} {secs[sub]:>8.3f} {secs[sub] / n[sub] * 1000:>8.1f}")
    if shutil.which("py-spy"):
        spy(b, env)
    sh(*HYBRIDISO, "--version", cwd=b.repo)
    t = time.perf_counter()
    sh(*HYBRIDISO, "--version", cwd=b.repo)
    print(f"  one hybridiso process start (--version): {time.perf_counter() - t:.3f}s")


def spy(b: Bench, env: dict[str, str]) -> None:
    """Where the land process's own wall time goes (py-spy --idle: every
    sample counts, waiting included), leaving out the checks' time."""
    b.reset()
    raw = b.root / "spy.txt"
    idle = [] if os.environ.get("BENCH_SPY_CPU") else ["--idle"]
    if os.environ.get("BENCH_SPY_RAW"):
        raw = Path(os.environ["BENCH_SPY_RAW"])
    sh("py-spy", "record", *idle, "--rate", "200", "--format", "raw", "-o", str(raw), "--",
       *HYBRIDISO, "land", "--json", cwd=b.repo, env=env, check=False)
    inclusive: Counter[str] = Counter()
    total = imports = in_checks = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(f.startswith("run_checks ") for f in frames):
            in_checks += int(count)
            continue  # the check itself
        total += int(count)
        if any(f.startswith("_find_and_load ") for f in frames):
            imports += int(count)
        ours = []
        for f in frames:  # "function (path:line)": hybridiso's own functions only
            name, _, where = f.partition(" (")
            path = where.rsplit(":", 1)[0]
            if "/hybridiso/" in path or path.startswith("hybridiso/"):
                ours.append(f"{path.split('hybridiso/', 1)[-1]}:{name}")
        for f in dict.fromkeys(ours):
            inclusive[f] += int(count)
    print(f"  py-spy (--idle, 200 Hz), the land process outside its checks: {total / 200:.2f}s; "
          f"of it importing modules {imports / 200:.2f}s (inside run_checks: {in_checks / 200:.2f}s); hybridiso functions by inclusive wall time (top 25):")
    for f, c in inclusive.most_common(25):
        print(f"    {c / total * 100:5.1f}%  {c / 200 / b.n * 1000:6.0f} ms/cand  {f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--check-seconds", type=float, default=2.0)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--fail-index", type=int, default=3, help="0-based index of the red candidate (default: the 4th)")
    p.add_argument("--tmpfs", action="store_true", help="work under /dev/shm (tmpfs) instead of $TMPDIR")
    p.add_argument("--scaling", default="", help="e.g. 4,8,16: sequential land vs loop at each N")
    p.add_argument("--profile", action="store_true", help="count the git processes of one sequential land")
    p.add_argument("--scenarios", default="", help="only these of sleep,cpu,sleep-fail (default: all)")
    p.add_argument("--no-matrix", action="store_true", help="skip the main table (with --scaling/--profile)")
    p.add_argument("--fresh-loop", action="store_true", help="also time the loop with a new scratch worktree per branch (what land did before it reused one)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below cleans up
    parent = "/dev/shm" if args.tmpfs else None
    root = Path(tempfile.mkdtemp(prefix="hybridiso-bench-land-", dir=parent))
    fs = sh("stat", "-f", "-c", "%T", str(root), cwd=root).stdout.strip()
    busy = calibrate_busy(args.check_seconds)
    git_version = sh("git", "--version", cwd=root).stdout.split()[-1]
    print(f"git {git_version}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, in {root} ({fs}), busy loop {busy} iterations", flush=True)
    try:
        if not args.no_matrix or args.profile:
            b = Bench(root, args.agents, args.files, args.check_seconds, busy, args.fail_index)
            if not args.no_matrix:
                run_matrix(b, args.rounds, {x for x in args.scenarios.split(",") if x}, args.fresh_loop)
            if args.profile:
                profile(b)
            b.cleanup()
        if args.scaling:
            run_scaling(root, [int(x) for x in args.scaling.split(",")], args.rounds, args.files, args.check_seconds, busy)
        print(f"load at the end {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
