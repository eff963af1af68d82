"""Mutation testing of hybridiso's pure modules and of lifecycle's rollback.

    python docs/bench/mutation.py                   # every target (about 13 min on 2 busy cores)
    python docs/bench/mutation.py names gc-rules    # some of them
    python docs/bench/mutation.py --list            # the targets and the tests each one runs
    python docs/bench/mutation.py --rev 8d17d8c     # the same, on the tree of another commit

Needs ``mutmut==3.8.1`` (pinned in the test extra).  The checkout (its tracked
files and the untracked ones git does not ignore, or with ``--rev`` that
commit's tree) is copied into a temp dir and mutmut works on the copy: the
checkout is never touched, and a run killed half-way leaves no mutant behind.
For each target mutmut mutates one module (``rollback``: the one function of
``envs/lifecycle.py``) and runs only the fast, in-process tests that cover it;
mutmut itself runs, for each mutant, just the tests that reached the mutated
function.  Tests that drive the CLI in a subprocess are left out: mutmut 3
cannot see what a subprocess calls (the CLI-level checks of rollback, the git
lock retry and the rest are the hand-applied mutations of docs/mutation.md).

Prints per target: mutants, killed, survived, no test (no selected test
reaches the function), timeout, and each survivor's diff (``--no-diffs``
leaves them out); ``--json FILE`` writes it all.  The figures and why the
remaining survivors stay are in docs/mutation.md.  Not collected by pytest
(it lives outside tests/).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    name: str
    module: str  # the file mutmut mutates
    tests: tuple[str, ...]  # pytest node ids or files
    function: str = ""  # mutate only this top-level function's lines
    in_process_only: bool = False  # of ``tests``, only the test functions that run no CLI subprocess

    def describe(self) -> str:
        where = f"{self.module}::{self.function}" if self.function else self.module
        return f"{self.name}: {where} <- {' '.join(self.tests)}{' (in-process tests only)' if self.in_process_only else ''}"


TARGETS = (
    Target("planner", "hybridiso/planner.py", ("tests/test_planner.py",)),
    Target("names", "hybridiso/names.py", ("tests/test_names.py",)),
    Target("manifest", "hybridiso/manifest.py", ("tests/test_manifest.py",), in_process_only=True),
    Target("ports", "hybridiso/ports.py", ("tests/test_ports.py",), in_process_only=True),
    Target("state", "hybridiso/state.py", ("tests/test_state.py", "tests/test_forged_records.py"), in_process_only=True),
    Target("gc-rules", "hybridiso/gc/rules.py", ("tests/gc/test_gc.py", "tests/gc/test_rules.py"), in_process_only=True),
    Target("gc-merged", "hybridiso/gc/merged.py", ("tests/gc/test_merged.py",)),
    Target("rollback", "hybridiso/envs/lifecycle.py", ("tests/envs/test_rollback.py",), function="rollback"),
)

# calls that make a test drive the CLI in a subprocess: mutmut cannot follow those
_CLI_CALLS = {"hybridiso", "hybridiso_as_plain_user", "status_json", "checked_run", "Popen", "run_the_story", "gc_json", "gc_finding", "sync_rows"}
_PLACEHOLDER = "tests/test_mutation_placeholder.py"  # for a target none of whose tests exist (--rev of an older tree)

# mutmut 3.8's exit codes of a mutant's test run (mutmut/stats.py)
_STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no test", 33: "no test", 34: "skipped", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"}


def _copy_checkout(dest: Path, rev: str | None) -> None:
    dest.mkdir(parents=True)
    if rev is not None:
        archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=CHECKOUT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=CHECKOUT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = CHECKOUT / rel
        if not src.is_file() or src.is_symlink():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _in_process_tests(root: Path, spec: str) -> list[str]:
    """The test functions of ``spec`` (a file) whose bodies call none of
    ``_CLI_CALLS``."""
    tree = ast.parse((root / spec).read_text())
    picked = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test"):
            continue
        called = {
            (c.func.id if isinstance(c.func, ast.Name) else c.func.attr if isinstance(c.func, ast.Attribute) else "")
            for c in ast.walk(node)
            if isinstance(c, ast.Call)
        }
        if not called & _CLI_CALLS:
            picked.append(f"{spec}::{node.name}")
    return picked


def _test_ids(root: Path, target: Target) -> list[str]:
    ids: list[str] = []
    for spec in target.tests:
        if not (root / spec.split("::")[0]).is_file():
            continue  # not in this tree (--rev)
        if target.in_process_only and "::" not in spec:
            ids += _in_process_tests(root, spec)
        else:
            ids.append(spec)
    return ids


@dataclass
class Result:
    target: str
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    tests: int = 0
    survivors: list[dict[str, str]] = field(default_factory=list)

    def line(self) -> str:
        c = self.counts
        total = sum(c.values())
        killed = c.get("killed", 0) + c.get("timeout", 0)
        score = 100.0 * killed / total if total else 0.0
        return (
            f"{self.target:<10} {total:>4} mutants {c.get('killed', 0):>4} killed {c.get('survived', 0):>4} survived "
            f"{c.get('no test', 0):>4} no test {c.get('timeout', 0):>3} timeout  {score:5.1f}% killed  "
            f"({self.tests} test selections, {self.seconds:.0f}s)"
            + "".join(f"  {n} {k}" for k, n in sorted(c.items()) if k not in ("killed", "survived", "no test", "timeout"))
        )


def _mutmut(root: Path, python: str, *args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONDONTWRITEBYTECODE="1", TERM="dumb")
    if log is None:
        return subprocess.run([python, "-m", "mutmut", *args], check=False, cwd=root, env=env, capture_output=True, text=True)
    with log.open("w") as out:
        return subprocess.run([python, "-m", "mutmut", *args], check=False, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


def run_target(root: Path, target: Target, python: str, diffs: bool) -> Result:
    shutil.rmtree(root / "mutants", ignore_errors=True)
    ids = _test_ids(root, target)
    if not ids:
        (root / _PLACEHOLDER).write_text("def test_placeholder() -> None:\n    pass\n")
        ids = [_PLACEHOLDER]
    selection = "\n    ".join(ids)
    (root / "setup.cfg").write_text(
        "[mutmut]\nsource_paths=hybridiso\n"
        f"only_mutate={target.module}\n"
        f"pytest_add_cli_args_test_selection=\n    {selection}\n"
        "also_copy=\n    templates\n    compose\n"
    )
    dotted = target.module.removesuffix(".py").replace("/", ".")
    prefix = f"{dotted}.x_{target.function}__mutmut_" if target.function else ""
    log = root / f"mutmut-{target.name}.log"
    started = time.monotonic()
    _mutmut(root, python, "run", *([prefix + "*"] if prefix else []), log=log)
    result = Result(target.name, seconds=time.monotonic() - started, tests=len(ids))
    meta = root / "mutants" / f"{target.module}.meta"
    if not meta.is_file():
        raise SystemExit(f"mutmut made no results for {target.name}; its output:\n{log.read_text()[-4000:]}")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    for key, code in sorted(codes.items(), key=lambda kv: (kv[0].rsplit("_", 1)[0], int(kv[0].rsplit("_", 1)[1]))):
        if prefix and not key.startswith(prefix):
            continue
        status = _STATUS.get(code, "not checked" if code is None else f"exit {code}")
        result.counts[status] = result.counts.get(status, 0) + 1
        if status == "survived":
            entry = {"mutant": key}
            if diffs:
                shown = _mutmut(root, python, "show", key).stdout
                entry["diff"] = "\n".join(x for x in shown.splitlines() if x.startswith(("-", "+")) and not x.startswith(("---", "+++")))
            result.survivors.append(entry)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"some of: {', '.join(t.name for t in TARGETS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="print the targets and their tests, run nothing")
    parser.add_argument("--rev", help="mutate and test the tree of this commit instead of the checkout")
    parser.add_argument("--no-diffs", action="store_true", help="do not print each survivor's diff")
    parser.add_argument("--json", metavar="FILE", help="also write the figures and survivors as JSON")
    parser.add_argument("--python", default=sys.executable, help="the interpreter with mutmut, pytest and hybridiso's dependencies")
    args = parser.parse_args()
    unknown = set(args.targets) - {t.name for t in TARGETS}
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    chosen = [t for t in TARGETS if not args.targets or t.name in args.targets]
    if args.list:
        for t in chosen:
            print(t.describe())
        return 0
    if subprocess.run([args.python, "-c", "import mutmut"], check=False, capture_output=True).returncode != 0:
        parser.error(f"{args.python} has no mutmut: pip install mutmut==3.8.1 (or: pip install -e '.[test]')")
    results = []
    with tempfile.TemporaryDirectory(prefix="hybridiso-mutation-") as tmp:
        root = Path(tmp) / "checkout"
        _copy_checkout(root, args.rev)
        for target in chosen:
            print(f"... {target.describe()}", file=sys.stderr, flush=True)
            result = run_target(root, target, args.python, diffs=not args.no_diffs)
            print(result.line(), flush=True)
            results.append(result)
    for r in results:
        for s in r.survivors:
            print(f"\n{s['mutant']}")
            if "diff" in s:
                print(s["diff"])
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
