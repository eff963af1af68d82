"""A container agent's own git dir: git inside without the keys to the house
(issue 12, part 1; docs/containers.md#git-inside-the-container).

The host keeps its view: the environment is a linked worktree of the
repository, its ``.git`` file naming a host-owned ``worktrees/<id>/``.  The
container never sees the common git dir.  It gets:

- its own repository, ``<git dir>/hybridiso/containers/<agent>/git``
  (``agent_git_dir``), made by the host before the container exists: on the
  agent branch at the branch's commit, with the host's index of the worktree
  copied in (so ``git status`` inside is clean at once), no hooks, and
  ``objects/info/alternates`` naming the repository's ``objects/``;
- the repository's ``objects/`` bind-mounted READ-ONLY at its own path (what
  the alternates name), so every commit of the repository is there to read;
- a host-owned file (``dotgit``: ``gitdir: <its own git dir>``)
  bind-mounted read-only over ``<env>/.git``.

Work comes back by ``collect``, which never runs git in the agent's
repository and never reads it through a path the agent could swap: with
the agent's containers frozen (``docker pause``), its refs, ``HEAD`` and
stash reflog are read as data (safe_files: no symlink followed, regular
files only, ref names checked), ``objects/`` is checked to hold nothing but
directories and regular files and its ``info/alternates`` is written back to
what hybridiso wrote; then a *shadow* repository that hybridiso owns
(its own config, those refs in its ``packed-refs``, the agent's and the
repository's object directories as alternates) is fetched from in the main
repository, into ``refs/hybridiso/agents/<agent>/``, objects fsck-checked.
The agent branch follows what the agent did to its own branch, and the
host's index of the worktree is reset to it (files untouched), so the
host's ``git status`` shows what is uncommitted.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hybridiso import git, output, safe_files
from hybridiso.envfile import ENV_FILE
from hybridiso.errors import UserError
from hybridiso.env_context import EnvContext
from hybridiso.work.inventory import MainRepo, Tip, WorkReport, closure, describe_commits, newest_tips, plural, ref_label

_ENV_EXCLUDE = f"/{ENV_FILE}"  # as lifecycle.ENV_EXCLUDE (which imports the strategies)
AGENTS_PREFIX = "refs/hybridiso/agents/"
MAX_REFS = 10_000
MAX_STASH = 1_000
MAX_LOGGED = 500  # reflog entries read per log: a detached HEAD's history, not all time
_OID = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_COMPONENT = re.compile(r"^[A-Za-z0-9_+@=,-][A-Za-z0-9._+@=,-]*$")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_DEPTH = 64


def area(ctx: EnvContext) -> Path:
    return ctx.project.store.dir / "containers" / ctx.name


def agent_git_dir(ctx: EnvContext) -> Path:
    return area(ctx) / "git"


def dotgit_file(ctx: EnvContext) -> Path:
    return area(ctx) / "dotgit"


def ref_prefix(ctx: EnvContext) -> str:
    return f"{AGENTS_PREFIX}{ctx.name}/"


def objects_dir(ctx: EnvContext) -> Path:
    return ctx.project.repo.common_dir / "objects"


def _rel(ctx: EnvContext, path: Path) -> Path:
    return path.relative_to(ctx.project.store.anchor)


# --- made by the host, before the container exists ------------------------------------------


def exists(ctx: EnvContext) -> bool:
    return safe_files.is_plain_dir(agent_git_dir(ctx))


def create(ctx: EnvContext) -> None:
    """The agent's own repository, on its branch at the branch's commit, and
    the ``.git`` file the container sees.  Nothing of the agent's exists yet
    (or, upgrading an older environment, its container still has the old
    mounts and is recreated with these): the host may run git in it now."""
    anchor = ctx.project.store.anchor
    safe_files.ensure_dir(anchor, _rel(ctx, area(ctx)), mode=0o700)
    gd = agent_git_dir(ctx)
    if os.path.lexists(gd):
        # a leftover of an environment of the same name that was not removed
        # whole (a kill -9 in down): kept aside, never deleted unread
        aside = area(ctx) / f"git.left-{os.getpid()}-{os.urandom(3).hex()}"
        os.rename(gd, aside)
        output.warn(f"{ctx.name}: an earlier git dir of this agent was left at {aside}; it is kept there")
    commit = git.branch_commit(ctx.project.root, ctx.record.branch) or ctx.record.base_commit
    if not commit:
        raise UserError(f"agent {ctx.name}'s branch {ctx.record.branch} has no commit to start its own repository at")
    _init(gd, ctx.record.branch, commit, objects_dir(ctx))
    admin = git.worktree_admin_dir(ctx.project.repo.common_dir, ctx.path)
    index = safe_files.read_bytes(admin, "index", limit=1 << 30) if admin is not None else None
    if index is not None:
        safe_files.write_atomic(gd, "index", index, mode=0o644)
    # the repository's ignore rules (the env file among them), as a worktree has them
    try:
        exclude = safe_files.read_text(ctx.project.repo.common_dir, "info/exclude") or ""
    except safe_files.UnsafePath:
        exclude = ""
    if _ENV_EXCLUDE not in exclude.splitlines():
        exclude += ("" if not exclude or exclude.endswith("\n") else "\n") + _ENV_EXCLUDE + "\n"
    safe_files.write_atomic(gd, "info/exclude", exclude, mode=0o644, dir_mode=0o755)
    safe_files.write_atomic(anchor, _rel(ctx, dotgit_file(ctx)), f"gitdir: {gd}\n", mode=0o644)
    publish_base(ctx)
    # what it holds now is on the agent branch already: the first collect
    # has nothing to fetch (and freezes nothing)
    safe_files.write_atomic(anchor, _rel(ctx, area(ctx) / "collected"), _fingerprint(ctx, read_refs(gd)) + "\n")


BASE_REMOTE = "host"


def publish_base(ctx: EnvContext, commit: str | None = None) -> None:
    """``refs/remotes/host/<base>`` in the agent's repository: the base the
    host has (so ``git rebase host/main`` works inside).  Written as a file,
    never through a symlink the agent made (then it is left out)."""
    base = ctx.project.manifest.base
    commit = commit or git.resolve_commit(ctx.project.root, base)
    ref = f"refs/remotes/{BASE_REMOTE}/{base}"
    if not commit or not valid_ref(ref) or not exists(ctx):
        return
    try:
        safe_files.write_atomic(agent_git_dir(ctx), ref, commit + "\n", mode=0o644, dir_mode=0o755)
    except (safe_files.UnsafePath, OSError) as e:
        output.warn(f"{ctx.name}: could not show it the base {base} ({e}); its own repository has no {BASE_REMOTE}/{base}")


def _init(gd: Path, branch: str, commit: str, objects: Path) -> None:
    """What ``git init --bare --template=`` makes, with ``core.bare=false``,
    borrowing ``objects`` and on ``branch`` at ``commit`` (its object format
    told by the id's length), written directly: no git process, and the
    directory is new (nothing of anyone else's is in it)."""
    fmt = "sha256" if len(commit) == 64 else "sha1"
    version = 1 if fmt != "sha1" else 0
    config = f"[core]\n\trepositoryformatversion = {version}\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n"
    if fmt != "sha1":
        config += f"[extensions]\n\tobjectformat = {fmt}\n"
    os.mkdir(gd, 0o755)
    for sub in ("objects/info", "objects/pack", "refs/heads", "refs/tags", "info", "logs"):
        os.makedirs(gd / sub, 0o755, exist_ok=True)
    ref = f"refs/heads/{branch}"
    files = {
        "config": config,
        "HEAD": f"ref: {ref}\n",
        "description": "hybridiso: a container agent's own repository\n",
        "objects/info/alternates": f"{objects}\n",
        ref: f"{commit}\n",
    }
    for rel, text in files.items():
        safe_files.write_atomic(gd, rel, text, mode=0o644, dir_mode=0o755)


def hand_over(ctx: EnvContext, uid: int, gid: int) -> None:
    """The agent's repository becomes its uid's (root only: otherwise the
    container runs as the user who made it).  Made by hybridiso just now or
    collected since: walked without following anything."""
    top = os.open(agent_git_dir(ctx), _DIR)
    try:
        os.fchown(top, uid, gid)
        _chown_tree(top, uid, gid, 0)
    finally:
        os.close(top)


def _chown_tree(dfd: int, uid: int, gid: int, depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    for name in os.listdir(dfd):
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, _DIR, dir_fd=dfd)
            except OSError:
                continue
            try:
                _chown_tree(sub, uid, gid, depth + 1)
            finally:
                os.close(sub)


def remove(ctx: EnvContext) -> None:
    """The agent's repository, its ``.git`` file and its collected refs
    (``down``, after its work was judged or saved)."""
    git.delete_refs_under(ctx.project.root, ref_prefix(ctx))
    where = area(ctx)
    if safe_files.is_plain_dir(where):
        shutil.rmtree(where)  # host-owned area; rmtree never follows a symlink inside


# --- bringing work back, without trusting the agent's repository ---------------------------


@dataclass
class AgentRefs:
    refs: dict[str, str] = field(default_factory=dict)  # refs/... -> object id, as the agent's repo has them
    head_ref: str | None = None
    head: str | None = None  # a detached HEAD's commit
    stash: list[str] = field(default_factory=list)  # newest first
    # commits the agent's HEAD reflog reached (a detached HEAD it left), and
    # those its branches' own reflogs held (history rewritten on purpose)
    head_log: list[str] = field(default_factory=list)
    branch_log: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # what was not read (and why)

    def packed(self) -> str:
        """The shadow's ``packed-refs``: the agent's refs under ``own/``,
        its stash entries under ``stash/<n>``, a detached HEAD as ``head``."""
        lines = {f"refs/own/{name.removeprefix('refs/')}": oid for name, oid in self.refs.items() if name != "refs/stash"}
        lines.update({f"refs/stash/{i}": oid for i, oid in enumerate(self.stash)})
        lines.update({f"refs/headlog/{i}": oid for i, oid in enumerate(self.head_log)})
        lines.update({f"refs/branchlog/{i}": oid for i, oid in enumerate(self.branch_log)})
        if self.head:
            lines["refs/head"] = self.head
        return "".join(f"{oid} {name}\n" for name, oid in sorted(lines.items()))


def valid_ref(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) >= 2 and parts[0] == "refs" and len(name) <= 1024
        and all(_COMPONENT.match(p) and not p.endswith(".lock") and ".." not in p for p in parts[1:])
    )


def read_refs(gd: Path) -> AgentRefs:
    """The agent repository's refs, HEAD and stash entries, read as data."""
    found = AgentRefs()
    try:
        packed = safe_files.read_text(gd, "packed-refs") or ""
    except safe_files.UnsafePath as e:
        packed = ""
        found.skipped.append(f"packed-refs: {e.message}")
    for line in packed.splitlines():
        if line.startswith(("#", "^")):
            continue
        oid, _, name = line.partition(" ")
        _take(found, name.strip(), oid.strip())
    try:
        top = os.open(gd, _DIR)
    except OSError:
        return found
    try:
        refs = _open_sub(top, "refs")
        if refs is not None:
            try:
                _walk_refs(found, refs, "refs", 0)
            finally:
                os.close(refs)
    finally:
        os.close(top)
    try:
        head = (safe_files.read_text(gd, "HEAD", limit=4096) or "").strip()
    except safe_files.UnsafePath as e:
        head = ""
        found.skipped.append(f"HEAD: {e.message}")
    if head.startswith("ref: "):
        found.head_ref = head.removeprefix("ref: ").strip()
    elif _OID.match(head):
        found.head = head
    try:
        log = safe_files.read_text(gd, "logs/refs/stash") or ""
    except safe_files.UnsafePath as e:
        log = ""
        found.skipped.append(f"stash reflog: {e.message}")
    entries = [line.split(" ", 2)[1] for line in log.splitlines() if len(line.split(" ", 2)) == 3]
    found.stash = [oid for oid in reversed(entries) if _OID.match(oid) and int(oid, 16) != 0][:MAX_STASH]
    if not found.stash and "refs/stash" in found.refs:
        found.stash = [found.refs["refs/stash"]]
    found.head_log = _logged(gd, "logs/HEAD", found)
    branches = sorted(n for n in found.refs if n.startswith("refs/heads/"))
    seen: set[str] = set()
    for name in branches:
        for oid in _logged(gd, "logs/" + name, found):
            if oid not in seen and len(found.branch_log) < MAX_LOGGED:
                seen.add(oid)
                found.branch_log.append(oid)
    return found


def _logged(gd: Path, rel: str, found: AgentRefs) -> list[str]:
    """Every commit a reflog of the agent's moved to (newest first, at most
    ``MAX_LOGGED``), read as data like its refs."""
    try:
        log = safe_files.read_text(gd, rel) or ""
    except safe_files.UnsafePath as e:
        found.skipped.append(f"{rel}: {e.message}")
        return []
    oids: list[str] = []
    for line in reversed(log.splitlines()):
        fields = line.split(" ", 2)
        if len(fields) == 3 and _OID.match(fields[1]) and int(fields[1], 16) != 0 and fields[1] not in oids:
            oids.append(fields[1])
            if len(oids) >= MAX_LOGGED:
                break
    return oids


def _take(found: AgentRefs, name: str, oid: str) -> None:
    if not _OID.match(oid):
        return
    if not valid_ref(name):
        found.skipped.append(f"ref {name[:80]!r}: not a name hybridiso reads")
        return
    if len(found.refs) < MAX_REFS or name in found.refs:
        found.refs[name] = oid


def _open_sub(dfd: int, name: str) -> int | None:
    try:
        return os.open(name, _DIR, dir_fd=dfd)
    except OSError:
        return None


def _walk_refs(found: AgentRefs, dfd: int, prefix: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        return
    for name in sorted(os.listdir(dfd)):
        full = f"{prefix}/{name}"
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            sub = _open_sub(dfd, name)
            if sub is not None:
                try:
                    _walk_refs(found, sub, full, depth + 1)
                finally:
                    os.close(sub)
        elif stat.S_ISREG(st.st_mode) and not name.endswith(".lock"):
            try:
                fd = os.open(name, _FILE, dir_fd=dfd)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                text = os.read(fd, 200).decode("ascii", "replace").strip()
            finally:
                os.close(fd)
            _take(found, full, text)  # a symbolic ref ("ref: ...") is not followed
        elif stat.S_ISLNK(st.st_mode):
            found.skipped.append(f"ref {full[:80]!r}: a symlink")


def check_objects(ctx: EnvContext) -> list[str]:
    """The agent's ``objects/`` holds directories and regular files only
    (anything else is removed: git never makes it) and its
    ``info/alternates`` names the repository's objects and nothing else
    (written back when it does not).  Returns what was corrected."""
    gd = agent_git_dir(ctx)
    fixed: list[str] = []
    top = os.open(gd, _DIR)
    try:
        _remove_odd(top, "objects", fixed, directory=True)  # a symlink there would lead the shadow anywhere
    finally:
        os.close(top)
    expected = f"{objects_dir(ctx)}\n"
    try:
        current = safe_files.read_text(gd, "objects/info/alternates", limit=4096)
    except safe_files.UnsafePath:
        current = None
    if current != expected:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            with safe_files.open_dir(gd, "objects") as objects:
                _remove_odd(objects, "info", fixed, directory=True)
        safe_files.write_atomic(gd, "objects/info/alternates", expected, mode=0o644, dir_mode=0o755)
        fixed.append("objects/info/alternates")
    try:
        with safe_files.open_dir(gd, "objects") as objects:
            _check_tree(objects, "objects", fixed, 0)
    except (FileNotFoundError, NotADirectoryError, safe_files.UnsafePath):
        pass  # no objects of its own: the shadow borrows none
    for name in ("objects/info/http-alternates",):
        with contextlib.suppress(OSError, safe_files.UnsafePath):
            with safe_files.open_dir(gd, "objects/info") as info:
                os.unlink(Path(name).name, dir_fd=info)
                fixed.append(name)
    return fixed


def _remove_odd(dfd: int, name: str, fixed: list[str], *, directory: bool) -> None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        return
    os.unlink(name, dir_fd=dfd)
    fixed.append(name)


def _check_tree(dfd: int, shown: str, fixed: list[str], depth: int) -> None:
    if depth > 4:  # objects/pack/..., objects/xx/...: git nests no deeper
        return
    for name in os.listdir(dfd):
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            sub = _open_sub(dfd, name)
            if sub is not None:
                try:
                    _check_tree(sub, f"{shown}/{name}", fixed, depth + 1)
                finally:
                    os.close(sub)
        elif not stat.S_ISREG(st.st_mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dfd)
            fixed.append(f"{shown}/{name}")


def _shadow_config(fmt: str) -> str:
    version = 1 if fmt != "sha1" else 0
    text = f"[core]\n\trepositoryformatversion = {version}\n\tbare = true\n\tcommitGraph = false\n\tmultiPackIndex = false\n"
    if fmt != "sha1":
        text += f"[extensions]\n\tobjectformat = {fmt}\n"
    return text


def _write_shadow(ctx: EnvContext, refs: AgentRefs) -> Path:
    """A repository of hybridiso's own, in its own area, that holds the
    agent's refs as it read them and reaches the agent's objects and the
    repository's through alternates: what the host's fetch reads."""
    anchor = ctx.project.store.anchor
    shadow = area(ctx) / f"shadow-{os.getpid()}-{os.urandom(4).hex()}"  # one per collect: two commands may collect at once
    rel = _rel(ctx, shadow)
    safe_files.ensure_dir(anchor, rel / "refs", mode=0o700)
    safe_files.write_atomic(anchor, rel / "HEAD", "ref: refs/own/heads/none\n")
    safe_files.write_atomic(anchor, rel / "config", _shadow_config("sha256" if any(len(oid) == 64 for oid in refs.refs.values()) else "sha1"))
    safe_files.write_atomic(anchor, rel / "objects/info/alternates", f"{agent_git_dir(ctx) / 'objects'}\n{objects_dir(ctx)}\n")
    safe_files.write_atomic(anchor, rel / "packed-refs", refs.packed())
    return shadow


def _fingerprint(ctx: EnvContext, refs: AgentRefs) -> str:
    return hashlib.sha256(f"{agent_git_dir(ctx)}\0{refs.packed()}\0{refs.head_ref}".encode()).hexdigest()


def collect(ctx: EnvContext, freeze: Callable[[], contextlib.AbstractContextManager[object]]) -> bool:
    """Bring what the agent did in its own repository into the main one
    (see the module's docstring); True when its branch moved.  ``freeze``
    stops every process that can write the agent's repository while it is
    read (the container strategy pauses its containers)."""
    gd = agent_git_dir(ctx)
    if not exists(ctx):
        return False
    git.distrust(ctx.path)
    anchor = ctx.project.store.anchor
    marker = _rel(ctx, area(ctx) / "collected")
    refs = read_refs(gd)
    try:
        last = safe_files.read_text(anchor, marker, limit=200)
    except safe_files.UnsafePath:
        last = None
    if last is not None and last.strip() == _fingerprint(ctx, refs):
        return False  # nothing changed since the last time: nothing runs
    root, prefix, branch_ref = ctx.project.root, ref_prefix(ctx), f"refs/heads/{ctx.record.branch}"
    mirrored = f"{prefix}own/heads/{ctx.record.branch}"
    before = {r.name: r.oid for r in git.list_refs(root, mirrored)}.get(mirrored)
    with freeze():
        refs = read_refs(gd)  # what counts is what it holds while nothing of it runs
        fixed = check_objects(ctx)
        shadow = _write_shadow(ctx, refs)
        logged = refs.head_log + refs.branch_log
        if logged:
            # a reflog may name commits the agent's git gc pruned: those are
            # gone already, and would fail the whole fetch
            present = git.existing_commits(shadow, logged)
            refs.head_log = [c for c in refs.head_log if c in present]
            refs.branch_log = [c for c in refs.branch_log if c in present]
            safe_files.write_atomic(ctx.project.store.anchor, _rel(ctx, shadow) / "packed-refs", refs.packed())
        try:
            git.fetch_from_shadow(root, shadow, prefix)
        finally:
            shutil.rmtree(shadow, ignore_errors=True)
    if fixed:
        output.warn(f"{ctx.name}: its git dir had {', '.join(fixed[:3])} changed by the agent; hybridiso put it back before reading it")
    after = {r.name: r.oid for r in git.list_refs(root, mirrored, branch_ref)}
    moved = False
    tip = after.get(mirrored)
    if tip and tip != before and tip != after.get(branch_ref):
        # the agent moved its own branch: the agent branch follows (and only it)
        moved = git.move_ref(root, branch_ref, tip, after.get(branch_ref), f"hybridiso: {ctx.name}'s commits from its container")
        if moved and ctx.path.is_dir():
            git.reset_index(ctx.path)  # the host's status shows what is uncommitted; files untouched
    safe_files.write_atomic(anchor, marker, _fingerprint(ctx, refs) + "\n")
    return moved


# --- what the agent's own refs hold, for down / gc (work/inventory.py) ---------------------------------


def add_work(ctx: EnvContext, main: MainRepo, report: WorkReport) -> None:
    """Refs the agent made in its own repository (other branches, tags, its
    stash entries, a detached HEAD), as collected into
    ``refs/hybridiso/agents/<agent>/``: lost with it, so work."""
    prefix = ref_prefix(ctx)
    mine = {name.removeprefix(prefix): entry for name, entry in main.refs.items() if name.startswith(prefix)}
    if not mine:
        return
    branch_ref = f"refs/heads/{ctx.record.branch}"
    own_branch = f"own/heads/{ctx.record.branch}"
    tips = [e.commit for k, e in mine.items() if e.commit and k != own_branch]
    graph = git.commits_not_in(ctx.project.root, tips, main.safe_tips(branch_ref) + ([t] if (t := main.branch(ctx.record.branch)) else []))
    covered: set[str] = set()
    for key in sorted(k for k in mine if k.startswith("own/") and k != own_branch):
        entry, ref = mine[key], "refs/" + key.removeprefix("own/")
        unique = closure(graph, entry.commit)
        lacks = ref.startswith("refs/tags/") and (ref not in main.refs or main.refs[ref].oid != entry.oid)
        if unique or lacks:
            report.refs.append(ref_label(ref) + (f" ({plural(len(unique), 'commit')})" if unique else "") + " (in its container)")
            report.tips.append(Tip(ref, entry.oid, None, "refs"))
            covered |= unique
    stash = sorted((k for k in mine if k.startswith("stash/")), key=lambda k: int(k.split("/")[1]) if k.split("/")[1].isdigit() else 0)
    for key in stash:
        entry = mine[key]
        if entry.commit:
            report.stash.append(f"stash@{{{key.split('/')[1]}}} (in its container)")
            report.tips.append(Tip(key, entry.commit, None, "stash"))
    head = mine.get("head")
    # history its branches rewrote on purpose (amend, rebase, reset) is not
    # work, as for a worktree agent; what only its HEAD reflog reaches is
    rewritten: set[str] = set()
    for key in (k for k in mine if k.startswith("branchlog/")):
        rewritten |= closure(graph, mine[key].commit)
    reached: set[str] = set()
    for key in (k for k in mine if k.startswith("headlog/")):
        reached |= closure(graph, mine[key].commit)
    if head is not None and head.commit:
        reached |= closure(graph, head.commit)
    lost = reached - covered - rewritten - closure(graph, main.branch(ctx.record.branch))
    if lost:
        report.detached += describe_commits(graph, lost)
        for i, tip in enumerate(newest_tips(graph, lost)):
            report.tips.append(Tip(f"detached/container-{i}", tip, None, "detached"))
    if head is not None and head.commit:
        report.head.append("HEAD is detached in its container")
    elif (found := read_refs(agent_git_dir(ctx))).head_ref and found.head_ref != branch_ref:
        report.head.append(f"HEAD is on {ref_label(found.head_ref)} in its container, not on branch {ctx.record.branch}")
