#!/usr/bin/env python3
"""Benchmark: startup of container agents, hybridiso vs bare Docker, same run.

    python docs/bench/bench_containers.py [--image hybridiso-test/busybox:1] [--rounds 5] [--agents 8]

1. One agent, request to ready (HTTP answers on its leased port):
   - bare:      `git worktree add` + `docker run -d` with the same mounts,
                user, limits and published port, then poll until HTTP answers;
   - bare+net:  the same plus `docker network create`, i.e. the isolation
                hybridiso gives every agent (its own network);
   - hybridiso: `hybridiso up --json` (worktree, env file, compose file,
                the engine calls it translates to, git probe), then poll
                until HTTP answers.
   All alternate order each round; the ratio of medians against bare is
   hybridiso's overhead (target: under 1.20).  The floor of one hybridiso
   process (`--version`) is printed too, so the overhead can be split into
   its parts, and one `docker compose up` of the rendered file: what starting
   it through Compose (hybridiso's way for agents with services) costs.
2. N agents: `hybridiso up` of N container agents (with the time each took
   to be ready) against N sequential bare+net starts, same run.

The image must exist locally (there is no registry here); the default is the
busybox image the test suite builds (python -m tests.support.images).

    python docs/bench/bench_containers.py --against ../main [--rounds 12] [--agents 8]

compares this checkout's code with another checkout's instead, alternating
round by round on one repository: the wall time of `hybridiso up` and its CPU
time (the process and the git it runs), which stays comparable on a busy
machine where wall times do not.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# hybridiso runs here as an installed user runs it: with Python's bytecode
# cache (some CI images set PYTHONDONTWRITEBYTECODE, which would make every
# run recompile the package and charge that to hybridiso)
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

LABEL = "dev.hybridiso.bench"


def sh(*argv: str, cwd: Path | None = None) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=1).read()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing answered on port {port}")


def make_repo(root: Path) -> Path:
    repo = root / "site"
    repo.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    (repo / "index.html").write_text("hello\n")
    for i in range(200):
        (repo / f"page{i}.html").write_text(f"page {i}\n")
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=b", "-c", "user.email=b@x", "commit", "-q", "-m", "site", cwd=repo)
    return repo


def bare(repo: Path, image: str, i: int, network: bool = False, wait: bool = True) -> float:
    wt = repo.parent / f"bare{i}"
    port = free_port()
    common = str(repo / ".git")
    t = time.perf_counter()
    sh("git", "worktree", "add", "-q", "-b", f"bare{i}", str(wt), "main", cwd=repo)
    net: list[str] = []
    if network:
        sh("docker", "network", "create", "--label", f"{LABEL}=1", f"bench-net{i}")
        net = ["--network", f"bench-net{i}"]
    cid = sh(
        "docker", "run", "-d", "--label", f"{LABEL}=1", "--init", "--security-opt", "no-new-privileges:true", *net,
        "--cpus", "0.5", "--memory", "128m", "--pids-limit", "64", "-u", f"{os.getuid()}:{os.getgid()}",
        "-v", f"{wt}:{wt}", "-v", f"{common}:{common}", "-w", str(wt), "-p", f"127.0.0.1:{port}:{port}",
        image, "httpd", "-f", "-p", str(port), "-h", ".",
    ).strip()
    if wait:
        wait_http(port)
    elapsed = time.perf_counter() - t
    if wait:
        cleanup_bare(repo, [i])
    return elapsed


def cleanup_bare(repo: Path, indexes: list[int]) -> None:
    ids = sh("docker", "ps", "-aq", "--filter", f"label={LABEL}").split()
    if ids:
        sh("docker", "rm", "-f", *ids)
    for i in indexes:
        subprocess.run(["docker", "network", "rm", f"bench-net{i}"], capture_output=True)
        sh("git", "worktree", "remove", "--force", str(repo.parent / f"bare{i}"), cwd=repo)
        sh("git", "branch", "-D", f"bare{i}", cwd=repo)


def manifest(image: str, names: list[str], lo: int) -> str:
    agents = "".join(
        f"  - name: {n}\n    isolation: container\n    image: {image}\n"
        f'    command: ["httpd", "-f", "-p", "${{PORT_WEB}}", "-h", "."]\n    ports: [web]\n'
        f"    resources: {{cpus: 0.5, memory: 128m, pids: 64}}\n"
        for n in names
    )
    return f'version: 1\nlabels: {{{LABEL}: "1"}}\nports: {{range: "{lo}-{lo + 200}"}}\nagents:\n{agents}'


def hybridiso(repo: Path, *args: str) -> str:
    return sh(sys.executable, "-m", "hybridiso", *args, cwd=repo)


def ours(repo: Path) -> float:
    t = time.perf_counter()
    result = json.loads(hybridiso(repo, "up", "--json"))
    wait_http(result[0]["ports"]["web"])
    elapsed = time.perf_counter() - t
    hybridiso(repo, "down")
    return elapsed


def compose_only(repo: Path) -> float:
    """One `docker compose up` of the file hybridiso renders, on its worktree,
    without a hybridiso process around it."""
    hybridiso(repo, "up")
    file = str(next((repo / ".git" / "hybridiso" / "compose").glob("*/compose.yaml")))
    sh("docker", "compose", "-f", file, "down", "-t", "1")
    t = time.perf_counter()
    sh("docker", "compose", "-f", file, "up", "-d")
    elapsed = time.perf_counter() - t
    hybridiso(repo, "down")
    return elapsed


def timed_up(repo: Path, checkout: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one `hybridiso up` run from ``checkout``'s code."""
    env = {**os.environ, "PYTHONPATH": checkout}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hybridiso", "up"], cwd=repo, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"hybridiso up of {checkout} failed:\n{r.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "hybridiso", "down"], cwd=repo, env=env, check=True, capture_output=True)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def against(repo: Path, image: str, other: str, rounds: int, agents: int) -> None:
    here = str(Path(__file__).resolve().parents[2])
    for n in (1, agents):
        (repo / "hybridiso.yaml").write_text(manifest(image, [f"c{i}" for i in range(n)], free_port()))
        for checkout in (here, other):  # warm-up
            timed_up(repo, checkout)
        got: dict[str, list[tuple[float, float]]] = {here: [], other: []}
        for r in range(rounds if n == 1 else max(3, rounds // 2)):
            for checkout in (here, other) if r % 2 == 0 else (other, here):
                got[checkout].append(timed_up(repo, checkout))
        (hw, hc), (ow, oc) = ((statistics.median(w for w, _ in got[c]), statistics.median(u for _, u in got[c])) for c in (here, other))
        print(f"{n} agent(s), median of {len(got[here])}: {other}: wall {ow:.2f}s cpu {oc:.3f}s | this checkout: wall {hw:.2f}s cpu {hc:.3f}s "
              f"| ratio wall {hw / ow:.2f}, cpu {hc / oc:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="hybridiso-test/busybox:1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--against", metavar="CHECKOUT", help="compare this checkout's code with CHECKOUT's (wall and CPU time of up)")
    args = ap.parse_args()
    if subprocess.run(["docker", "image", "inspect", args.image], capture_output=True).returncode != 0:
        raise SystemExit(f"image {args.image} is not here: build it first (python -c 'from tests.support.images import ensure_busybox_image as e; e()')")
    root = Path(tempfile.mkdtemp(prefix="hybridiso-bench-c-"))
    try:
        repo = make_repo(root)
        if args.against:
            against(repo, args.image, str(Path(args.against).resolve()), args.rounds, args.agents)
            return 0
        (repo / "hybridiso.yaml").write_text(manifest(args.image, ["one"], free_port()))
        hybridiso(repo, "up")  # warm-up: image layers and compose plugin in the page cache
        hybridiso(repo, "down")
        b, bn, h = [], [], []
        for r in range(args.rounds):
            runs = [lambda: b.append(bare(repo, args.image, r)), lambda: bn.append(bare(repo, args.image, r, network=True)), lambda: h.append(ours(repo))]
            for run in runs[r % 3:] + runs[: r % 3]:  # rotate who goes first
                run()
            print(f"round {r + 1}: bare docker run {b[-1]:.2f}s | bare + own network {bn[-1]:.2f}s | hybridiso up {h[-1]:.2f}s")
        mb, mbn, mh = statistics.median(b), statistics.median(bn), statistics.median(h)
        print(f"one agent, request to HTTP answering (median of {args.rounds}): bare {mb:.2f}s, bare + own network {mbn:.2f}s, hybridiso {mh:.2f}s")
        print(f"  ratio hybridiso / bare docker run: {mh / mb:.2f} (target < 1.20); hybridiso / bare + own network: {mh / mbn:.2f}")
        floor = []
        for _ in range(5):
            t = time.perf_counter()
            hybridiso(repo, "--version")
            floor.append(time.perf_counter() - t)
        print(f"  parts: one hybridiso process start (--version) {statistics.median(floor):.2f}s; "
              f"one `docker compose up` of the rendered file (not used for one container) {statistics.median([compose_only(repo) for _ in range(3)]):.2f}s")

        names = [f"c{i}" for i in range(args.agents)]
        (repo / "hybridiso.yaml").write_text(manifest(args.image, names, free_port()))
        t = time.perf_counter()
        for i in range(args.agents):
            bare(repo, args.image, 100 + i, network=True, wait=False)
        bare_n = time.perf_counter() - t
        cleanup_bare(repo, [100 + i for i in range(args.agents)])
        t = time.perf_counter()
        hybridiso(repo, "up")
        total = time.perf_counter() - t
        state = json.loads((repo / ".git" / "hybridiso" / "state.json").read_text())["agents"]
        print(f"{args.agents} agents: {args.agents} sequential bare starts (worktree + network + docker run) {bare_n:.2f}s; "
              f"hybridiso up {total:.2f}s wall; ratio {total / bare_n:.2f}")
        for n in names:
            tm = state[n]["timings"]
            print(f"  {n}: ready after {tm['total']:.2f}s (worktree {tm['create']:.2f}s, container start to running {tm['start']:.2f}s)")
        hybridiso(repo, "down")
    finally:
        ids = sh("docker", "ps", "-aq", "--filter", f"label={LABEL}").split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        for kind in ("network", "volume"):
            ids = sh("docker", kind, "ls", "-q", "--filter", f"label={LABEL}").split()
            if ids:
                subprocess.run(["docker", kind, "rm", *ids], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
