"""``hybridiso demo``: the main job on a sample repository, start to finish.

Creates a sample repository in a temporary directory, writes a manifest with
agents of each strategy this machine can run, runs ``plan``, ``up``,
``status`` and the cost report, then removes everything (unless ``--keep``).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hybridiso import output
from hybridiso.commands.common import int_in

HELP = "run the whole lifecycle on a throwaway sample repository"

MANIFEST = """\
version: 1
base: main
labels: {{dev.hybridiso.demo: "1"}}   # on every Docker object, so demo leftovers are easy to find
defaults:
  include: [".env"]
  setup: ["echo installed > .setup-done"]
agents:
  - name: ui
    ports: [web]
  - name: api
    ports: [web]
  - name: rewriter
    workload: {{needs: [own-refs]}}   # auto -> clone
{extra}"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help=HELP, description=HELP + ". Nothing outside a temp dir is touched.")
    p.add_argument("--files", type=int_in(1, 1_000_000), default=2000, metavar="N", help="files in the sample repository (default 2000)")
    p.add_argument("--keep", action="store_true", help="keep the sample repository and its environments")
    p.add_argument("--no-report", action="store_true", help="skip the comparative cost report")
    p.add_argument("--image", help="also run a container agent from this local image (needs Docker)")


CONTAINER_AGENT = """\
  - name: web
    isolation: container
    image: {image}
    command: ["sh", "-c", "sleep 3600"]
    ports: [web]
    resources: {{cpus: 0.5, memory: 256m}}
"""


def _sample_repo(root: Path, files: int, image: str | None) -> Path:
    repo = root / "sample-shop"
    repo.mkdir()
    git = ["git", "-c", "user.name=hybridiso demo", "-c", "user.email=demo@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    for i in range(files):
        d = repo / "src" / f"module{i % 40:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"part{i:05d}.py").write_text(f'"""Part {i} of the sample shop."""\nPRICE = {i % 97}\n')
    (repo / ".gitignore").write_text(".env\n.setup-done\n")
    (repo / ".env").write_text("SHOP_SECRET=not-a-real-secret\n")
    (repo / "hybridiso.yaml").write_text(MANIFEST.format(extra=CONTAINER_AGENT.format(image=image) if image else ""))
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "sample shop"], cwd=repo, check=True)
    return repo


def _step(repo: Path, *args: str) -> None:
    output.message(f"\n$ hybridiso {' '.join(args)}")
    code = subprocess.call([sys.executable, "-m", "hybridiso", *args], cwd=repo)
    if code != 0:
        raise SystemExit(code)


def run(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="hybridiso-demo-"))
    try:
        repo = _sample_repo(root, args.files, args.image)
        output.message(f"sample repository with {args.files} files: {repo}")
        _step(repo, "plan")
        _step(repo, "up")
        _step(repo, "status")
        _step(repo, "exec", "ui", "--", "sh", "-c", 'echo "ui sees PORT_WEB=$PORT_WEB in $PWD"')
        if not args.keep:
            _step(repo, "down")
        if not args.no_report:
            # last, so the comparison is what the demo leaves on screen
            _step(repo, "report", "--compare", "2", *(["--image", args.image] if args.image else []))
    finally:
        if args.keep:
            output.message(f"\nkept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0
