#!/usr/bin/env python3
"""Benchmark: how hybridiso's cost grows with the number of agents (issue 15),
each command beside the plain git/docker it wraps, timed in the same run.

    python docs/bench/bench_scale.py [--code PATH] [--tmpfs] [--quick] [--json]
        [--agents 10,50,100,200] [--files 2000] [--big-files 12000]
        [--containers 10,25,50] [--new-user 150] [--rounds 3]

Prints a curve, not a point.  For every N of --agents, each round makes two
fresh clones of one --files repository (origin: a local upstream, so `sync`
has something to fetch from) and times, phase by phase, hybridiso on one and
the plain loop on the other, alternating which goes first from round to round:

  up              `hybridiso up` of N       | `git worktree add -b` per agent
  up (no-op)      a second `up`             | `git worktree list --porcelain`
  status          `status` (with disk)      | `git status --porcelain -uall` + `du -s` per worktree
  status --no-disk                          | `git status --porcelain -uall` per worktree
  gc (dry run)    `gc --dry-run`            | `git worktree list`, `worktree prune -n`, `branch --merged`
  sync            `sync`, nothing upstream  | `git fetch` + `merge --ff-only` + `git rebase` per worktree
  down            `down` of all             | `git worktree remove` + `git branch -D` per agent

Then: 8 agents on a --big-files repository (`status` against git status + du
by hand over the same worktrees); container agents for each N of
--containers (`up` against sequential bare starts: `git worktree add` +
`docker network create` + `docker run -d` of the same image; `status`
against `docker ps` + git status + du; `down` against `docker rm -f` +
`docker network rm` + worktree remove); the new user's try: a manifest of
--new-user agents, `up`, `status`, a second `up`, `gc`, `down`, beside the
plain git each wraps.  Per command: median seconds of --rounds, ms per agent,
the ratio of the medians hybridiso / plain.  At the end, the issue's targets
with met/missed.

--code PATH measures that checkout's hybridiso (PYTHONPATH=PATH, run from its
bytecode cache: see bench_against.py code_env); the default is this one.
--tmpfs puts everything under /dev/shm; without it under $TMPDIR.  Before
every timed phase the script syncs and waits (up to 20 s) for the kernel's
I/O pressure to settle (while it is over 0.5 % and
still falling; bench_up.py settle): on this VM's disk the writes
and deletes of mass creation/removal otherwise slow the next phase
several-fold.  A command that fails prints its stderr's tail; its figure is
marked missing and the script goes on.  The container image is built
locally when missing (FROM scratch + Debian's static busybox, as
tests/support/images.py does; nothing can be pulled).  Every container and
network is labelled dev.hybridiso.test=1 (and with this run's pid) and
removed at the end, also on Ctrl-C.  --json prints all figures as JSON on
stdout (progress goes to stderr).  --quick: --agents 10,50,100
--containers 10,25 --rounds 1.  Not a test: figures depend on the machine.
"""
from __future__ import annotations

import argparse
import compileall
import fcntl
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
IMAGE = "hybridiso-test/busybox:1"
TEST_LABEL = "dev.hybridiso.test"
RUN_LABEL = "dev.hybridiso.bench-scale"
RUN = str(os.getpid())
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}
OUT = sys.stdout  # progress; stderr with --json
SETTLED = [0.0]  # seconds spent waiting for I/O to settle


def say(*parts: object) -> None:
    print(*parts, file=OUT, flush=True)


class Failed(Exception):
    pass


# --- running things -----------------------------------------------------------

def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``argv``; a non-zero exit raises Failed with its stderr's tail."""
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        raise Failed(f"`{' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''}` exited {proc.returncode}:\n{tail}")
    return proc.stdout


def git(cwd: Path, *args: str) -> str:
    return run(["git", *args], cwd, {**os.environ, **GIT_ENV})


def docker(*args: str) -> str:
    return run(["docker", *args], Path.cwd())


class Hybridiso:
    def __init__(self, code: Path, state: Path) -> None:
        self.code = code
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        # the port registry goes into the temp dir, like everything else
        self.env = {**env, **GIT_ENV, "PYTHONPATH": str(code), "XDG_STATE_HOME": str(state)}

    def __call__(self, repo: Path, *args: str) -> str:
        return run([sys.executable, "-m", "hybridiso", *args], repo, self.env)


def settle(limit: float = 20.0) -> None:
    """Let the previous phase's writes and deletes reach the disk: sync, then
    wait while the kernel's I/O pressure (PSI, some avg10) is over 0.5 % and
    still falling, at most ``limit`` seconds (bench_up.py waits for it to
    drop under 0.5 %; with other processes' I/O on the machine that never
    happens, so a pressure that no longer falls counts as settled)."""
    start = time.time()
    try:
        _settle(limit)
    finally:
        SETTLED[0] += time.time() - start


def _psi() -> float | None:
    try:
        with open("/proc/pressure/io") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def _settle(limit: float) -> None:
    os.sync()
    end = time.time() + limit
    prev = _psi()
    if prev is None:
        time.sleep(2)
        return
    while prev >= 0.5 and time.time() < end:
        time.sleep(1)
        cur = _psi()
        # settled, or what stalls is not ours (not falling: other processes'
        # steady I/O on a shared machine, which no wait removes)
        if cur is None or cur < 0.5 or cur > prev * 0.95:
            return
        prev = cur


def timed(what: str, fn: Callable[[], object]) -> float | None:
    settle()
    t = time.perf_counter()
    try:
        fn()
    except Failed as e:
        say(f"    FAILED {what}: {e}")
        return None
    return time.perf_counter() - t


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --- repositories -------------------------------------------------------------

def make_upstream(path: Path, files: int) -> Path:
    """A repository of ``files`` small files in 10 top-level packages of
    subdirectories; clones of it have origin/main to fetch from."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for i in range(files):
        d = path / f"pkg{i % 10}" / f"sub{i % 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i:05d}.py").write_text(f"VALUE = {i}\n" + "x = 1\n" * (i % 40))
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "files")
    return path


def clone(upstream: Path, repo: Path, manifest: str) -> Path:
    git(upstream.parent, "clone", "-q", str(upstream), str(repo))
    (repo / "hybridiso.yaml").write_text(manifest)
    with open(repo / ".git" / "info" / "exclude", "a") as f:
        f.write("hybridiso.yaml\n")
    return repo


def worktree_manifest(names: list[str]) -> str:
    return "version: 1\nbase: main\nagents:\n" + "".join(f"  - name: {n}\n    isolation: worktree\n" for n in names)


def container_manifest(names: list[str], image: str) -> str:
    agents = "".join(
        f'  - name: {n}\n    isolation: container\n    image: {image}\n    command: ["sleep", "1000000"]\n' for n in names
    )
    return f'version: 1\nbase: main\nlabels: {{{TEST_LABEL}: "1", {RUN_LABEL}: "{RUN}"}}\nagents:\n{agents}'


def worktrees(repo: Path) -> list[Path]:
    """The linked worktrees of ``repo`` (not the main one)."""
    paths = [Path(line[9:]) for line in git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")]
    return paths[1:]


def expect_worktrees(repo: Path, n: int, after: str) -> None:
    have = len(worktrees(repo))
    if have != n:
        raise Failed(f"after {after}: {have} linked worktrees, expected {n}")


# --- the plain loops ----------------------------------------------------------

def plain_up(repo: Path, names: list[str]) -> None:
    ws = repo.parent / f"{repo.name}.plain"
    for n in names:
        git(repo, "worktree", "add", "-q", "-b", n, str(ws / n), "main")


def plain_status(repo: Path, disk: bool = True) -> None:
    for wt in worktrees(repo):
        git(wt, "status", "--porcelain", "-uall")
        if disk:
            run(["du", "-s", str(wt)], repo)


def plain_gc(repo: Path) -> None:
    git(repo, "worktree", "list", "--porcelain")
    git(repo, "worktree", "prune", "--dry-run", "-v")
    git(repo, "branch", "--merged", "main")


def plain_sync(repo: Path) -> None:
    git(repo, "fetch", "-q", "--prune", "origin")
    git(repo, "merge", "-q", "--ff-only", "origin/main")
    for wt in worktrees(repo):
        git(wt, "rebase", "-q", "origin/main")


def plain_down(repo: Path) -> None:
    for wt in worktrees(repo):
        branch = git(wt, "symbolic-ref", "--short", "HEAD").strip()
        git(repo, "worktree", "remove", str(wt))
        git(repo, "branch", "-q", "-D", branch)


def bare_start(repo: Path, image: str, names: list[str]) -> None:
    ws = repo.parent / f"{repo.name}.plain"
    common = str(repo / ".git")
    for n in names:
        wt = ws / n
        git(repo, "worktree", "add", "-q", "-b", n, str(wt), "main")
        net = f"bscale{RUN}-{repo.parent.name}-{n}"
        docker("network", "create", "--label", f"{TEST_LABEL}=1", "--label", f"{RUN_LABEL}={RUN}", net)
        docker(
            "run", "-d", "--name", net, "--label", f"{TEST_LABEL}=1", "--label", f"{RUN_LABEL}={RUN}", "--init",
            "--network", net, "-u", f"{os.getuid()}:{os.getgid()}", "-v", f"{wt}:{wt}", "-v", f"{common}:{common}",
            "-w", str(wt), image, "sleep", "1000000",
        )


def bare_status(repo: Path) -> None:
    docker("ps", "-a", "--filter", f"label={RUN_LABEL}={RUN}")
    plain_status(repo)


def bare_remove(repo: Path) -> None:
    for wt in worktrees(repo):
        net = f"bscale{RUN}-{repo.parent.name}-{wt.name}"
        docker("rm", "-f", net)
        docker("network", "rm", net)
        git(repo, "worktree", "remove", "--force", str(wt))
        git(repo, "branch", "-q", "-D", wt.name)


# --- one curve ------------------------------------------------------------------

Phase = tuple[str, Callable[[Path], object] | None, Callable[[Path], object] | None]


def figures(h: list[float | None], p: list[float | None], n: int) -> dict[str, object]:
    """Medians of the rounds that worked (missing when none did)."""
    hs, ps = [x for x in h if x is not None], [x for x in p if x is not None]
    mh = statistics.median(hs) if hs else None
    mp = statistics.median(ps) if ps else None
    return {
        "hybridiso": h, "plain": p, "median": mh, "plain_median": mp, "agents": n,
        "ms_per_agent": mh / n * 1000 if mh is not None else None,
        "ratio": mh / mp if mh is not None and mp else None,
        "missing_rounds": len(h) - len(hs),
    }


def curve(
    label: str, n: int, rounds: int, phases: list[Phase], setup: Callable[[int, str], Path],
    interleave: bool = True, after_round: Callable[[], None] | None = None,
) -> dict[str, dict[str, object]]:
    """``rounds`` rounds of ``phases`` on a fresh pair of repositories each
    (``setup(round, side)``), hybridiso and plain alternating who goes first:
    phase by phase (``interleave``), or one side's phases all before the
    other's (containers: both sides' networks at once would not fit in
    Docker's default address pools)."""
    got: dict[str, dict[str, list[float | None]]] = {name: {"hybridiso": [], "plain": []} for name, _, _ in phases}
    for r in range(rounds):
        try:
            repos = {"hybridiso": setup(r, "h"), "plain": setup(r, "p")}
        except Failed as e:
            say(f"    FAILED making the repositories of round {r + 1}: {e}")
            for per in got.values():
                per["hybridiso"].append(None)
                per["plain"].append(None)
            continue
        sides = ["hybridiso", "plain"] if r % 2 == 0 else ["plain", "hybridiso"]
        schedule = [(ph, s) for ph in phases for s in sides] if interleave else [(ph, s) for s in sides for ph in phases]
        broken = {"hybridiso": False, "plain": False}
        for (name, hfn, pfn), side in schedule:
            fn = hfn if side == "hybridiso" else pfn
            repo = repos[side]
            took: float | None = None
            if fn is not None and broken[side]:
                if name == "down":  # untimed: free what the failed round made
                    try:
                        fn(repo)
                    except Failed:
                        pass
            elif fn is not None:
                took = timed(f"{label} N={n} {name} ({side})", lambda fn=fn, repo=repo: fn(repo))
                if took is None and name == "up":
                    broken[side] = True  # nothing to measure on this side in this round
            got[name][side].append(took)
        fmt = lambda s: "-" if s is None else f"{s:.2f}"  # noqa: E731
        say(f"  {label} N={n} round {r + 1} (hybridiso/plain s, load {loadavg()}): "
            + ", ".join(f"{name} {fmt(per['hybridiso'][-1])}/{fmt(per['plain'][-1])}" for name, per in got.items()))
        if after_round is not None:
            after_round()
        for path in repos.values():
            shutil.rmtree(path.parent, ignore_errors=True)
    return {name: figures(per["hybridiso"], per["plain"], n) for name, per in got.items()}


def print_curve(title: str, results: dict[int, dict[str, dict[str, object]]]) -> None:
    say(f"\n{title}")
    say(f"  {'command':<17} {'N':>4} {'hybridiso':>10} {'ms/agent':>9} {'plain':>9} {'ratio':>6}")
    commands = list(next(iter(results.values()))) if results else []
    for c in commands:
        for n, per in results.items():
            f = per[c]
            m, p, r, ms = f["median"], f["plain_median"], f["ratio"], f["ms_per_agent"]
            miss = f" ({f['missing_rounds']} round(s) missing)" if f["missing_rounds"] else ""
            say(
                f"  {c:<17} {n:>4} {'missing' if m is None else f'{m:.2f}s':>10} {'' if ms is None else f'{ms:.1f}':>9} "
                f"{'missing' if p is None else f'{p:.2f}s':>9} {'' if r is None else f'{r:.2f}':>6}{miss}"
            )


# --- the sections ------------------------------------------------------------------

def worktree_phases(h: Hybridiso, names: list[str], new_user: bool = False) -> list[Phase]:
    n = len(names)

    def up(repo: Path) -> None:
        h(repo, "up")
        expect_worktrees(repo, n, "up")

    def plain_up_checked(repo: Path) -> None:
        plain_up(repo, names)
        expect_worktrees(repo, n, "the plain loop")

    def down(repo: Path) -> None:
        h(repo, "down")
        expect_worktrees(repo, 0, "down")

    def pdown(repo: Path) -> None:
        plain_down(repo)
        expect_worktrees(repo, 0, "the plain removal")

    noop: Phase = ("up (no-op)", lambda r: h(r, "up"), lambda r: git(r, "worktree", "list", "--porcelain"))
    status: Phase = ("status", lambda r: h(r, "status"), plain_status)
    gc: Phase = ("gc (dry run)", lambda r: h(r, "gc", "--dry-run"), plain_gc)
    if new_user:
        return [("up", up, plain_up_checked), status, noop, gc, ("down", down, pdown)]
    return [
        ("up", up, plain_up_checked), noop, status,
        ("status --no-disk", lambda r: h(r, "status", "--no-disk"), lambda r: plain_status(r, disk=False)),
        gc, ("sync", lambda r: h(r, "sync"), plain_sync), ("down", down, pdown),
    ]


def big_status(h: Hybridiso, root: Path, files: int, agents: int, rounds: int) -> dict[str, dict[str, object]]:
    """``agents`` agents on a ``files`` repository, made once: `status` and
    the hand loop over the same worktrees, alternating."""
    upstream = make_upstream(root / "big-upstream", files)
    names = [f"b{i:02d}" for i in range(agents)]
    repo = clone(upstream, root / "big" / "repo", worktree_manifest(names))
    try:
        h(repo, "up")
        expect_worktrees(repo, agents, "up")
    except Failed as e:
        say(f"    FAILED big repository up: {e}")
        return {}
    got: dict[str, tuple[list[float | None], list[float | None]]] = {"status": ([], []), "status --no-disk": ([], [])}
    for r in range(rounds):
        for name, hargs, disk in (("status", ["status"], True), ("status --no-disk", ["status", "--no-disk"], False)):
            order = [0, 1] if r % 2 == 0 else [1, 0]
            took: list[float | None] = [None, None]
            for side in order:
                if side == 0:
                    took[0] = timed(f"big {name}", lambda hargs=hargs: h(repo, *hargs))
                else:
                    took[1] = timed(f"big {name} (plain)", lambda disk=disk: plain_status(repo, disk=disk))
            got[name][0].append(took[0])
            got[name][1].append(took[1])
        say(f"  big N={agents} round {r + 1} (load {loadavg()}): " + ", ".join(
            f"{k} {v[0][-1] if v[0][-1] is None else round(v[0][-1], 2)}/{v[1][-1] if v[1][-1] is None else round(v[1][-1], 2)}"
            for k, v in got.items()))
    try:
        h(repo, "down")
    except Failed as e:
        say(f"    FAILED big repository down: {e}")
    shutil.rmtree(root / "big", ignore_errors=True)
    shutil.rmtree(upstream, ignore_errors=True)
    return {k: figures(v[0], v[1], agents) for k, v in got.items()}


def container_phases(h: Hybridiso, names: list[str], image: str) -> list[Phase]:
    n = len(names)

    def up(repo: Path) -> None:
        h(repo, "up")
        expect_worktrees(repo, n, "up")

    def bare(repo: Path) -> None:
        bare_start(repo, image, names)

    def down(repo: Path) -> None:
        h(repo, "down")
        expect_worktrees(repo, 0, "down")

    return [("up", up, bare), ("status", lambda r: h(r, "status"), bare_status), ("down", down, bare_remove)]


def ensure_image(tag: str) -> str | None:
    """The busybox test image, built here when missing (as
    tests/support/images.py does, under the same lock)."""
    if subprocess.run(["docker", "image", "inspect", tag], check=False, capture_output=True).returncode == 0:
        return tag
    if tag != IMAGE:
        say(f"  image {tag} is not here and only {IMAGE} can be built: containers skipped")
        return None
    busybox = next((p for p in (Path("/bin/busybox"), Path("/usr/bin/busybox")) if p.exists()), None)
    if busybox is None or "dynamically linked" in subprocess.run(["file", "-L", str(busybox)], check=False, capture_output=True, text=True).stdout:
        say("  no static busybox (apt-get install busybox-static): containers skipped")
        return None
    lock = Path(tempfile.gettempdir()) / f"hybridiso-image-{tag.replace('/', '_').replace(':', '_')}.lock"
    with lock.open("w") as f, tempfile.TemporaryDirectory(prefix="hybridiso-busybox-") as ctx:
        fcntl.flock(f, fcntl.LOCK_EX)
        if subprocess.run(["docker", "image", "inspect", tag], check=False, capture_output=True).returncode == 0:
            return tag
        shutil.copy2(busybox, Path(ctx) / "busybox")
        (Path(ctx) / "Dockerfile").write_text(
            "FROM scratch\nCOPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
            'RUN ["/bin/busybox", "mkdir", "-p", "/tmp", "/usr/bin", "/www"]\n'
            'RUN ["/bin/busybox", "chmod", "1777", "/tmp"]\n'
            f'LABEL {TEST_LABEL}="1"\nCMD ["/bin/sh"]\n'
        )
        proc = subprocess.run(["docker", "build", "-q", "-t", tag, ctx], check=False, capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
        if proc.returncode != 0:
            say(f"  building {tag} failed: containers skipped\n{proc.stderr[-800:]}")
            return None
    return tag


def docker_cleanup() -> None:
    """Every container, network and volume this run labelled."""
    sel = f"label={RUN_LABEL}={RUN}"
    for ls, rm in (
        (["docker", "ps", "-aq", "--filter", sel], ["docker", "rm", "-fv"]),
        (["docker", "network", "ls", "-q", "--filter", sel], ["docker", "network", "rm"]),
        (["docker", "volume", "ls", "-q", "--filter", sel], ["docker", "volume", "rm", "-f"]),
    ):
        try:
            ids = subprocess.run(ls, check=False, capture_output=True, text=True, timeout=120).stdout.split()
            if ids:
                subprocess.run([*rm, *ids], check=False, capture_output=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired):
            pass


# --- targets -------------------------------------------------------------------------

def targets(res: dict[str, object]) -> list[dict[str, object]]:
    wt = res.get("worktree", {})
    big = res.get("big", {})
    ct = res.get("containers", {})
    assert isinstance(wt, dict) and isinstance(big, dict) and isinstance(ct, dict)

    def fig(section: dict, n: int, cmd: str, key: str) -> float | None:  # type: ignore[type-arg]
        per = section.get(n) or section.get(str(n))
        return None if not per or cmd not in per else per[cmd][key]

    rows = [
        ("100 worktree agents: status (with disk)", "< 0.6 s", fig(wt, 100, "status", "median"), lambda v: v < 0.6),
        ("100 worktree agents: no-op up", "< 0.6 s", fig(wt, 100, "up (no-op)", "median"), lambda v: v < 0.6),
        ("100 worktree agents: gc dry run", "< 1 s", fig(wt, 100, "gc (dry run)", "median"), lambda v: v < 1.0),
        ("100 worktree agents: sync, nothing new", "< 1 s", fig(wt, 100, "sync", "median"), lambda v: v < 1.0),
        ("100 worktree agents: down of all / plain loop", "<= 0.8x", fig(wt, 100, "down", "ratio"), lambda v: v <= 0.8),
        ("100 worktree agents: up / sequential worktree add", "<= 0.7x", fig(wt, 100, "up", "ratio"), lambda v: v <= 0.7),
        (f"{res.get('big_agents')} agents on {res.get('big_files')} files: status / git status + du", "<= 1.3x", (big.get("status") or {}).get("ratio"), lambda v: v <= 1.3),
        ("50 containers: up / bare starts", "<= 0.8x", fig(ct, 50, "up", "ratio"), lambda v: v <= 0.8),
        ("50 containers: status", "< 1 s", fig(ct, 50, "status", "median"), lambda v: v < 1.0),
        ("50 containers: down / bare removal", "<= 0.5x", fig(ct, 50, "down", "ratio"), lambda v: v <= 0.5),
    ]
    out = []
    for what, target, value, ok in rows:
        out.append({"target": what, "want": target, "value": value, "met": None if value is None else bool(ok(value))})
    return out


# --- main ------------------------------------------------------------------------------

def counts(text: str) -> list[int]:
    try:
        got = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"not a list of numbers: {text!r}") from None
    if any(n < 0 for n in got):
        raise SystemExit(f"negative number in {text!r}")
    return [n for n in got if n > 0]


def main() -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", type=Path, default=HERE, help="the hybridiso checkout to measure (default: this one)")
    ap.add_argument("--agents", default="10,50,100,200", help="numbers of worktree agents (default 10,50,100,200)")
    ap.add_argument("--files", type=int, default=2000, help="files in the repository (default 2000)")
    ap.add_argument("--big-files", type=int, default=12000, help="files in the big repository, 8 agents (0 skips; default 12000)")
    ap.add_argument("--big-agents", type=int, default=8)
    ap.add_argument("--containers", default="10,25,50", help="numbers of container agents (0 skips; default 10,25,50)")
    ap.add_argument("--new-user", type=int, default=150, help="agents in the new user's manifest (0 skips; default 150)")
    ap.add_argument("--image", default=IMAGE)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tmpfs", action="store_true", help="work under /dev/shm (default: $TMPDIR)")
    ap.add_argument("--quick", action="store_true", help="--agents 10,50,100 --containers 10,25 --rounds 1")
    ap.add_argument("--json", action="store_true", help="print all figures as JSON on stdout (progress on stderr)")
    args = ap.parse_args()
    if args.quick:
        args.agents, args.containers, args.rounds = "10,50,100", "10,25", 1
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    if args.json:
        OUT = sys.stderr
    code = args.code.resolve()
    if not (code / "hybridiso" / "__main__.py").is_file():
        raise SystemExit(f"{code} is not a hybridiso checkout (no hybridiso/__main__.py)")
    agent_counts, container_counts = counts(args.agents), counts(args.containers)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    root = Path(tempfile.mkdtemp(prefix="hybridiso-bench-scale-", dir="/dev/shm" if args.tmpfs else None))
    rev = subprocess.run(["git", "-C", str(code), "describe", "--always", "--dirty"], check=False, capture_output=True, text=True).stdout.strip()
    res: dict[str, object] = {
        "code": str(code), "revision": rev, "root": str(root), "tmpfs": args.tmpfs, "cpus": os.cpu_count(),
        "rounds": args.rounds, "files": args.files, "big_files": args.big_files, "big_agents": args.big_agents, "load_start": loadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    say(f"hybridiso at {code} ({rev}); under {root}; {os.cpu_count()} cores; load {loadavg()}")
    say("before each timed phase: sync, then wait (<= 20 s) while I/O pressure is over 0.5 % and falling")
    # the bytecode cache of every module, before anything is timed
    compileall.compile_dir(str(code / "hybridiso"), quiet=1)
    h = Hybridiso(code, root / "state")
    code_status = 0
    try:
        if agent_counts:
            say(f"\nworktree agents on {args.files} files, {args.rounds} round(s)")
            upstream = make_upstream(root / "upstream", args.files)
            wres: dict[int, dict[str, dict[str, object]]] = {}
            res["worktree"] = wres  # filled as it goes: an interrupted run still shows what it measured
            for n in agent_counts:
                names = [f"a{i:03d}" for i in range(n)]
                setup = lambda r, side, names=names, n=n: clone(upstream, root / f"w{n}-r{r}-{side}" / "repo", worktree_manifest(names))  # noqa: E731
                wres[n] = curve("worktree", n, args.rounds, worktree_phases(h, names), setup)
            print_curve(f"worktree agents, {args.files} files: median of {args.rounds} (hybridiso, ms per agent, plain, ratio)", wres)
        if args.big_files > 0:
            say(f"\n{args.big_agents} agents on {args.big_files} files, {args.rounds} round(s)")
            res["big"] = big_status(h, root, args.big_files, args.big_agents, args.rounds)
            if res["big"]:
                print_curve(f"{args.big_agents} agents on {args.big_files} files", {args.big_agents: res["big"]})  # type: ignore[dict-item]
        if container_counts:
            image = ensure_image(args.image)
            if image:
                say(f"\ncontainer agents ({image}, repository of 200 files), {args.rounds} round(s)")
                small = make_upstream(root / "c-upstream", 200)
                cres: dict[int, dict[str, dict[str, object]]] = {}
                res["containers"] = cres
                for n in container_counts:
                    names = [f"c{i:03d}" for i in range(n)]
                    setup = lambda r, side, names=names, n=n: clone(small, root / f"c{n}-r{r}-{side}" / "repo", container_manifest(names, image))  # noqa: E731
                    cres[n] = curve("containers", n, args.rounds, container_phases(h, names, image), setup, interleave=False, after_round=docker_cleanup)
                print_curve(f"container agents: median of {args.rounds} (hybridiso, ms per agent, bare docker, ratio)", cres)
        if args.new_user > 0:
            n = args.new_user
            say(f"\nthe new user's try: {n} worktree agents on {args.files} files, {args.rounds} round(s)")
            upstream = root / "upstream"
            if not upstream.exists():
                make_upstream(upstream, args.files)
            names = [f"u{i:03d}" for i in range(n)]
            res["new_user"] = {n: curve(
                "new user", n, args.rounds, worktree_phases(h, names, new_user=True),
                lambda r, side: clone(upstream, root / f"u-r{r}-{side}" / "repo", worktree_manifest(names)),
            )}
            print_curve("the new user's try", res["new_user"])  # type: ignore[arg-type]
    except KeyboardInterrupt:
        say("\ninterrupted: cleaning up")
        code_status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the cleanup
        docker_cleanup()
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    res["load_end"] = loadavg()
    res["settle_seconds"] = round(SETTLED[0], 1)
    say(f"\nwaited {SETTLED[0]:.0f} s in all for I/O pressure to settle before timed phases")
    res["targets"] = targets(res)
    say(f"\nissue 15's targets (load at start {res['load_start']}, at end {res['load_end']}):")
    for t in res["targets"]:  # type: ignore[attr-defined]
        v = t["value"]
        shown = "not measured" if v is None else (f"{v:.2f}x" if "x" in t["want"] else f"{v:.2f} s")
        verdict = "-" if t["met"] is None else ("met" if t["met"] else "MISSED")
        say(f"  {t['target']:<55} {t['want']:>8}  {shown:>13}  {verdict}")
    if args.json:
        print(json.dumps(res, indent=1, default=str))
    return code_status


if __name__ == "__main__":
    raise SystemExit(main())
