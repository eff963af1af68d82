"""What removing an environment would lose: the one inventory that ``down``,
``gc`` and ``up``'s rollback share (issue 11; docs/faults.md rows 5, 23, 24, 25).

An environment holds more than its branch.  Each strategy's ``inventory``
(strategies/base.py) fills a ``WorkReport`` with what only the environment
has: commits on its branch that base lacks, every other ref of a clone,
stash entries, commits its HEAD reflog reached that no ref holds (a detached
HEAD, a branch reset away), a HEAD moved to another branch, commits and
changes in its submodules, and "git cannot read it" as a category of its
own.  ``lifecycle`` adds the files (modified, untracked, precious).

Each piece that ``--force`` must save is a ``Tip``: an object id, the
repository whose object store holds it, and its name under the backup's
namespace (hybridiso/work/backups.py).  The git calls are batched: one
``for-each-ref`` of the main repository per command (``MainRepo``), one
``rev-list`` per object store with every tip and every exclusion on stdin.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from hybridiso import git, output

MAX_SUBMODULE_DEPTH = 8

# categories in the order they are described: (name, one, many); a
# category without labels is told by its items alone
LABELS = (
    ("modified", "modified", "modified"),
    ("untracked", "untracked", "untracked"),
    ("precious", "ignored but precious", "ignored but precious"),
    # ignored only by a rule the environment itself added (a .gitignore the
    # commit lacks, an info/exclude line the repository lacks: attack11 #1)
    ("hidden", "ignored only by the environment's own rules", "ignored only by the environment's own rules"),
    ("commits", "commits not in base", "commits not in base"),  # the words tests and users know
    ("refs", "other ref with work", "other refs with work"),
    ("stash", "stash entry", "stash entries"),
    ("detached", "commit on no branch (HEAD reflog)", "commits on no branch (HEAD reflog)"),
    ("head", "", ""),
    # a clone's own linked worktrees placed outside it: removal deletes their
    # admin dirs (HEAD, index, reflog) and leaves them broken
    ("worktrees", "linked worktree of it elsewhere", "linked worktrees of it elsewhere"),
    ("submodules", "submodule with work", "submodules with work"),
    ("unreadable", "", ""),
    # database branches whose data changed, one line each (docs/faults.md row 26):
    # saved by pg_dump, not in a backup ref
    ("databases", "", ""),
)
CATEGORIES = tuple(name for name, _, _ in LABELS)
FILE_CATEGORIES = ("modified", "untracked", "precious", "hidden")


@dataclass(frozen=True)
class Tip:
    """One object ``--force`` saves, named ``key`` under the backup's namespace
    (``files``, ``refs/heads/side``, ``stash/0``, ``detached/0``,
    ``submodules/<path>/...``)."""

    key: str
    oid: str
    store: Path | None  # the repository holding the object; None: the main repository
    category: str


@dataclass(frozen=True)
class SubmoduleWork:
    path: str  # relative to the environment (nested ones: "a/b")
    repo: Path  # its checkout
    tips: tuple[Tip, ...]


@dataclass(frozen=True)
class SnapshotPlan:
    """How to save the files of an environment git cannot read through its
    own link: with ``git_dir`` (a worktree's own admin dir, with its index,
    or the main repository's git dir, from nothing) on top of ``parent``."""

    git_dir: Path
    own_index: bool
    parent: str | None


@dataclass
class WorkReport:
    modified: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)
    precious: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    stash: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    worktrees: list[str] = field(default_factory=list)
    submodules: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    # ignored by the repository's own rules: not work, but named when
    # removed; ``ignored_saved``: those a --force backup holds all the same
    ignored: list[str] = field(default_factory=list)
    ignored_saved: list[str] = field(default_factory=list)
    # what stays in the repository anyway (said, never at risk): tags and
    # stash entries a worktree made live in the shared refs
    kept: list[str] = field(default_factory=list)
    tips: list[Tip] = field(default_factory=list)
    submodule_repos: list[SubmoduleWork] = field(default_factory=list)
    branch_tip: str | None = None  # the agent branch's commit when judged (deleted only at it)
    readable: bool = True  # git reads the environment through its own link
    snapshot: SnapshotPlan | None = None  # when not readable: how its files are saved
    force_blocker: str = ""  # why even --force cannot save it (then it refuses)
    repair: str = ""  # how to make git read it again

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in CATEGORIES)

    @property
    def in_git(self) -> bool:
        """Work a backup under refs/hybridiso/backup/ holds: all but the databases."""
        return not self.without("databases").empty

    def describe(self, limit: int = 5) -> str:
        parts = []
        for name, one, many in LABELS:
            items: list[str] = getattr(self, name)
            if items:
                shown = ", ".join(items[:limit]) + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
                parts.append(f"{len(items)} {one if len(items) == 1 else many}: {shown}" if one else shown)
        return "; ".join(parts)

    def without(self, *categories: str) -> WorkReport:
        """The same report with ``categories`` (and the tips that save them) dropped."""
        copy = dataclasses.replace(self)
        for name in categories:
            setattr(copy, name, [])
        copy.tips = [t for t in self.tips if t.category not in categories]
        copy.submodule_repos = [] if "submodules" in categories else list(self.submodule_repos)
        return copy

    def files_only(self) -> WorkReport:
        return self.without(*[c for c in CATEGORIES if c not in FILE_CATEGORIES])


# --- the main repository, read once per command ------------------------------------

# hybridiso's own refs (backups, objects on their way in) never make work
# "safe": every backup holds all of its environment's work by itself, so
# deleting an older one never takes a newer environment's commits with it
OWN_REFS = "refs/hybridiso/"


@dataclass
class _Batch:
    """The HEADs and reflogs of many linked worktrees, read in two git
    processes for all of them (``MainRepo.prefetch``); a worktree not in it
    is read on its own, as before (issue 15)."""

    heads: dict[Path, tuple[str | None, str | None]] = field(default_factory=dict)
    head_reflogs: dict[Path, list[git.ReflogEntry]] = field(default_factory=dict)
    branch_reflogs: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class MainRepo:
    root: Path
    common_dir: Path
    refs: dict[str, git.RefEntry]
    ref_tips: tuple[str, ...]  # the commit of every ref: what is safe in the main repository
    stash: tuple[git.ReflogEntry, ...]
    admin_dirs: dict[str, list[Path]]  # linked worktrees' admin dirs, by their .git path
    batch: _Batch = field(default_factory=_Batch, compare=False, repr=False)
    leaving: frozenset[str] = frozenset()  # refs that hold nothing safe (without_refs)

    @classmethod
    def load(cls, root: Path, common_dir: Path) -> MainRepo:
        refs = {r.name: r for r in git.list_refs(root)}
        tips = tuple(dict.fromkeys(r.commit for r in refs.values() if r.commit and not r.name.startswith(OWN_REFS)))
        stash = tuple(git.reflog(common_dir, "refs/stash")) if "refs/stash" in refs else ()
        return cls(root, common_dir, refs, tips, stash, git.worktree_admin_dirs(common_dir))

    def admin_dir(self, env: Path) -> Path | None:
        return git.worktree_admin_dir(self.common_dir, env, self.admin_dirs)

    def without_refs(self, leaving: set[str]) -> MainRepo:
        """The repository as it will be once the refs ``leaving`` (full
        names: branches one command is about to delete) are gone: they hold
        nothing safe.  ``down`` judges many agents at once this way (issue
        15), so no agent's commits count as safe on a branch another
        removal of the same run deletes."""
        if not leaving:
            return self
        tips = tuple(dict.fromkeys(r.commit for r in self.refs.values() if r.commit and r.name not in leaving and not r.name.startswith(OWN_REFS)))
        return dataclasses.replace(self, ref_tips=tips, leaving=frozenset(self.leaving | leaving))

    def prefetch(self, admins: list[Path], branches: list[str]) -> None:
        """Read the HEAD and HEAD reflog of each linked worktree ``admins``
        and the reflogs of ``branches`` (short names; those with no ref are
        left out) for every inventory to come: two git processes instead of
        two per environment.  Nothing is kept when git refuses any of them
        (an unborn branch, a broken HEAD): each is then read on its own."""
        home = os.path.join(self.common_dir, "worktrees")
        ids = {a.name: a for a in dict.fromkeys(admins) if os.path.dirname(a) == home and git.batchable_worktree_id(a.name)}
        heads = git.worktree_heads(self.root, list(ids))
        if heads is None:
            return
        # each inventory asks for its agent's branch and the one its HEAD is on
        wanted = {f"refs/heads/{b}" for b in branches} | {ref for _, ref in heads.values() if ref}
        full = sorted(b for b in wanted if b in self.refs)
        logs = git.worktree_reflogs(self.root, list(ids), full)
        if logs is None:
            return
        with self.batch.lock:
            for ident, admin in ids.items():
                self.batch.heads[admin] = heads[ident]
                self.batch.head_reflogs[admin] = logs.heads[ident]
            self.batch.branch_reflogs.update(logs.branches)

    def head(self, admin: Path) -> tuple[str | None, str | None]:
        """``git.head_of(admin)``, from the prefetched batch when it has it."""
        with self.batch.lock:
            found = self.batch.heads.get(admin)
        return found if found is not None else git.head_of(admin)

    def head_and_branch_reflogs(self, admin: Path, *branches: str) -> tuple[list[git.ReflogEntry], list[str]]:
        """``git.head_and_branch_reflogs(admin, *branches)`` (full branch
        names), from the prefetched batch when it has all of them."""
        with self.batch.lock:
            head = self.batch.head_reflogs.get(admin)
            logs = [self.batch.branch_reflogs.get(b) for b in branches]
        if head is None or any(log is None for log in logs):
            return git.head_and_branch_reflogs(admin, *branches)
        return list(head), list(dict.fromkeys(c for log in logs for c in log or ()))

    def safe_tips(self, *but: str) -> list[str]:
        """``ref_tips`` without the refs named in ``but`` (one removal deletes)."""
        return [r.commit for r in self.refs.values() if r.commit and r.name not in but and r.name not in self.leaving and not r.name.startswith(OWN_REFS)]

    def branch(self, name: str) -> str | None:
        entry = self.refs.get(f"refs/heads/{name}")
        return entry.commit if entry else None

    def tags_at(self, commits: set[str]) -> list[str]:
        return sorted(r.name.removeprefix("refs/tags/") for r in self.refs.values() if r.name.startswith("refs/tags/") and r.commit in commits)


# --- commit graphs ------------------------------------------------------------------


def closure(graph: dict[str, git.CommitInfo], *tips: str | None) -> set[str]:
    """The commits of ``graph`` reachable from ``tips`` (within the graph)."""
    seen: set[str] = set()
    stack = [t for t in tips if t]
    while stack:
        commit = stack.pop()
        if commit in seen or commit not in graph:
            continue
        seen.add(commit)
        stack.extend(graph[commit].parents)
    return seen


def left_on_no_branch(graph: dict[str, git.CommitInfo], head_reflog: list[str], branch_reflogs: list[str], covered: set[str]) -> set[str]:
    """Commits only the HEAD reflog reaches (a detached HEAD's work), not
    ``covered`` by a ref, and not history a branch itself once held and
    rewrote (``commit --amend``, a rebase -- ``sync``'s too --, a reset):
    the branch's owner replaced those on purpose."""
    rewritten = closure(graph, *branch_reflogs)
    return closure(graph, *head_reflog) - covered - rewritten


def newest_tips(graph: dict[str, git.CommitInfo], commits: set[str]) -> list[str]:
    """The fewest commits of ``commits`` whose ancestry covers all of them
    (those no other one has as parent), newest first."""
    parents = {p for c in commits for p in graph[c].parents}
    return [c for c in graph if c in commits and c not in parents]


def describe_commits(graph: dict[str, git.CommitInfo], commits: set[str]) -> list[str]:
    return [f"{c[:7]} {graph[c].subject}" for c in graph if c in commits]


def ref_label(name: str) -> str:
    for prefix, label in (("refs/heads/", "branch"), ("refs/tags/", "tag"), ("refs/notes/", "notes"), ("refs/remotes/", "remote-tracking ref")):
        if name.startswith(prefix):
            return f"{label} {name.removeprefix(prefix)}"
    return name


plural = output.plural  # the one rule for "1 commit" / "2 commits" (issue 16)


# --- a repository with its own object store (a clone, a submodule) ------------------


@dataclass
class StoreWork:
    """What a repository with its own object store holds that its safe refs
    (and the main repository) do not."""

    commits: list[str] = field(default_factory=list)  # on ``branch``
    refs: list[str] = field(default_factory=list)
    stash: list[str] = field(default_factory=list)
    detached: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    worktrees: list[str] = field(default_factory=list)
    tips: list[Tip] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.commits or self.refs or self.stash or self.detached or self.head or self.worktrees)


def store_work(
    repo: Path,
    git_dir: Path,
    *,
    branch: str | None,
    safe_prefixes: tuple[str, ...],
    count_tags: bool,
    main: MainRepo | None,
    key_prefix: str = "",
) -> StoreWork:
    """Every ref, the HEAD reflog and the stash of ``repo`` -- and the HEAD
    and HEAD reflog of each of its own linked worktrees (``git worktree add``
    in it: their admin dirs live in its git dir) --, less what is reachable
    from its refs under ``safe_prefixes`` (what it fetched) and, with
    ``main``, from the main repository's refs.  A clone passes no
    ``safe_prefixes``: its remote-tracking refs are refs it can write
    (``git update-ref refs/remotes/origin/x``), and what they say a remote
    holds is no proof; only the main repository's refs are.  A linked
    worktree placed outside ``repo`` is reported in ``worktrees``: removing
    ``repo`` breaks it.  ``branch`` (the agent's
    own) is reported as ``commits``; ``count_tags`` says whether a tag the
    main repository lacks is work by itself (a clone's) or a tag is only
    what it fetched (a submodule's: its commits still count via the reflog)."""
    refs = git.list_refs(repo)
    head, head_ref = git.head_of(git_dir)
    head_entries, branch_reflogs = git.head_and_branch_reflogs(git_dir, "--branches")
    reflog = ([head] if head else []) + [e.commit for e in head_entries]
    outside: list[str] = []
    for wt in git.linked_worktrees(git_dir):
        wt_head, _ = git.head_of(wt.admin)
        reflog += ([wt_head] if wt_head else []) + [e.commit for e in git.reflog(wt.admin, "HEAD")]
        if wt.path is None:
            continue
        inside = _within(wt.path, repo)
        if not inside and (os.path.lexists(wt.path) or wt.locked):
            outside.append(f"{wt.path}" + (" (locked)" if wt.locked else "") + " (removal breaks it)")
    stash = git.reflog(git_dir, "refs/stash") if any(r.name == "refs/stash" for r in refs) else []
    safe = [r for r in refs if r.name.startswith(safe_prefixes)]
    own = [r for r in refs if not r.name.startswith(safe_prefixes) and r.name != "refs/stash"]
    if not count_tags:
        own = [r for r in own if not r.name.startswith("refs/tags/")]
    tips = [r.commit for r in own if r.commit] + reflog + branch_reflogs + [e.commit for e in stash]
    exclude = [r.commit for r in safe if r.commit] + list(main.ref_tips if main else ())
    graph = git.commits_not_in(repo, tips, exclude)
    if main is not None and graph:
        graph = _drop_reachable_in_main(graph, main)
    unique = set(graph)
    found = StoreWork(worktrees=outside)
    covered: set[str] = set()
    store = repo
    branch_ref = f"refs/heads/{branch}" if branch else None
    for r in own:
        mine = closure(graph, r.commit) & unique
        if r.name == branch_ref:
            found.commits = describe_commits(graph, mine)
            if mine:
                found.tips.append(Tip(key_prefix + r.name, r.oid, store, "commits"))
        elif mine or (r.name.startswith("refs/tags/") and main is not None and _main_lacks(main, r)):
            found.refs.append(ref_label(r.name) + (f" ({plural(len(mine), 'commit')})" if mine else ""))
            found.tips.append(Tip(key_prefix + r.name, r.oid, store, "refs"))
        covered |= mine
    for i, entry in enumerate(stash):
        mine = closure(graph, entry.commit) & unique
        if mine:
            found.stash.append(f"{entry.selector} ({entry.subject})")
            found.tips.append(Tip(f"{key_prefix}stash/{i}", entry.commit, store, "stash"))
            covered |= mine
    if head_ref and branch_ref and head_ref != branch_ref:
        found.head.append(f"HEAD is on {ref_label(head_ref)}, not on branch {branch}")
    lost = left_on_no_branch(graph, reflog, branch_reflogs, covered)
    found.detached = describe_commits(graph, lost)
    for i, tip in enumerate(newest_tips(graph, lost)):
        found.tips.append(Tip(f"{key_prefix}detached/{i}", tip, store, "detached"))
    return found


def _within(path: Path, root: Path) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _main_lacks(main: MainRepo, ref: git.RefEntry) -> bool:
    there = main.refs.get(ref.name)
    return there is None or there.oid != ref.oid


def _drop_reachable_in_main(graph: dict[str, git.CommitInfo], main: MainRepo) -> dict[str, git.CommitInfo]:
    """Commits the main repository already holds on a ref are not lost with
    the clone (pushed back with --keep-branch, fetched by the user); a
    backup's refs do not count (``OWN_REFS``)."""
    have = git.existing_commits(main.root, list(graph))
    if not have:
        return graph
    unreachable = git.commits_not_in(main.root, sorted(have), main.ref_tips)
    return {c: info for c, info in graph.items() if c not in have or c in unreachable}


# --- submodules -----------------------------------------------------------------


def submodule_key(path: str) -> str:
    """One ref-name component for a submodule path: every byte but
    ``[A-Za-z0-9_-]`` percent-encoded (``a/b``, dots, ``~``, spaces are
    safe), hashed when it would be too long for a file name."""
    encoded = "".join(chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "_-") else f"%{b:02X}" for b in path.encode())
    if not encoded or len(encoded) > 200:
        encoded = "h-" + hashlib.sha256(path.encode()).hexdigest()[:32]
    return encoded


def submodule_path(key: str) -> str:
    return key if key.startswith("h-") else urllib.parse.unquote(key)


def add_submodule_work(report: WorkReport, env: Path, prefix: str = "", depth: int = 0) -> None:
    """Submodules checked out in ``env`` keep their objects in the
    environment's git dir (``.git/modules``, or a worktree's admin dir), which
    removal deletes: their commits not on any remote-tracking ref, their
    stash and their changed files are work (issue 11)."""
    if depth > MAX_SUBMODULE_DEPTH or not (env / ".gitmodules").is_file():
        return
    for rel, _ in git.gitlinks(env):
        sub = env / rel
        name = prefix + rel
        if _through_a_symlink(env, rel) or not os.path.lexists(sub / ".git"):
            # never initialized: nothing of its own; or a symlink put where
            # the submodule goes: what it points at is not the environment's
            # (removal deletes the link, and nothing is read or written there)
            continue
        loc = git.locate(sub)
        if loc.toplevel is None or loc.git_dir is None or os.path.realpath(loc.toplevel) != os.path.realpath(sub):
            report.unreadable.append(f"submodule {name}: {loc.why or 'git reads it as part of another repository'}")
            report.force_blocker = report.force_blocker or f"git cannot read submodule {name}, so its commits cannot be saved"
            continue
        files = [n for _, n in git.status_porcelain(sub)]
        key = f"submodules/{submodule_key(name)}/"
        found = store_work(sub, loc.git_dir, branch=None, safe_prefixes=("refs/remotes/",), count_tags=False, main=None, key_prefix=key)
        if files or not found.empty:
            bits = [*found.refs, *found.stash, *(f"{c} (on no remote)" for c in found.detached[:3]), *(f"linked worktree {w}" for w in found.worktrees)]
            if len(found.detached) > 3:
                bits.append(f"+{plural(len(found.detached) - 3, 'more commit')}")
            if files:
                bits.append(f"{plural(len(files), 'changed file')}: {', '.join(files[:3])}")
            report.submodules.append(f"{name} ({'; '.join(bits)})")
            report.submodule_repos.append(SubmoduleWork(name, sub, tuple(found.tips)))
        add_submodule_work(report, sub, name + "/", depth + 1)


def _through_a_symlink(root: Path, rel: str) -> bool:
    here = root
    for part in Path(rel).parts:
        here = here / part
        if here.is_symlink():
            return True
    return False
