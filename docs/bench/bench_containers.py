#!/usr/bin/env python3
"""Benchmark: startup of container agents, hybridiso vs bare Docker, same run.

    python docs/bench/bench_containers.py [--image hybridiso-test/busybox:1] [--rounds 5] [--agents 8]

1. One agent, request to ready (HTTP answers on its leased port):
   - bare:      `git worktree add` + `docker run -d` with the same mounts,
                user, limits and published port, then poll until HTTP answers;
   - hybridiso: `hybridiso up` (worktree, env file, compose file, compose up),
                then poll until HTTP answers.
   Both alternate order each round; the ratio of medians is hybridiso's
   overhead (target: under 1.20).
2. `hybridiso up` of N container agents, with the time each took to be ready.

The image must exist locally (there is no registry here); the default is the
busybox image the test suite builds (python -m tests.support.images).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

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


def bare(repo: Path, image: str, i: int) -> float:
    wt = repo.parent / f"bare{i}"
    port = free_port()
    common = str(repo / ".git")
    t = time.perf_counter()
    sh("git", "worktree", "add", "-q", "-b", f"bare{i}", str(wt), "main", cwd=repo)
    cid = sh(
        "docker", "run", "-d", "--label", f"{LABEL}=1", "--init", "--security-opt", "no-new-privileges:true",
        "--cpus", "0.5", "--memory", "128m", "--pids-limit", "64", "-u", f"{os.getuid()}:{os.getgid()}",
        "-v", f"{wt}:{wt}", "-v", f"{common}:{common}", "-w", str(wt), "-p", f"127.0.0.1:{port}:{port}",
        image, "httpd", "-f", "-p", str(port), "-h", ".",
    ).strip()
    wait_http(port)
    elapsed = time.perf_counter() - t
    sh("docker", "rm", "-f", cid)
    sh("git", "worktree", "remove", "--force", str(wt), cwd=repo)
    sh("git", "branch", "-D", f"bare{i}", cwd=repo)
    return elapsed


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
    hybridiso(repo, "up")
    port = json.loads(hybridiso(repo, "status", "--json", "--no-disk"))[0]["ports"]["web"]
    wait_http(port)
    elapsed = time.perf_counter() - t
    hybridiso(repo, "down")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="hybridiso-test/busybox:1")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--agents", type=int, default=8)
    args = ap.parse_args()
    if subprocess.run(["docker", "image", "inspect", args.image], capture_output=True).returncode != 0:
        raise SystemExit(f"image {args.image} is not here: build it first (python -c 'from tests.support.images import ensure_busybox_image as e; e()')")
    root = Path(tempfile.mkdtemp(prefix="hybridiso-bench-c-"))
    try:
        repo = make_repo(root)
        (repo / "hybridiso.yaml").write_text(manifest(args.image, ["one"], free_port()))
        hybridiso(repo, "up")  # warm-up: image layers and compose plugin in the page cache
        hybridiso(repo, "down")
        b, h = [], []
        for r in range(args.rounds):
            if r % 2 == 0:
                b.append(bare(repo, args.image, r))
                h.append(ours(repo))
            else:
                h.append(ours(repo))
                b.append(bare(repo, args.image, r))
            print(f"round {r + 1}: bare docker run {b[-1]:.2f}s | hybridiso up {h[-1]:.2f}s")
        mb, mh = statistics.median(b), statistics.median(h)
        print(f"one agent, request to HTTP answering (median of {args.rounds}): bare {mb:.2f}s, hybridiso {mh:.2f}s, ratio {mh / mb:.2f} (target < 1.20)")
        floor = []
        for _ in range(5):
            t = time.perf_counter()
            hybridiso(repo, "--version")
            floor.append(time.perf_counter() - t)
        print(f"  of which one hybridiso process start (python -m hybridiso --version): {statistics.median(floor):.2f}s")

        names = [f"c{i}" for i in range(args.agents)]
        (repo / "hybridiso.yaml").write_text(manifest(args.image, names, free_port()))
        t = time.perf_counter()
        hybridiso(repo, "up")
        total = time.perf_counter() - t
        state = json.loads((repo / ".git" / "hybridiso" / "state.json").read_text())["agents"]
        print(f"hybridiso up of {args.agents} container agents: {total:.2f}s wall")
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
