#!/usr/bin/env python3
"""Benchmark: the git reads gc's merged detection and land make per agent,
three ways, in the same run (issue 14 item 6).

    pip install GitPython        # only this script needs it
    python docs/bench/bench_gitpython.py [--branches 10,50,100] [--rounds 5] [--tmpfs]

A repository made with `git fast-import`: 2,000 files, 60 commits of
history, then N agent branches (`hybridiso/bNNN`), each two commits adding
files of its own, forked from main as it was then; after each, main moves on
by one commit and then takes the branch: a merge commit (2 in 5), a squash
commit (2 in 5), or not at all (1 in 5: unmerged work).  For every branch the
same questions are asked and answered:

  tip       the branch's commit
  ancestor  is the tip an ancestor of main? (merged by ancestry)
  mergebase merge-base(main, tip): where it forked
  count     commits fork..tip
  commits   each of those commits: message, parents, tree
  paths     paths changed fork..tip (a tree diff)
  patchids  `git patch-id --stable` of each of those commits

(a) hybridiso today: hybridiso.git's functions, one git process per question
    (patch-ids: `git log -p` piped into `git patch-id`, two);
(b) GitPython's Repo: object reads (commits, trees) through its one persistent
    `git cat-file --batch`; the questions GitPython answers by running git
    anyway are marked "spawns" in the table (is_ancestor, merge_base,
    iter_commits' rev-list, Commit.diff's diff-tree, and everything patch-id);
    `paths` is also measured as a pure-Python tree diff over cat-file;
(c) batched plain git: a handful of processes for all N branches
    (`for-each-ref` with `%(ahead-behind:main)`, one `log --boundary` whose
    parents give every fork, one `diff-tree --stdin`, one `log -p | patch-id`).

The answers of the three ways are compared (the script stops if they differ).
Medians of --rounds (ways alternate order per round), in seconds for all N
branches, and the ratio to (a).  Not a test; docs/benchmarks.md has the figures.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's hybridiso

from hybridiso import git as hgit

ENV = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@example.invalid",
       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@example.invalid"}
READS = ["tip", "ancestor", "mergebase", "count", "commits", "paths", "patchids"]
Answers = dict[str, dict[str, Any]]  # read -> branch -> answer


def sh(*argv: str, cwd: Path, input: str | None = None) -> str:
    return subprocess.run(argv, cwd=cwd, env=ENV, check=True, capture_output=True, text=True, input=input).stdout


# --- the repository ----------------------------------------------------------


def make_repo(path: Path, n: int, files: int = 2000, history: int = 60) -> list[str]:
    path.mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=path)
    out: list[str] = []
    mark = 0
    when = 1_700_000_000

    def data(text: str) -> None:
        raw = text.encode()
        out.append(f"data {len(raw)}\n{text}\n")

    def commit(ref: str, msg: str, changes: list[tuple[str, str]], parent: int | None = None, merge: int | None = None) -> int:
        nonlocal mark, when
        mark += 1
        when += 60
        out.append(f"commit {ref}\nmark :{mark}\ncommitter bench <b@example.invalid> {when} +0000\n")
        data(msg)
        if parent is not None:
            out.append(f"from :{parent}\n")
        if merge is not None:
            out.append(f"merge :{merge}\n")
        for name, text in changes:
            out.append(f"M 100644 inline {name}\n")
            data(text)
        return mark

    main = commit("refs/heads/main", "files", [(f"pkg{i % 40:02d}/mod{i:05d}.py", f"VALUE = {i}\n" + "x = 1\n" * (i % 30)) for i in range(files)])
    for h in range(history):
        main = commit("refs/heads/main", f"history {h}", [(f"pkg{h % 40:02d}/mod{h:05d}.py", f"VALUE = {h}\n# changed {h}\n")], main)
    branches = []
    for b in range(n):
        name = f"hybridiso/b{b:03d}"
        one = [(f"agents/b{b:03d}/one.txt", f"one of {b}\n")]
        two = [(f"agents/b{b:03d}/two.txt", f"two of {b}\n"), (f"pkg{b % 40:02d}/mod{1000 + b:05d}.py", f"VALUE = {b}\n# by agent\n")]
        c1 = commit(f"refs/heads/{name}", f"b{b:03d}: first\n\nbody of {b}", one, main)
        c2 = commit(f"refs/heads/{name}", f"b{b:03d}: second", two, c1)
        main = commit("refs/heads/main", f"upstream {b}", [(f"pkg{(b + 7) % 40:02d}/mod{b + 100:05d}.py", f"VALUE = {b}\n# upstream\n")], main)
        kind = b % 5
        if kind in (0, 1):
            main = commit("refs/heads/main", f"Merge {name}", one + two, main, merge=c2)
        elif kind in (2, 3):
            main = commit("refs/heads/main", f"{name} (squashed)", one + two, main)
        branches.append(name)
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, env=ENV, check=True, input="".join(out).encode())
    sh("git", "checkout", "-q", "main", cwd=path)
    return branches


# --- (a) hybridiso today: one git process per question ---------------------------


def way_hybridiso(repo: Path, branches: list[str], base: str) -> tuple[Answers, dict[str, float]]:
    ans: Answers = {r: {} for r in READS}
    t: dict[str, float] = {r: 0.0 for r in READS}

    def step(read: str, b: str, fn: Callable[[], Any]) -> Any:
        s = time.perf_counter()
        v = fn()
        t[read] += time.perf_counter() - s
        ans[read][b] = v
        return v

    for b in branches:
        tip = step("tip", b, lambda: hgit.branch_commit(repo, b))
        step("ancestor", b, lambda: hgit.is_ancestor(repo, tip, base))
        fork = step("mergebase", b, lambda: hgit.merge_base(repo, base, tip))
        step("count", b, lambda: hgit.count_commits(repo, fork, tip))

        def commits() -> list[tuple[str, tuple[str, ...], str, str]]:
            r = hgit.run(repo, "log", "--format=%H%x1f%P%x1f%T%x1f%B%x1e", f"{fork}..{tip}")
            return _parse_log(r.stdout)

        step("commits", b, commits)
        step("paths", b, lambda: hgit.changed_paths(repo, fork, tip))

        def patchids() -> dict[str, str]:
            log = hgit.run(repo, "log", "-p", "--no-merges", "--format=commit %H", f"{fork}..{tip}").stdout
            return _parse_patch_ids(hgit._execute(repo, ["patch-id", "--stable"], input=log).stdout)

        step("patchids", b, patchids)
    return ans, t


def _parse_log(text: str) -> list[tuple[str, tuple[str, ...], str, str]]:
    found = []
    for rec in text.split("\x1e"):
        rec = rec.strip("\n")
        if not rec:
            continue
        h, p, tree, msg = rec.split("\x1f", 3)
        found.append((h, tuple(p.split()), tree, msg.rstrip("\n")))
    return found


def _parse_patch_ids(text: str) -> dict[str, str]:
    return {c: p for p, c in (line.split() for line in text.splitlines() if line.strip())}


# --- (b) GitPython -----------------------------------------------------------------


def way_gitpython(repo: Path, branches: list[str], base: str) -> tuple[Answers, dict[str, float]]:
    import git  # GitPython

    ans: Answers = {r: {} for r in READS + ["paths-py"]}
    t: dict[str, float] = {r: 0.0 for r in READS + ["paths-py", "Repo()"]}
    s = time.perf_counter()
    r = git.Repo(repo)
    base_c = r.commit(base)
    t["Repo()"] = time.perf_counter() - s

    def step(read: str, b: str, fn: Callable[[], Any]) -> Any:
        s = time.perf_counter()
        v = fn()
        t[read] += time.perf_counter() - s
        ans[read][b] = v
        return v

    for b in branches:
        tip_c = step("tip", b, lambda: r.commit(f"refs/heads/{b}"))
        tip = tip_c.hexsha
        ans["tip"][b] = tip
        step("ancestor", b, lambda: r.is_ancestor(tip_c, base_c))  # spawns merge-base --is-ancestor
        bases = step("mergebase", b, lambda: r.merge_base(base_c, tip_c))  # spawns merge-base
        fork_c = bases[0] if bases else None
        ans["mergebase"][b] = fork_c.hexsha if fork_c else None
        fork = ans["mergebase"][b]
        step("count", b, lambda: sum(1 for _ in r.iter_commits(f"{fork}..{tip}")))  # spawns rev-list

        def commits() -> list[tuple[str, tuple[str, ...], str, str]]:
            # walk the parents in Python: every read is the persistent cat-file
            found, todo, seen = [], [tip_c], {fork}
            while todo:
                c = todo.pop()
                if c.hexsha in seen:
                    continue
                seen.add(c.hexsha)
                found.append((c.hexsha, tuple(p.hexsha for p in c.parents), c.tree.hexsha, str(c.message).rstrip("\n")))
                todo.extend(c.parents)
            return found

        step("commits", b, commits)
        step("paths", b, lambda: {p for d in fork_c.diff(tip_c) for p in (d.a_path, d.b_path) if p})  # spawns diff-tree
        step("paths-py", b, lambda: _tree_diff(fork_c.tree, tip_c.tree))

        def patchids() -> dict[str, str]:
            log = r.git.log("-p", "--no-merges", "--format=commit %H", f"{fork}..{tip}")  # spawns
            return _parse_patch_ids(r.git.execute(["git", "patch-id", "--stable"], with_extended_output=False, **_stdin(log)))

        step("patchids", b, patchids)
    r.close()
    return ans, t


def _stdin(text: str) -> dict[str, Any]:
    # GitPython's execute() takes istream as a file; a pipe through a temp file is the simplest honest way
    f = tempfile.TemporaryFile()
    f.write(text.encode() + b"\n")
    f.seek(0)
    return {"istream": f}


def _tree_diff(a: Any, b: Any, prefix: str = "") -> set[str]:
    """Paths that differ between trees ``a`` and ``b``, subtrees with equal
    ids skipped: every read is GitPython's persistent cat-file."""
    if a.hexsha == b.hexsha:
        return set()
    ea = {e.name: e for e in a}
    eb = {e.name: e for e in b}
    changed: set[str] = set()
    for name in ea.keys() | eb.keys():
        x, y = ea.get(name), eb.get(name)
        if x is not None and y is not None and x.hexsha == y.hexsha:
            continue
        if x is not None and y is not None and x.type == y.type == "tree":
            changed |= _tree_diff(x, y, prefix + name + "/")
        else:
            for e in (x, y):
                if e is None:
                    continue
                if e.type == "tree":
                    changed |= {prefix + name + "/" + p for p in _all_paths(e)}
                else:
                    changed.add(prefix + name)
    return changed


def _all_paths(tree: Any) -> set[str]:
    return {item.path[len(tree.path) + 1:] for item in tree.traverse() if item.type != "tree"}


# --- (c) batched plain git: a few processes for all branches ------------------------


def way_batched(repo: Path, branches: list[str], base: str) -> tuple[Answers, dict[str, float]]:
    ans: Answers = {r: {} for r in READS}
    t: dict[str, float] = {r: 0.0 for r in READS}
    want = set(branches)

    s = time.perf_counter()  # tip, ancestor and count: ONE for-each-ref
    r = hgit.run(repo, "for-each-ref", f"--format=%(refname:lstrip=2) %(objectname) %(ahead-behind:{base})", "refs/heads/hybridiso/")
    rows = [line.split() for line in r.stdout.splitlines()]
    tips = {name: oid for name, oid, _, _ in rows if name in want}
    ahead = {name: int(a) for name, _, a, _ in rows if name in want}
    el = time.perf_counter() - s
    for read in ("tip", "ancestor", "count"):
        t[read] = el / 3
    for b in branches:
        ans["tip"][b] = tips[b]
        ans["ancestor"][b] = ahead[b] == 0

    s = time.perf_counter()  # forks and commits: ONE log of everything not in base, with its boundary
    r = hgit.run(repo, "log", "--boundary", "--format=%m%H%x1f%P%x1f%T%x1f%B%x1e", *tips.values(), f"^{base}")
    info: dict[str, tuple[tuple[str, ...], str, str]] = {}
    boundary: set[str] = set()
    for rec in r.stdout.split("\x1e"):
        rec = rec.strip("\n")
        if not rec:
            continue
        mark, rec = rec[0], rec[1:]
        h, p, tree, msg = rec.split("\x1f", 3)
        if mark == "-":
            boundary.add(h)
        else:
            info[h] = (tuple(p.split()), tree, msg.rstrip("\n"))
    forks: dict[str, str | None] = {}
    own: dict[str, list[str]] = {}
    for b in branches:
        tip = tips[b]
        if tip not in info:  # in base already: it is its own merge base, nothing of its own
            forks[b], own[b] = tip, []
            continue
        found, todo, seen, fork = [], [tip], set(), None
        while todo:
            c = todo.pop()
            if c in seen:
                continue
            seen.add(c)
            if c in info:
                found.append(c)
                todo.extend(info[c][0])
            else:
                fork = c  # a boundary commit: in base (one per branch here: linear branches)
        forks[b], own[b] = fork, found
    el = time.perf_counter() - s
    t["mergebase"], t["commits"] = el / 2, el / 2
    for b in branches:
        ans["mergebase"][b] = forks[b]
        ans["count"][b] = len(own[b])
        ans["commits"][b] = [(h, info[h][0], info[h][1], info[h][2]) for h in own[b]]

    s = time.perf_counter()  # changed paths: ONE diff-tree fed every (tip, fork) pair
    pairs = [b for b in branches if forks[b] and forks[b] != tips[b]]
    r = hgit._execute(repo, ["diff-tree", "--stdin", "-r", "--name-only", "--no-renames", "-z"], input="".join(f"{tips[b]} {forks[b]}\n" for b in pairs))
    paths: dict[str, set[str]] = {b: set() for b in branches}
    by_tip = {tips[b]: b for b in pairs}  # each answer starts with the line's first id
    current: str | None = None
    for item in r.stdout.split("\0"):
        if item.strip("\n") in by_tip:
            current = by_tip[item.strip("\n")]
        elif item and current is not None:
            paths[current].add(item)
    t["paths"] = time.perf_counter() - s
    ans["paths"] = dict(paths)

    s = time.perf_counter()  # patch-ids: ONE log -p of every own commit, ONE patch-id
    mine = [h for b in branches for h in own[b]]
    ids: dict[str, str] = {}
    if mine:
        log = hgit._execute(repo, ["log", "-p", "--no-merges", "--no-walk=unsorted", "--format=commit %H", "--stdin"], input="\n".join(mine) + "\n").stdout
        ids = _parse_patch_ids(hgit._execute(repo, ["patch-id", "--stable"], input=log).stdout)
    t["patchids"] = time.perf_counter() - s
    for b in branches:
        ans["patchids"][b] = {h: ids[h] for h in own[b] if h in ids}
    return ans, t


# --- the run ---------------------------------------------------------------------------


def normalise(read: str, v: Any) -> Any:
    if read == "commits":
        return sorted(v)
    if read == "paths":
        return sorted(v)
    return v


def compare(n: int, results: dict[str, Answers]) -> None:
    ref = results["hybridiso"]
    for way, got in results.items():
        for read in READS:
            for b, v in ref[read].items():
                if normalise(read, got[read][b]) != normalise(read, v):
                    raise SystemExit(f"N={n}: {way} answers {read} of {b} differently: {got[read][b]!r} vs {v!r}")
        if "paths-py" in got:
            for b, v in ref["paths"].items():
                if sorted(got["paths-py"][b]) != sorted(v):
                    raise SystemExit(f"N={n}: GitPython's tree diff differs for {b}: {got['paths-py'][b]} vs {v}")


def count_spawns(fn: Callable[[], Any]) -> int:
    """git processes started while ``fn`` runs (children of this process seen in /proc)."""
    import subprocess as sp

    started = 0
    real = sp.Popen.__init__

    def counting(self: Any, *a: Any, **k: Any) -> None:
        nonlocal started
        started += 1
        real(self, *a, **k)

    sp.Popen.__init__ = counting  # type: ignore[method-assign]
    try:
        fn()
    finally:
        sp.Popen.__init__ = real  # type: ignore[method-assign]
    return started


# --- gc --dry-run at N agents: where its git processes go -------------------------


# What --ab runs: hybridiso's resolve_commit and tree_of (the two object
# reads gc makes per agent that GitPython answers without a git process)
# answered by GitPython's Repo instead, one per thread and directory (a Repo
# and its cat-file are not shared between threads), GitPython imported at the
# first call.  Put in place by a sitecustomize module, so hybridiso's code is
# the same in both runs.
GITPYTHON_PATCH = """
import os, threading
from hybridiso import git as _g

_local = threading.local()
_plain_resolve, _plain_tree = _g.resolve_commit, _g.tree_of


def _rev(cwd, rev):
    import git as gitpython

    cache = _local.__dict__.setdefault("repos", {})
    repo = cache.get(os.fspath(cwd))
    if repo is None:
        repo = cache[os.fspath(cwd)] = gitpython.Repo(os.fspath(cwd))
    try:
        return str(repo.rev_parse(rev).hexsha)
    except Exception:
        return None


def resolve_commit(cwd, ref):
    return _plain_resolve(cwd, ref) if ref.startswith("-") else _rev(cwd, ref + "^{commit}")


def tree_of(cwd, rev):
    return _plain_tree(cwd, rev) if rev.startswith("-") else _rev(cwd, rev + "^{tree}")


_g.resolve_commit, _g.tree_of = resolve_commit, tree_of
"""


def gc_bench(root: Path, n: int, rounds: int, ab: bool) -> None:
    """`hybridiso gc` (a dry run) of N worktree agents, half merged with a
    merge commit and half squash-merged: its wall time, and every git
    process it starts, by subcommand (a wrapper first on PATH)."""
    repo = root / "gc-repo"
    repo.mkdir()
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    for i in range(200):
        (repo / f"f{i:03d}.txt").write_text(f"{i}\n")
    names = [f"m{i:02d}" for i in range(n)]
    (repo / "hybridiso.yaml").write_text("version: 1\nbase: main\nagents:\n" + "".join(f"  - name: {a}\n    isolation: worktree\n" for a in names))
    (repo / ".git" / "info" / "exclude").write_text("hybridiso.yaml\n")
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-q", "-m", "files", cwd=repo)
    source = str(Path(__file__).resolve().parents[2])
    env = {**ENV, "PYTHONPATH": source}
    patch = root / "gitpython-patch"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(GITPYTHON_PATCH)
    flagged = {"0": env, "1": {**env, "PYTHONPATH": f"{patch}{os.pathsep}{source}"}}
    hybridiso = [sys.executable, "-m", "hybridiso"]
    subprocess.run([*hybridiso, "up"], cwd=repo, env=env, check=True, capture_output=True)
    for i, a in enumerate(names):
        wt = root / "gc-repo.agents" / a
        for k in ("one", "two"):
            (wt / f"{a}-{k}.txt").write_text(k + "\n")
            sh("git", "add", "-A", cwd=wt)
            sh("git", "commit", "-q", "-m", f"{a} {k}", cwd=wt)
        if i % 2 == 0:
            sh("git", "merge", "-q", "--no-ff", "-m", f"merge {a}", f"hybridiso/{a}", cwd=repo)
        else:
            sh("git", "merge", "-q", "--squash", f"hybridiso/{a}", cwd=repo)
            sh("git", "commit", "-q", "-m", f"squash {a}", cwd=repo)
    walls: dict[str, list[float]] = {"0": [], "1": []}
    cpus: dict[str, list[float]] = {"0": [], "1": []}
    said: dict[str, str] = {}
    for k in range(rounds):
        for flag in ("0", "1") if k % 2 == 0 else ("1", "0"):
            if flag == "1" and not ab:
                continue
            ru = resource.getrusage(resource.RUSAGE_CHILDREN)
            s = time.perf_counter()
            r = subprocess.run([*hybridiso, "gc"], cwd=repo, env=flagged[flag], capture_output=True, text=True)
            walls[flag].append(time.perf_counter() - s)
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus[flag].append(now.ru_utime + now.ru_stime - ru.ru_utime - ru.ru_stime)
            said[flag] = r.stdout
    if ab:
        if said["0"] != said["1"]:
            raise SystemExit(f"gc says different things with GitPython:\n{said['0']}\n---\n{said['1']}")
        g, p_ = statistics.median(walls["0"]), statistics.median(walls["1"])
        print(f"\ngc (dry run) of {n} agents, median of {rounds}: git.py as it is {g:.2f}s "
              f"({', '.join(f'{w:.2f}' for w in walls['0'])}); resolve_commit/tree_of through GitPython {p_:.2f}s "
              f"({', '.join(f'{w:.2f}' for w in walls['1'])}); ratio {p_ / g:.2f}")
        cg, cp = statistics.median(cpus["0"]), statistics.median(cpus["1"])
        print(f"  CPU time (gc and every process it ran): {cg:.2f}s -> {cp:.2f}s, ratio {cp / cg:.2f}")
    walls_plain = walls["0"]
    merged = said["0"].count("merged into")
    wrap, log = root / "gitwrap", root / "gc-git.log"
    wrap.mkdir()
    (wrap / "git").write_text(
        "#!/bin/bash\ns=$EPOCHREALTIME\n"
        "sub=''; skip=0; for a in \"$@\"; do if [ $skip = 1 ]; then skip=0; continue; fi;"
        " case $a in -c|-C) skip=1;; -*) ;; *) sub=$a; break;; esac; done\n"
        # a start line too: GitPython kills its persistent cat-file, which then never logs an end
        f"echo \"start $sub\" >> {log}\n"
        f"{shutil.which('git')} \"$@\"\nrc=$?\n"
        f"echo \"$s $EPOCHREALTIME $sub\" >> {log}\nexit $rc\n"
    )
    (wrap / "git").chmod(0o755)
    if ab:
        subprocess.run([*hybridiso, "gc"], cwd=repo, env={**flagged["1"], "PATH": f"{wrap}:{env['PATH']}"}, capture_output=True, check=True)
        patched = [line.split() for line in log.read_text().splitlines() if line.startswith("start")]
        subs = [c[1] if len(c) > 1 else "?" for c in patched]
        print(f"  with GitPython: {len(patched)} git processes, of them rev-parse {subs.count('rev-parse')}, "
              f"cat-file {subs.count('cat-file')} (GitPython's persistent ones), version {subs.count('version')}")
        log.unlink()
    subprocess.run([*hybridiso, "gc"], cwd=repo, env={**env, "PATH": f"{wrap}:{env['PATH']}"}, capture_output=True, check=True)
    calls = [line.split() for line in log.read_text().splitlines() if not line.startswith("start")]
    count: dict[str, int] = {}
    secs: dict[str, float] = {}
    for c in calls:
        sub = c[2] if len(c) > 2 else "?"
        count[sub] = count.get(sub, 0) + 1
        secs[sub] = secs.get(sub, 0.0) + float(c[1]) - float(c[0])
    print(f"\ngc (dry run) of {n} worktree agents ({merged} found merged): median {statistics.median(walls_plain):.2f}s of {rounds} "
          f"({', '.join(f'{w:.2f}' for w in walls_plain)}); {len(calls)} git processes ({len(calls) / n:.1f} per agent), "
          f"{sum(secs.values()):.2f}s of git wall time summed over gc's 8 threads")
    for sub in sorted(secs, key=lambda k: -secs[k]):
        print(f"  {sub:<14} {count[sub]:>5} ({count[sub] / n:4.1f}/agent) {secs[sub]:7.3f}s {secs[sub] / count[sub] * 1000:6.1f} ms/call")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--branches", default="10,50,100")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tmpfs", action="store_true", help="work under /dev/shm")
    p.add_argument("--gc", type=int, default=0, metavar="N", help="also time `hybridiso gc` of N agents and count its git processes")
    p.add_argument("--ab", action="store_true", help="with --gc: also with resolve_commit/tree_of answered by GitPython (GITPYTHON_PATCH), alternating")
    p.add_argument("--no-reads", action="store_true", help="skip the reads (with --gc)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hybridiso-bench-gitpython-", dir="/dev/shm" if args.tmpfs else None))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    import git as gitpython

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import git"], check=True)
    with_git = time.perf_counter() - t0
    print(f"git {sh('git', '--version', cwd=root).split()[-1]}, GitPython {gitpython.__version__}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, in {root}; `import git` costs {max(0.0, with_git - bare) * 1000:.0f} ms of a process start", flush=True)
    ways = {"hybridiso": way_hybridiso, "gitpython": way_gitpython, "batched": way_batched}
    try:
        if args.gc:
            gc_bench(root, args.gc, args.rounds, args.ab)
        for n in [] if args.no_reads else [int(x) for x in args.branches.split(",")]:
            repo = root / f"repo{n}"
            branches = make_repo(repo, n)
            base = hgit.out(repo, "rev-parse", "main")
            times: dict[str, dict[str, list[float]]] = {w: {} for w in ways}
            for rnd in range(args.rounds):
                order = list(ways) if rnd % 2 == 0 else list(reversed(ways))
                results = {}
                for w in order:
                    s = time.perf_counter()
                    ans, t = ways[w](repo, branches, base)
                    t["total"] = time.perf_counter() - s
                    results[w] = ans
                    for k, v in t.items():
                        times[w].setdefault(k, []).append(v)
                compare(n, results)
            spawns = {w: count_spawns(lambda w=w: ways[w](repo, branches, base)) for w in ways}
            med = {w: {k: statistics.median(v) for k, v in times[w].items()} for w in ways}
            print(f"\nN={n} branches ({sum(1 for b in range(n) if b % 5 < 2)} merged by merge commit, "
                  f"{sum(1 for b in range(n) if b % 5 in (2, 3))} squashed, {sum(1 for b in range(n) if b % 5 == 4)} unmerged); "
                  f"median of {args.rounds}, ms for all N (ratio to hybridiso)")
            print(f"  {'read':<10} {'hybridiso':>10} {'GitPython':>18} {'batched':>16}")
            spawning = {"ancestor", "mergebase", "count", "paths", "patchids"}
            for read in READS + ["paths-py", "Repo()", "total"]:
                h = med["hybridiso"].get(read)
                g = med["gitpython"].get(read)
                c = med["batched"].get(read)

                def cell(v: float | None, ref: float | None = h) -> str:
                    if v is None:
                        return "-"
                    return f"{v * 1000:.1f}" + (f" ({v / ref:.2f})" if ref else "")

                mark = " spawns" if read in spawning else ""
                print(f"  {read:<10} {cell(h):>10} {cell(g) + mark:>18} {cell(c):>16}")
            print(f"  git processes: hybridiso {spawns['hybridiso']}, GitPython {spawns['gitpython']} "
                  f"(plus its one cat-file), batched {spawns['batched']}", flush=True)
            shutil.rmtree(repo)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
