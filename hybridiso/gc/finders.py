"""What ``hybridiso gc`` looks at in git and the workspace, as ``Finding``s.

Three finders, run under the repository lock:
- ``agent_findings``: every agent record, judged by ``gc.rules.decide`` from
  facts gathered here (work in the env, merge verdict, upstream gone);
- ``prunable_findings``: worktrees hybridiso made (an agent's place in the
  workspace) whose directory is gone and that no record owns (e.g. the state
  file was lost too); anybody else's is never touched (docs/faults.md row 28);
- ``orphan_findings``: directories in the workspace that neither git nor the
  state knows; removed only when hybridiso can prove it made them (its env
  file's mark for this project and that name) and they hold no work
  (docs/faults.md row 29).
Each removable finding carries an ``apply`` that does the removal and returns
what it could not remove.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hybridiso import cleanup, git, ports, safe_files, strategies
from hybridiso.strategies import clone
from hybridiso.output import plural
from hybridiso.envs import lifecycle
from hybridiso.gc import merged
from hybridiso.services import branches as service_branches
from hybridiso.env_context import context
from hybridiso.envfile import ENV_FILE, marked_for
from hybridiso.gc.rules import ORPHAN, ZOMBIE, AgentFacts, Decision, Finding, decide
from hybridiso.project import Project
from hybridiso.errors import UserError
from hybridiso.state import PHASE_READY, AgentRecord, State
from hybridiso.env_context import EnvContext
from hybridiso.work.inventory import MainRepo, WorkReport


def base_refs(project: Project) -> list[tuple[str, str]]:
    """(label, commit) of base and, when base is a branch with an upstream that
    was fetched, of that upstream too: work merged upstream counts as merged
    before the local base is fast-forwarded."""
    root, base = project.root, project.manifest.base
    commit = git.resolve_commit(root, base)
    refs = [(base, commit)] if commit else []
    up = git.upstream(root, base) if git.branch_exists(root, base) else None
    if up and up.ref and not up.gone:
        up_commit = git.resolve_commit(root, up.ref)
        if up_commit and up_commit != commit:
            refs.append((up.ref.removeprefix("refs/remotes/"), up_commit))
    return refs


def agent_facts(
    ctx: EnvContext, bases: list[tuple[str, str]], main: MainRepo | None = None, upstreams: dict[str, git.Upstream] | None = None
) -> AgentFacts:
    """``main`` and ``upstreams`` (git.upstreams of the repository): read
    once for every agent (issue 15); what they say of a branch is what
    asking for it alone would."""
    record, project = ctx.record, ctx.project
    busy = project.store.agent_busy(record.name)
    if busy is not None:
        # a running `up` is making or updating it (it claimed it): judged
        # by nobody but that run, not even looked into (docs/faults.md row 10)
        return AgentFacts(name=record.name, phase=record.phase, exists=True, registered=True, work="", verdict=None, branch=record.branch, busy=busy)
    strategy = strategies.get(record.strategy)
    obs = strategy.observe(ctx)
    # the same inventory as down's: the merge verdict below judges the
    # agent's branch, and a "merged" branch never removes other work
    # (stash, other refs, a detached HEAD, submodules, an unreadable env)
    work = other_work(lifecycle.inspect_work(ctx, main), record)
    if strategy.SHARES_REFS:
        # the refs were read once for all agents, under the lock (MainRepo)
        cwd, tip = project.root, main.branch(record.branch) if main is not None else git.branch_commit(project.root, record.branch)
    else:
        cwd = ctx.path
        tip = git.branch_commit(cwd, record.branch) if obs.registered and work.readable else None
        if tip is not None:
            _bring_base_into_clone(ctx, bases)
    verdict = merged.verdict(cwd, tip, bases, record.base_commit, record.branch) if tip else None
    if not tip:
        up = None
    elif strategy.SHARES_REFS and upstreams is not None:
        up = upstreams.get(record.branch)
    else:
        up = git.upstream(cwd, record.branch)
    return AgentFacts(
        name=record.name,
        phase=record.phase,
        exists=obs.exists,
        registered=obs.registered,
        work=work.describe(),
        verdict=verdict,
        upstream_gone=(up.ref or up.merge).removeprefix("refs/remotes/") if up and up.gone else "",
        owns_branch=strategy.SHARES_REFS and record.created_branch,
        branch=record.branch,
        removing=record.removal_begun(Path(record.path)),
        tip=tip,
    )


def other_work(report: WorkReport, record: AgentRecord) -> WorkReport:
    """What gc must never remove, whatever the verdict on the branch: all
    of the inventory but the branch's own commits (the verdict's job).  What
    an earlier removal left half-deleted was judged before it began."""
    report = report.without("commits")
    return report.without("unreadable") if record.removal_begun(Path(record.path)) else report


def _bring_base_into_clone(ctx: EnvContext, bases: list[tuple[str, str]]) -> None:
    """A clone judges its branch against base's commits, which it may not have
    yet: fetch them from the local repository (objects and FETCH_HEAD only,
    no ref of the clone changes)."""
    missing = [c for _, c in bases if not git.has_object(ctx.path, c)]
    if missing:
        git.fetch(ctx.path, str(ctx.project.root), *missing)


def agent_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    bases = base_refs(project)
    names = sorted(state.agents)
    contexts = [context(project, state, n) for n in names]
    main = lifecycle.main_repo(project)  # one for-each-ref for every agent
    lifecycle.prefetch(main, contexts)  # their HEADs and reflogs: two git processes for all
    upstreams = git.upstreams(project.root)
    with ThreadPoolExecutor(max_workers=8) as pool:
        facts = list(pool.map(lambda c: agent_facts(c, bases, main, upstreams), contexts))
    findings = []
    for ctx, f in zip(contexts, facts, strict=False):
        d = decide(f)
        finding = Finding(d.kind, ctx.name, d.remove, d.reason, owns(ctx, d) if d.remove else [])
        if d.remove:
            finding.apply = _remover(ctx, state, d, f)
        findings.append(finding)
    return findings


def owns(ctx: EnvContext, d: Decision) -> list[str]:
    r = ctx.record
    things = []
    if ctx.path.exists():
        things.append(f"directory {r.path}")
    things += strategies.get(r.strategy).REMOVES  # worktree metadata, containers, ...
    if d.delete_branch:
        things.append(f"branch {r.branch}")
    things += [f"port {n}={p}" for n, p in sorted(r.ports.items())]
    things += [f"database branch {db.name}" for db in r.databases.values()]
    return things


def _remover(ctx: EnvContext, state: State, d: Decision, f: AgentFacts):  # type: ignore[no-untyped-def]
    def apply() -> list[str]:
        project, record = ctx.project, ctx.record
        strategy = strategies.get(record.strategy)
        if not record.removal_begun(ctx.path):
            # the agent may have gone on working since it was judged: look
            # again, right before deleting (the lock keeps hybridiso out, not it)
            now = other_work(lifecycle.inspect_work(ctx), record)
            if not now.empty:
                raise UserError(f"work appeared in it since gc judged it ({now.describe()}); kept it", hint="run `hybridiso gc` again")
        record.begin_removal(ctx.path)  # a failure half-way is retried by the next gc
        project.store.save(state)
        cleanup.make_deletable(ctx.path)
        try:
            strategy.remove(ctx)
        except (UserError, OSError) as e:  # what failed is reported, and the record stays (a bug is a bug: exit 3)
            # its files go anyway (it was judged removable), but what the
            # strategy could not remove (a container, a network) keeps the
            # record, marked removing: the next gc retries it and says why
            left = cleanup.remove_tree(ctx.path)
            return [*left, f"removing it failed: {e}; `hybridiso gc --yes` retries"]
        if strategy.SHARES_REFS:
            git.worktree_forget(project.repo.common_dir, ctx.path)  # this env's entry only (docs/faults.md row 28)
        service_branches.release(ctx)
        if d.delete_branch and f.tip:
            # only if nobody committed to it since we judged it
            git.delete_ref_if(project.root, f"refs/heads/{record.branch}", f.tip)
        del state.agents[record.name]
        project.store.save(state)
        ports.release(project.repo.common_dir, [record.name])  # the machine-wide lease too (docs/faults.md row 37)
        return []

    return apply


def prunable_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    ours = {Path(r.path) for r in state.agents.values() if isinstance(r.path, str)}
    prunable = [wt for wt in git.worktree_list(project.root) if wt.prunable and wt.path not in ours]
    # only what hybridiso made: a user's worktree on an unmounted disk is theirs
    prunable = [wt for wt in prunable if project.owns_worktree(wt.path, wt.branch, state.agents)]
    if not prunable:
        return []
    bases = base_refs(project)
    branch_names = {a.branch_name for a in project.manifest.agents}
    findings = []
    for wt in prunable:
        owns_list = ["worktree metadata"]
        delete_branch = None
        if wt.branch and (wt.branch in branch_names or wt.branch.startswith("hybridiso/")) and wt.head:
            v = merged.verdict(project.root, wt.head, bases, None, wt.branch)
            if v.merged or v.own_commits == 0:
                owns_list.append(f"branch {wt.branch}")
                delete_branch = (wt.branch, wt.head)
        f = Finding(ZOMBIE, str(wt.path), True, "directory was deleted; git still lists the worktree", owns_list)
        f.apply = _pruner(project, wt.path, delete_branch)
        findings.append(f)
    return findings


def _pruner(project: Project, path: Path, branch: tuple[str, str] | None):  # type: ignore[no-untyped-def]
    def apply() -> list[str]:
        if os.path.lexists(path):  # it came back (a disk mounted again): not a zombie any more
            return []
        if not git.worktree_forget(project.repo.common_dir, path) and git.worktree_entries(project.repo.common_dir, path):
            # two entries claim the path (an edited gitdir file): removing one would be a guess
            return [f"{path}: more than one entry in {project.repo.common_dir / 'worktrees'} names it; look at their gitdir files"]
        if branch is not None:
            git.delete_ref_if(project.root, f"refs/heads/{branch[0]}", branch[1])
        return []

    return apply


def orphan_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    ws = project.workspace
    if not safe_files.is_plain_dir(ws):
        return []
    known = {Path(r.path) for r in state.agents.values() if isinstance(r.path, str)}
    known |= {Path(a.path) for a in state.set_aside.values() if isinstance(a.path, str) and a.path}  # left alone, never an orphan
    known |= {wt.path for wt in git.worktree_list(project.root)}
    findings = []
    for entry in sorted(ws.iterdir()):
        # a plain directory of the workspace itself, never through a symlink
        if entry.name.startswith(".") or not safe_files.is_plain_dir(entry) or entry in known:
            continue
        remove, reason = _judge_orphan(project, entry)
        f = Finding(ORPHAN, str(entry), remove, reason, [f"directory {entry}"] if remove else [])
        if remove:
            f.apply = _orphan_remover(project, entry)
        findings.append(f)
    return findings


def _orphan_remover(project: Project, path: Path):  # type: ignore[no-untyped-def]
    def apply() -> list[str]:
        # the agent may have gone on working since it was judged: judged
        # again right before deleting, as agent findings are
        remove, reason = _judge_orphan(project, path)
        if not remove:
            raise UserError(f"work appeared in it since gc judged it ({reason}); kept it", hint="run `hybridiso gc` again")
        return cleanup.remove_tree(path)

    return apply


def _judge_orphan(project: Project, path: Path) -> tuple[bool, str]:
    """Remove only what hybridiso can prove it made (its env file names this
    project and this directory's agent name: docs/faults.md row 29) and that holds no
    work.  Everything else in the workspace is somebody's: kept, and said why."""
    try:
        names = [p.name for p in path.iterdir()]
    except OSError as e:
        return False, f"cannot look inside ({e.strerror}); check it by hand"
    if not marked_for(path, project.id):
        # one reason for all of them: gc's summary counts them as one kind
        return False, f"no {ENV_FILE} naming this project and directory: not made by hybridiso, left alone"
    if not [n for n in names if n != ENV_FILE]:
        return True, "an agent directory hybridiso made, holding only its env file"
    if safe_files.is_plain_dir(path / ".git"):
        work = orphan_clone_work(project, path)
        if not work.empty:
            return False, f"a clone nobody knows holding work that removing it would lose ({work.describe()}); look inside"
        return True, "a clean clone hybridiso made that no record knows (all its commits are on the repository's own refs)"
    return False, f"{plural(len(names), 'entry', 'entries')} that no git and no hybridiso record knows; delete it yourself if unneeded: rm -rf {path}"


# what made a file precious (the record's include: patterns, the files it
# copied) went with the state: every ignored file is, but one identical to
# the checkout's file of that name (a copy nobody changed)
ORPHAN_PRECIOUS = ("*",)


def orphan_clone_work(project: Project, path: Path) -> WorkReport:
    """The inventory ``down`` takes of a clone (lifecycle.inspect_work: every
    ref, the stash, the HEAD reflogs, its linked worktrees, submodules,
    files), for a clone whose record is gone: a record made up for it with
    no agent branch (every branch of it is "other work") and every ignored
    file precious.  Nothing it judges as work is ever removed."""
    agent = next((a for a in project.manifest.agents if a.name == path.name), None)
    record = AgentRecord(
        name=path.name,
        strategy=clone.NAME,  # a plain repository in the workspace: judged as a clone
        branch="",
        path=str(path),
        base=project.manifest.base,
        phase=PHASE_READY,
        include_patterns=list(ORPHAN_PRECIOUS),
    )
    return lifecycle.inspect_work(EnvContext(project, agent, record))


BUILTIN_FINDERS = (agent_findings, prunable_findings, orphan_findings)
