"""The merge train: candidates one after the other, each applied onto the
target as it is now, checked there, and the target moved by compare-and-swap
only when green (issue 14 items 2 and 4; docs/land.md).

Never lose work, never break the target:
- nothing happens in an agent's environment or the user's checkout but the
  last step of a landing (their files follow the branch they have checked
  out, only when clean);
- the agent's branch is untouched until its work is on the target; the
  target moves with ``update-ref REF NEW OLD``, so a target moved by another
  shell meanwhile makes the candidate be applied and checked again on it;
- a ``kill -9`` at any moment leaves the target at its old commit or at a
  checked one; the journal lets the next run stop the check and finish the
  landing (store.py).
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hybridiso import git, output, planner, process_groups, safe_files, strategies
from hybridiso.process import CommandError
from hybridiso.errors import UserError
from hybridiso.land import apply as applying
from hybridiso.land import clones as scratch_clones
from hybridiso.land import databases as check_dbs
from hybridiso.land.check import run_checks
from hybridiso.land.scratch import Scratches
from hybridiso.land.store import Journal, LandStore, Landing
from hybridiso.manifest import Agent, Command
from hybridiso.project import Project
from hybridiso.services.branches import env_var as branches_env_var
from hybridiso.setup_runner import LogFile
from hybridiso.state import ProcessGroup, State

if TYPE_CHECKING:
    from hybridiso.land.container_check import ImageCheck

MAX_ATTEMPTS = 3  # applying and checking again after the target or the branch moved
PUSH_ATTEMPTS = 3
CLONE = "clone"  # strategies/clone.py's NAME: its agents' checks run in a scratch clone (land/clones.py)

LANDED = "landed"
EMPTY = "empty"
CONFLICT = "conflict"
FAILED = "failed"
REFUSED = "refused"
MISSING = "missing"
SKIPPED = "skipped"
WOULD_LAND = "would-land"
OK_RESULTS = (LANDED, EMPTY, WOULD_LAND)


DONE = "done"  # what conclude() found
TIP_MOVED = "tip-moved"
TARGET_MOVED = "target-moved"


@dataclass
class Options:
    dry_run: bool = False
    stop_on_failure: bool = False
    keep_failed: bool = False
    parallel: int = 1  # checks at once (speculative: parallel.py)


@dataclass
class Outcome:
    agent: str
    branch: str
    method: str
    result: str = ""
    commits: int = 0
    tip: str = ""
    landed: str = ""
    check_seconds: float = 0.0
    seconds: float = 0.0
    attempts: int = 0
    why: str = ""
    paths: list[str] = field(default_factory=list)
    log: str = ""
    kept: str = ""
    tail: str = ""
    diffstat: str = ""
    pushed: bool | None = None
    checks: int = 0  # check runs it took (with --parallel, also those stopped or redone after one ahead failed)


@dataclass
class Run:
    id: str
    target: str
    dry_run: bool
    before: str
    after: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    report: str = ""
    resumed: str = ""
    parallel: int = 1

    @property
    def ok(self) -> bool:
        return all(o.result in OK_RESULTS and o.pushed is not False for o in self.outcomes)


@dataclass(frozen=True)
class Candidate:
    agent: Agent
    branch: str
    strategy: str
    where: Path  # the repository whose branch it is (a clone's own)
    env: Path | None  # its environment, when it has one


@dataclass
class Build:
    """A candidate applied onto ``base`` in ``scratch``: ``commit`` is what
    the target moves to when its check is green."""

    cand: Candidate
    outcome: Outcome
    base: str
    tip: str
    commit: str
    scratch: Path


Loop = Callable[["Train", Run, Sequence[Candidate], str, bool], None]


def gave_up() -> str:
    return f"the target or its branch kept moving: gave up after {MAX_ATTEMPTS} attempts, nothing landed"


def target_ref(project: Project) -> tuple[str, str]:
    """(refs/heads/<target>, its commit); a clear error when it is no branch."""
    target = project.manifest.land_target()
    commit = git.branch_commit(project.root, target)
    if commit is None:
        raise UserError(
            f"land's target {target!r} is not a local branch of {project.root}",
            hint="set `land: {target: BRANCH}` in hybridiso.yaml (base may be a remote-tracking branch; land moves a local one)",
        )
    return f"refs/heads/{target}", commit


def candidates(project: Project, state: State, names: Sequence[str]) -> list[Candidate]:
    agents = [project.manifest.agent(n) for n in names] if names else list(project.manifest.agents)
    found = []
    for agent in agents:
        record = state.agents.get(agent.name)
        strategy = record.strategy if record else planner.CHEAPEST
        env = project.env_path(agent) if record and project.record_problem(agent.name, record) is None else None
        if env is not None and not env.exists():
            env = None
        known = strategies.find(strategy)
        if env is not None and known is not None and known.UNTRUSTED_FILES:
            git.distrust(env)
        where = env if known is not None and not known.SHARES_REFS and env is not None else project.root
        found.append(Candidate(agent, agent.branch_name, strategy, where, env))
    return found


def _log(agent: str, phase: str, detail: str = "") -> None:
    output.message(f"  {agent:<14} {phase:<8} {detail}".rstrip())


def _short(commit: str) -> str:
    return commit[:10]


class Train:
    def __init__(self, project: Project, state: State, options: Options) -> None:
        self.project = project
        self.state = state
        self.options = options
        self.store = LandStore(project.store)
        self.root = project.root
        self.run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
        self.journal = Journal(os.getpid(), self.run_id)
        self._journal_lock = threading.Lock()
        self.scratches = Scratches(self.root, self.store.anchor, self.store.scratch_dir, output.warn)

    # --- the run ------------------------------------------------------------

    def run(self, names: Sequence[str], loop: Loop | None = None) -> Run:
        """Land the candidates (``names``, or all), one after the other, or
        by ``loop`` (the speculative one for --parallel)."""
        ref, before = target_ref(self.project)
        cands = candidates(self.project, self.state, names)
        run = Run(self.run_id, ref.removeprefix("refs/heads/"), self.options.dry_run, before)
        if self.options.dry_run:
            self._dry_run(run, cands, bool(names))
            run.after = before
            return run
        self.store.ensure()
        run.resumed = self.recover()
        ref, run.before = target_ref(self.project)  # recovery may have finished a landing
        self._refuse_dirty_target(run.target, None, None)
        self.store.write_journal(self.journal)
        stop = False
        try:
            if loop is not None:  # --parallel: parallel.speculate
                loop(self, run, cands, ref, bool(names))
                return run
            for cand in cands:
                if stop:
                    run.outcomes.append(self.skipped(cand))
                    continue
                outcome = self._one(run, cand, ref, explicit=bool(names))
                if outcome is None:
                    continue
                run.outcomes.append(outcome)
                if self.stops(outcome):
                    stop = True
        finally:
            self.scratches.close()
            self.store.clear_journal()
            run.after = git.branch_commit(self.root, run.target) or ""
        return run

    def skipped(self, cand: Candidate) -> Outcome:
        return Outcome(cand.agent.name, cand.branch, self._method(cand), SKIPPED, why="an earlier candidate did not land (--stop-on-failure)")

    def _method(self, cand: Candidate) -> str:
        return self.project.manifest.land_method_for(cand.agent)

    def _tip(self, cand: Candidate) -> str | None:
        """The candidate's branch now; a clone's is fetched into the
        repository (refs/hybridiso/land/<agent>) so its objects are here."""
        if cand.where == self.root:
            return git.branch_commit(self.root, cand.branch)
        tip = git.branch_commit(cand.where, cand.branch)
        if tip is None:
            return None
        git.run(self.root, "fetch", "-q", "--no-tags", "--", str(cand.where), f"+refs/heads/{cand.branch}:refs/hybridiso/land/{cand.agent.name}")
        return tip

    def _uncommitted(self, cand: Candidate) -> str:
        """Why the candidate's environment holds work that would not land."""
        if cand.env is None:
            return ""
        try:
            dirty = git.work_status(cand.env)
        except CommandError as e:
            return f"its environment {cand.env} cannot be read by git ({e.result.stderr.strip()[:200]})"
        if dirty:
            files = ", ".join(p for _, p in dirty[:10]) + (f" (+{len(dirty) - 10} more)" if len(dirty) > 10 else "")
            return f"uncommitted work in {cand.env}: {files} (only commits land: commit or stash it)"
        head = git.current_branch(cand.env)
        if head != cand.branch:
            where = f"branch {head}" if head else "a detached HEAD"
            return f"its environment {cand.env} is on {where}, not on {cand.branch} (check out its branch, or land that work from it)"
        return ""

    def _dry_run(self, run: Run, cands: Sequence[Candidate], explicit: bool) -> None:
        current = run.before
        for cand in cands:
            o = Outcome(cand.agent.name, cand.branch, self._method(cand))
            tip = self._tip(cand)
            if tip is None:
                if explicit:
                    o.result, o.why = MISSING, f"branch {cand.branch} does not exist"
                    run.outcomes.append(o)
                continue
            o.tip = tip
            o.commits = git.count_commits(self.root, current, tip)
            if o.commits == 0:  # none beyond the target: its tip is in it
                if explicit:
                    o.result, o.why = EMPTY, "nothing new beyond the target"
                    run.outcomes.append(o)
                continue
            why = self._uncommitted(cand) or self._unrelated(run.target, current, tip) or self._no_fresh_services(cand)
            if why:
                o.result, o.why = REFUSED, why
            else:
                made, conflicts = applying.simulate(self.root, current, tip)
                if made is None:
                    o.result, o.paths = CONFLICT, list(conflicts)
                    o.why = f"would conflict in {', '.join(conflicts)}" if conflicts else "git could not merge it"
                elif blocked := self._target_blocked(run.target, current, made)[0]:
                    o.result, o.why = REFUSED, blocked  # what land would say at its compare-and-swap
                else:
                    o.result, current = WOULD_LAND, made
                    checks = self.project.manifest.land_check_for(cand.agent)
                    o.why = "would be checked with " + "; ".join(_describe(c) for c in checks) if checks else "would land unchecked (no land.check)"
            _log(o.agent, o.result, o.why)
            run.outcomes.append(o)

    def _one(self, run: Run, cand: Candidate, ref: str, *, explicit: bool) -> Outcome | None:
        started = time.monotonic()
        o = Outcome(cand.agent.name, cand.branch, self._method(cand))
        try:
            self._land(run, cand, ref, o, explicit)
        finally:
            o.seconds = time.monotonic() - started
        if not o.result:
            return None  # not a candidate: nothing beyond the target
        self.said(o)
        return o

    def said(self, o: Outcome) -> None:
        mark = o.result in OK_RESULTS and o.pushed is not False
        output.message(f" {output.mark(mark)} {o.agent:<14} {o.result:<8} {o.why}".rstrip())

    def stops(self, o: Outcome) -> bool:
        """Whether the queue stops after this outcome: --stop-on-failure, or
        a target that cannot move (its checkout is dirty)."""
        return o.result not in OK_RESULTS and (self.options.stop_on_failure or o.why.startswith("the target"))

    def _land(self, run: Run, cand: Candidate, ref: str, o: Outcome, explicit: bool) -> None:
        target = git.resolve_commit(self.root, ref) or ""
        tip = self.admit(cand, target, o, explicit)
        if tip is None:
            return
        for attempt in range(1, MAX_ATTEMPTS + 1):
            o.attempts = attempt
            build = self.build(run, cand, target, tip, o)
            if build is None:
                return
            keep = False
            try:
                if not self.check(run, cand, build.scratch, build.commit, o):
                    keep = self.keep_failed(build)
                    return
            finally:
                if not keep:
                    self.scratches.give_back(build.scratch)
            step, value = self.conclude(run, build, ref)
            if step == DONE:
                return
            if step == TIP_MOVED:
                tip = value
                o.commits = git.count_commits(self.root, target, tip)
            else:
                target = value
        o.result, o.why = FAILED, gave_up()

    # --- the steps of one candidate (the parallel train uses them too) -------

    def admit(self, cand: Candidate, base: str, o: Outcome, explicit: bool) -> str | None:
        """The candidate's tip when it has something to land on ``base``;
        None otherwise, with ``o.result`` set (``""``: not a candidate)."""
        tip = self._tip(cand)
        if tip is None:
            if explicit:
                o.result, o.why = MISSING, f"branch {cand.branch} does not exist"
            return None
        o.tip = tip
        o.commits = git.count_commits(self.root, base, tip)
        if o.commits == 0:  # none beyond the target: its tip is in it
            if explicit:
                o.result, o.why = EMPTY, "nothing new beyond the target"
            return None
        why = self._uncommitted(cand) or self._unrelated(run_target(self.project), base, tip) or self._no_fresh_services(cand)
        if why:
            o.result, o.why = REFUSED, why
            return None
        return tip

    def _no_fresh_services(self, cand: Candidate) -> str:
        """A checked candidate whose agent lists a service that runs in its
        compose project (a postgres or redis with no server ``url``) is
        refused: land has no fresh one to give its check (only a postgres
        server's template makes a database per check), and the agent's own
        holds the agent's data (never the check's to migrate).  Checking it
        without would test it against nothing, or fail for want of it."""
        manifest = self.project.manifest
        if not manifest.land_check_for(cand.agent):
            return ""  # lands unchecked: no check to give a service to
        theirs = sorted(s for s in cand.agent.services if s in manifest.services and manifest.services[s].runs_in_container)
        if not theirs:
            return ""
        listed = ", ".join(f"{s} ({manifest.services[s].kind})" for s in theirs)
        return (
            f"its check would get no {'service' if len(theirs) == 1 else 'services'} {listed}: "
            f"{'it runs' if len(theirs) == 1 else 'they run'} in the agent's compose project, and land gives a check a fresh database "
            "only from a postgres server (`url:` and `template:`), never the agent's own: give the service a server, "
            "or land this agent unchecked (its own `land: {check: []}`) or by hand"
        )

    def _unrelated(self, target: str, base: str, tip: str) -> str:
        """A branch with no history in common with the target is refused,
        by ``land`` and ``--dry-run`` alike (docs/faults.md row 43): the
        methods disagree on it (rebase replays all of it, merge refuses)."""
        if git.merge_base(self.root, base, tip) is None:
            return f"its branch has no history in common with {target} (unrelated histories): nothing of it lands; merge it by hand if that is meant"
        return ""

    def build(self, run: Run, cand: Candidate, base: str, tip: str, o: Outcome) -> Build | None:
        """Predict, then apply ``tip`` onto ``base`` in a scratch worktree
        (the run's, reused: land/scratch.py); None (``o.result`` set) on a
        conflict or when nothing is new, the scratch worktree then given back."""
        name = cand.agent.name
        conflicts = applying.predict(self.root, base, tip)
        if conflicts:
            o.result, o.paths, o.why = CONFLICT, list(conflicts), f"conflicts with {run.target} in {', '.join(conflicts)}"
            return None
        self._phase(name, "apply")
        _log(name, "apply", f"{o.method} {o.commits} commit{'s' if o.commits != 1 else ''} onto {run.target} ({_short(base)})")
        scratch = self.scratches.take(name, applying.start_at(o.method, base, tip))
        try:
            made = applying.apply(scratch, o.method, base, tip, _message(o.method, name, cand.branch, self.root, base, tip))
        except BaseException:
            self.scratches.remove(scratch)
            raise
        if made.commit is None:
            self.scratches.give_back(scratch)
            if made.conflicts or made.error:
                o.result, o.paths = CONFLICT, list(made.conflicts)
                o.why = f"conflicts with {run.target} in {', '.join(made.conflicts)}" if made.conflicts else f"could not be applied: {made.error}"
            else:
                o.result, o.why = EMPTY, f"everything it changes is in {run.target} already"
            return None
        return Build(cand, o, base, tip, made.commit, scratch)

    def keep_failed(self, build: Build) -> bool:
        """--keep-failed: the failed candidate's scratch worktree moves to
        kept/ (True) instead of being removed."""
        if not self.options.keep_failed:
            return False
        kept = applying.new_scratch(self.store.kept_dir, build.cand.agent.name)  # a reused scratch bears another agent's name
        git.run(self.root, "worktree", "move", str(build.scratch), str(kept))
        self.scratches.disown(build.scratch)  # the next candidate gets another
        build.outcome.kept = str(kept)
        build.outcome.why += f"; its scratch worktree is kept at {kept}"
        return True

    def conclude(self, run: Run, build: Build, ref: str) -> tuple[str, str]:
        """After a green check: land ``build`` (DONE, ``o.result`` set: landed,
        or missing/refused), or say why it must be applied and checked again:
        (TIP_MOVED, the branch's new tip) or (TARGET_MOVED, the target now)."""
        cand, o, target, tip, new = build.cand, build.outcome, build.base, build.tip, build.commit
        name = cand.agent.name
        # the branch may have moved or gone while it was checked
        now = self._tip(cand)
        if now is None:
            o.result, o.why = MISSING, f"branch {cand.branch} was deleted during its check; nothing landed"
            return DONE, ""
        if now != tip:
            _log(name, "moved", f"{cand.branch} moved to {_short(now)} during its check: applying and checking that")
            o.tip = now
            return TIP_MOVED, now
        blocked = self._refuse_dirty_target(run.target, target, new, raising=False)
        if blocked:
            o.result, o.why = REFUSED, blocked
            return DONE, ""
        self.journal.landing = Landing(name, cand.branch, str(cand.where), tip, new, ref, target)
        self._phase(name, "landing")
        if not git.run(self.root, "update-ref", "-m", f"hybridiso land {name}", ref, new, target, check=False).returncode == 0:
            moved = git.resolve_commit(self.root, ref) or ""
            _log(name, "moved", f"{run.target} moved to {_short(moved)} meanwhile: applying and checking on it")
            self.journal.landing = None
            self._phase(name, "apply")
            return TARGET_MOVED, moved
        unfollowed = self._follow_checkouts(run.target, target, new)
        if unfollowed:
            back = git.run(self.root, "update-ref", "-m", f"hybridiso land {name}: undone", ref, target, new, check=False).returncode == 0
            self.journal.landing = None
            self._phase(name, "apply")
            o.result = REFUSED
            o.why = f"the target {run.target}: {unfollowed}; " + (f"{run.target} was moved back to {_short(target)}, nothing landed" if back else f"{run.target} moved on meanwhile and was left as it is")
            return DONE, ""
        self._move_branch(cand, tip, new, o)
        self.journal.landing = None
        self._phase(name, "landed")
        o.result, o.landed = LANDED, new
        o.diffstat = git.run(self.root, "diff", "--shortstat", target, new, check=False).stdout.strip()
        o.why = f"{run.target} {_short(target)} -> {_short(new)}" + (f"; {o.why}" if o.why else "")
        self._push(run, new, o)
        return DONE, ""

    # --- steps ----------------------------------------------------------------

    def _phase(self, agent: str, phase: str) -> None:
        with self._journal_lock:
            self.journal.agent, self.journal.phase = agent, phase
            self.store.write_journal(self.journal)

    def _group(self, agent: str, group: ProcessGroup, running: bool) -> None:
        """A check command started (on disk before it runs) or ended; with
        --parallel, several run at once and the journal names them all."""
        with self._journal_lock:
            if running:
                self.journal.groups.append(group)
                self.journal.agent, self.journal.phase = agent, "check"
            else:
                self.journal.groups = [g for g in self.journal.groups if g.pgid != group.pgid]
            self.store.write_journal(self.journal)

    def check(self, run: Run, cand: Candidate, scratch: Path, commit: str, o: Outcome, started: Callable[[ProcessGroup], None] | None = None) -> bool:
        """Run the candidate's check in ``scratch`` at ``commit``; False
        (``o`` says why) when it fails.  ``started`` sees each command's
        group before it runs, and may raise to stop it (--parallel cancels a
        check whose base is no longer what would land)."""
        manifest = self.project.manifest
        commands = manifest.land_check_for(cand.agent)
        if not commands:
            o.why = "no land.check: landed unchecked"
            return True
        timeout = manifest.land_timeout_for(cand.agent)
        rel = PurePosixPath(*self.store.run_dir(run.id).parts, f"{o.agent}.log")
        log = LogFile(self.store.anchor, rel)
        o.log = str(log.path)
        _log(o.agent, "check", f"{'; '.join(_describe(c) for c in commands)} at {_short(commit)} (timeout {timeout:g}s)")
        env = {
            **manifest.env_for(cand.agent),
            "HYBRIDISO_AGENT": o.agent,
            "HYBRIDISO_LAND_TARGET": run.target,
            "HYBRIDISO_LAND_COMMIT": commit,
        }

        from hybridiso.land import container_check  # a container agent's check runs in its image

        image = container_check.for_candidate(self.project, self.state, cand.agent)
        if image is not None:
            self.scratches.taint(scratch)  # its files go to the agent's uid, written from inside: never reused
        clone = None
        if image is None and container_check.strategy_of(self.project, self.state, cand.agent) == CLONE:
            # a clone agent's check: in a clone of its own, as up makes one (land/clones.py)
            try:
                clone = scratch_clones.make(self.project, self.state, cand.agent, self.store.clones_dir, commit)
            except UserError as e:
                o.result, o.why = FAILED, f"check could not start: {e.message}"
                return False
            _log(o.agent, "clone", f"checking in a scratch clone {clone / scratch_clones.REPO}")
        try:
            return self._check_in(run, cand, clone / scratch_clones.REPO if clone else scratch, commit, o, env, log, commands, timeout, image, started)
        finally:
            if clone is not None:
                left = scratch_clones.remove(self.project, self.store.clones_dir, clone)
                if left:
                    output.warn(left)

    def _check_in(
        self,
        run: Run,
        cand: Candidate,
        where: Path,
        commit: str,
        o: Outcome,
        env: dict[str, str],
        log: LogFile,
        commands: Sequence[Command],
        timeout: float,
        image: ImageCheck | None,
        started: Callable[[ProcessGroup], None] | None,
    ) -> bool:
        try:
            env.update(self._databases(o, check_dbs.plan(self.project, cand.agent)))
        except UserError as e:
            o.result, o.why = FAILED, f"check could not get its database: {e.message}"
            self._drop_databases(o.agent)
            return False
        mine: list[ProcessGroup] = []

        def on_start(group: ProcessGroup) -> None:
            if started is not None:
                started(group)
            mine.append(group)
            self._group(o.agent, group, True)

        o.checks += 1
        try:
            result = run_checks(
                commands,
                where,
                env,
                log,
                timeout,
                header=f"land {o.agent} {commit}",
                project_id=self.project.id,
                on_start=on_start,
                on_end=lambda g: self._group(o.agent, g, False),
                image=image,
            )
        finally:
            for group in mine:  # a command timed out or stopped has no on_end: it is stopped now
                if any(g.pgid == group.pgid for g in self.journal.groups):
                    self._group(o.agent, group, False)
            self._drop_databases(o.agent)
        o.check_seconds += result.seconds
        if result.ok:
            _log(o.agent, "check", f"passed in {result.seconds:.2f}s")
            return True
        o.result, o.why, o.tail = FAILED, f"check {result.why}", result.tail
        _log(o.agent, "check", f"FAILED after {result.seconds:.2f}s ({result.why}); log: {log.path}")
        return False

    def _databases(self, o: Outcome, planned: list[check_dbs.CheckDatabase]) -> dict[str, str]:
        """Make the check's scratch databases, each in the journal before it
        exists; the variables that point the check at them."""
        env: dict[str, str] = {}
        for db in planned:
            with self._journal_lock:
                self.journal.databases.append({**db.record, "agent": o.agent})
                self.store.write_journal(self.journal)
            env.update(check_dbs.create(db))
            env.setdefault("DATABASE_URL", env[branches_env_var(db.service)])
            _log(o.agent, "database", f"{db.name} from {db.template} for {db.service}")
        return env

    def _drop_databases(self, agent: str) -> None:
        with self._journal_lock:
            mine = [d for d in self.journal.databases if d.get("agent") == agent]
        for d in mine:
            try:
                check_dbs.drop(d["server"], d["name"])
            except UserError as e:
                output.warn(f"the check database {d['name']} could not be dropped: {e.message} (gc will offer it)")
                continue
            with self._journal_lock:
                self.journal.databases = [x for x in self.journal.databases if x is not d]
                self.store.write_journal(self.journal)

    def _target_checkouts(self, target: str) -> list[Path]:
        return [wt.path for wt in git.worktree_list(self.root) if wt.branch == target and not wt.bare]

    def _refuse_dirty_target(self, target: str, old: str | None, new: str | None, *, raising: bool = True) -> str:
        """Why the target cannot move under a checkout that has it: changes
        to tracked files; untracked or ignored files (or a file where a
        directory lands) that the landing would write over; a rebase,
        merge, cherry-pick or revert in progress on it (docs/faults.md row 43)."""
        why, fix = self._target_blocked(target, old, new)
        if not why:
            return ""
        if raising:
            raise UserError(f"{why}; nothing was landed", hint=f"{fix}, then run `hybridiso land` again")
        return why + f" ({fix}, then run `hybridiso land` again)"

    def _target_blocked(self, target: str, old: str | None, new: str | None) -> tuple[str, str]:
        """(why, what to do) when the target cannot move; ('', '') when it can."""
        git.worktree_list(self.root, fresh=True)  # another shell may have checked it out since (the rest read this)
        for path, busy in _operations_on(self.root, self.project.repo.common_dir, target):
            return f"the target {target} is being worked on at {path}: {busy} in progress", f"finish or abort it in {path}"
        for path in self._target_checkouts(target):
            dirty = git.work_status(path)
            tracked = [p for code, p in dirty if code != "??"]
            if tracked:
                return f"the target {target} is checked out at {path} with uncommitted changes: {_shown(tracked)}", f"commit or stash them in {path}"
            if old and new:
                lost = in_the_way(self.root, path, old, new)
                if lost:
                    return (
                        f"the target {target} is checked out at {path} with untracked or ignored files the landing would overwrite: {_shown(lost)}",
                        f"commit, move or remove them in {path}",
                    )
        return "", ""

    def _follow_checkouts(self, target: str, old: str, new: str) -> str:
        """The target moved: the checkouts that have it follow, file by file
        as a fast-forward would (read-tree refuses to lose a change).  ''
        when they did, else why not (the caller moves the target back: a
        HEAD moved with its files old is never left; docs/faults.md row 43)."""
        for path in self._target_checkouts(target):
            r = git.run(path, "read-tree", "-m", "-u", old, new, check=False)
            if r.returncode != 0:
                return f"the files at {path} could not follow ({(r.stderr or r.stdout).strip()[:300]})"
        return ""

    def _move_branch(self, cand: Candidate, tip: str, new: str, o: Outcome) -> None:
        """The agent's branch moves to what landed (gc sees it merged), and
        its environment's files follow when clean; under the repository
        lock, for this moment only."""
        if tip == new and cand.where == self.root:
            return  # it landed as it is (it was on top of the target): nothing of the agent's moves
        with self.project.store.locked("land", wait_message=True):
            busy = self.project.store.agent_busy(cand.agent.name)
            if busy is not None:
                # a running `up` works in its environment now (it claimed it;
                # it does so without the repository lock, docs/faults.md row 10)
                o.why = f"its branch was left at {_short(tip)}: {busy} is working on it now"
                return
            if cand.env is not None and self._uncommitted(cand):
                o.why = f"its branch was left at {_short(tip)}: {self._uncommitted(cand)}"
                return
            lost = in_the_way(self.root, cand.env, tip, new) if cand.env is not None else []
            if lost:  # ignored files the landing would overwrite are work too (docs/faults.md row 43)
                o.why = f"its branch was left at {_short(tip)}: untracked or ignored files in {cand.env} would be overwritten: {_shown(lost)}"
                return
            if cand.where != self.root:  # a clone: bring what landed into it
                git.run(cand.where, "fetch", "-q", "--no-tags", "--", str(self.root), f"+refs/heads/{self.project.manifest.land_target()}:refs/hybridiso/landed")
            moved = git.run(cand.where, "update-ref", "-m", "hybridiso land", f"refs/heads/{cand.branch}", new, tip, check=False).returncode == 0
            if not moved:
                o.why = f"its branch {cand.branch} moved since it was checked: left as it is"
                return
            if cand.env is not None:
                r = git.run(cand.env, "read-tree", "-m", "-u", tip, new, check=False)
                if r.returncode != 0:
                    output.warn(f"{cand.branch} moved to {_short(new)} but {cand.env} could not follow: run `git -C {cand.env} reset --keep {new}`")
            if cand.where != self.root:
                git.run(self.root, "update-ref", "-d", f"refs/hybridiso/land/{cand.agent.name}", check=False)

    def _push(self, run: Run, new: str, o: Outcome) -> None:
        remote = self.project.manifest.land.push
        if not remote:
            return
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            r = git.run(self.root, "push", "-q", "--porcelain", "--", remote, f"{new}:refs/heads/{run.target}", check=False)
            if r.returncode == 0:
                o.pushed = True
                return
            # rejected: the remote moved; what it has now decides
            git.run(self.root, "fetch", "-q", "--no-tags", "--", remote, f"refs/heads/{run.target}", check=False)
            theirs = git.resolve_commit(self.root, "FETCH_HEAD")
            if theirs is not None and not git.is_ancestor(self.root, theirs, new):
                o.pushed = False
                o.why += f"; push to {remote} rejected: its {run.target} has commits that {run.target} here lacks (fetch and land again)"
                return
            time.sleep(0.2 * attempt)
        o.pushed = False
        o.why += f"; push to {remote} failed {PUSH_ATTEMPTS} times: {(r.stderr or r.stdout).strip()[-300:]}"

    # --- after a killed run ---------------------------------------------------

    def recover(self) -> str:
        """Clean up after a run that was killed: stop its check, finish the
        landing it was in the middle of, remove its scratch worktrees.  The
        journal is checked whole first: one that names what land never
        made is refused before anything in it is acted on (docs/faults.md row 42)."""
        said = []
        journal = self.store.read_journal()
        if journal is not None:
            why = check_journal(self.project, self.state, journal)
            if why:
                raise self.store.invalid(why)
            if journal.groups:
                left = process_groups.stop(journal.groups)
                said.append("its check was stopped" + (f" (still running: {', '.join(left)})" if left else ""))
            dropped = 0
            for d in journal.databases:
                try:
                    check_dbs.drop(d["server"], d["name"])
                    dropped += 1
                except UserError as e:
                    said.append(f"its check database {d['name']} could not be dropped: {e.message}")
            if dropped:
                said.append(f"{dropped} check database{'s' if dropped != 1 else ''} dropped")
            landing = journal.landing
            if landing is not None:
                said.append(self._finish(landing))
            said.insert(0, f"the land run of pid {journal.pid} was interrupted ({journal.agent or 'before a candidate'}, {journal.phase or 'starting'})")
        removed, left = 0, []
        scratch = self.store.scratch_dir
        for entry in git.scratch_entries(self.root, scratch):
            gone = not os.path.lexists(entry)
            why = applying.remove_scratch(self.root, self.store.anchor, scratch, entry)
            if why:
                left.append(why)
            elif not gone:
                removed += 1
        if removed:
            said.append(f"{removed} scratch worktree{'s' if removed != 1 else ''} removed")
        removed = 0
        for entry in scratch_clones.entries(self.store.clones_dir):
            why = scratch_clones.remove(self.project, self.store.clones_dir, entry)
            if why:
                left.append(why)
            else:
                removed += 1
        if removed:
            said.append(f"{removed} scratch clone{'s' if removed != 1 else ''} removed")
        said.extend(left)
        self.store.clear_journal()
        text = "; ".join(said)
        if text:
            output.message(f"hybridiso: {text}")
        return text

    def _finish(self, landing: Landing) -> str:
        now = git.resolve_commit(self.root, landing.target_ref)
        if now is None or not git.is_ancestor(self.root, landing.landed, now):
            return f"{landing.agent} had not landed: it is a candidate again"
        # killed between the compare-and-swap and the checkouts' files
        # following: a checkout still on the landed commit follows now
        # (read-tree refuses to lose a change; docs/faults.md row 43)
        target = landing.target_ref.removeprefix("refs/heads/")
        unfollowed = self._follow_checkouts(target, landing.before, landing.landed) if now == landing.landed else ""
        where = Path(landing.where)
        moved = git.run(where, "update-ref", f"refs/heads/{landing.branch}", landing.landed, landing.tip, check=False).returncode == 0
        said = f"{landing.agent} had landed; its branch " + ("now points at what landed" if moved else "had moved since, so it was left as it is")
        if unfollowed:
            said += f"; {unfollowed}: run `git reset --keep {landing.landed}` there"
        return said


def _shown(files: Sequence[str]) -> str:
    return ", ".join(files[:10]) + (f" (+{len(files) - 10} more)" if len(files) > 10 else "")


def in_the_way(repo: Path, checkout: Path, old: str, new: str) -> list[str]:
    """What is on disk in ``checkout`` (at ``old``) but not tracked there,
    that moving its files to ``new`` would write over: an untracked or
    ignored file (``read-tree -m -u`` overwrites ignored ones silently), or a
    file or symlink where ``new`` has a directory.  Nothing is opened or
    followed (lstat only).  The commits are read in ``repo``, which has
    them (a clone's environment gets ``new`` only later), never by running
    git in the checkout."""
    changed, added = git.changed_and_added(repo, old, new)
    if not changed:
        return []
    found: set[str] = set()
    for rel in sorted(changed):
        parts = rel.split("/")
        for i in range(1, len(parts)):  # a file where a directory lands
            parent = "/".join(parts[:i])
            try:
                mode = os.lstat(checkout / parent).st_mode
            except OSError:
                break
            if not stat.S_ISDIR(mode):
                if parent not in changed:
                    found.add(parent)
                break
        else:
            if rel in added and os.path.lexists(checkout / rel):  # no file of old's: untracked or ignored
                found.add(rel)
    return sorted(found)


_OPERATIONS = (("rebase-merge/head-name", "a rebase"), ("rebase-apply/head-name", "a rebase"))
_ON_BRANCH = (("MERGE_HEAD", "a merge"), ("CHERRY_PICK_HEAD", "a cherry-pick"), ("REVERT_HEAD", "a revert"))


def _operations_on(repo: Path, common_dir: Path, target: str) -> list[tuple[Path, str]]:
    """(worktree, what) for each rebase of ``target``, and each merge,
    cherry-pick or revert on a checkout of it, in progress: moving
    the target under them would be overwritten by, or lose, their result.
    Each worktree's git dir is found from git's records (the first listed is
    the main one), never by running git in it."""
    found = []
    ref = f"refs/heads/{target}"
    for i, wt in enumerate(git.worktree_list(repo)):
        if wt.bare or wt.prunable:
            continue
        gitdir = common_dir if i == 0 else git.worktree_entry(common_dir, wt.path)
        if gitdir is None:
            continue
        for rel, what in _OPERATIONS:
            with contextlib.suppress(OSError, UserError):
                if (safe_files.read_text(gitdir, rel, limit=4096) or "").strip() == ref:
                    found.append((wt.path, what))
        if wt.branch == target:
            found.extend((wt.path, what) for rel, what in _ON_BRANCH if os.path.lexists(gitdir / rel))
    return found


PHASES = ("", "apply", "check", "landing", "landed")
_RUN = re.compile(r"\d{8}T\d{6}-\d+")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def check_journal(project: Project, state: State, journal: Journal) -> str:
    """Why ``journal`` is not one a land run of this repository wrote ('':
    it may be); the journal is treated like the state file (docs/faults.md
    row 42): each process group must carry a token land issued, each
    database a check database's name on a server the manifest names, and
    a landing must name a manifest agent, its branch, the repository (or
    the agent's own recorded clone), the configured target and commits
    that exist."""
    names = {a.name for a in project.manifest.agents}
    if not _RUN.fullmatch(journal.run):
        return f"run {journal.run!r} is not a run id land gives"
    if journal.agent and journal.agent not in names:
        return f"agent {journal.agent!r} is not in the manifest"
    if journal.phase not in PHASES:
        return f"phase {journal.phase!r} is not one land writes"
    for group in journal.groups:
        if not process_groups.is_land_token(group.token, project.id):
            return f"process group {group.pgid} does not carry a token land issued (land:{project.id}:...): it is not a check of land's"
    for d in journal.databases:
        if not check_dbs.is_ours(project, d["server"], d["name"]):
            return f"database {d['name']!r} is not a check database of this repository on a server its manifest names"
    landing = journal.landing
    if landing is None:
        return ""
    if landing.agent not in names:
        return f"its landing names agent {landing.agent!r}, not in the manifest"
    agent = project.manifest.agent(landing.agent)
    if landing.branch != agent.branch_name:
        return f"its landing names branch {landing.branch!r}, not {agent.branch_name} (agent {agent.name}'s)"
    ref = f"refs/heads/{project.manifest.land_target()}"
    if landing.target_ref != ref:
        return f"its landing names target {landing.target_ref!r}, not {ref}"
    allowed = {str(project.root), *(str(c.where) for c in candidates(project, state, [agent.name]))}
    if landing.where not in allowed:
        return f"its landing names {landing.where!r}, neither this repository nor agent {agent.name}'s recorded environment"
    for key in ("tip", "landed", "before"):
        sha = getattr(landing, key)
        if not _SHA.fullmatch(sha) or git.resolve_commit(project.root, sha) != sha:
            return f"its landing's {key} {sha!r} is not a commit of this repository"
    # moving the branch from tip to landed must lose nothing: landed is on
    # top of before and holds tip's changes (a merge of tip into it changes nothing)
    if not git.is_ancestor(project.root, landing.before, landing.landed):
        return f"its landing's landed {landing.landed[:10]} is not on top of before {landing.before[:10]}"
    if git.merge_tree(project.root, landing.landed, landing.tip) != git.tree_of(project.root, landing.landed):
        return f"its landing's landed {landing.landed[:10]} does not hold tip {landing.tip[:10]}'s changes: moving {landing.branch} there would lose them"
    return ""


def run_target(project: Project) -> str:
    return project.manifest.land_target()


def _describe(command: Command) -> str:
    return command if isinstance(command, str) else " ".join(command)


def _message(method: str, agent: str, branch: str, repo: Path, target: str, tip: str) -> str:
    if method == "rebase":
        return ""  # the rebased commits keep their own messages
    if method == "merge":
        return f"Land {agent}: merge {branch}"
    subjects = git.run(repo, "log", "--no-merges", "--format=* %s", f"{target}..{tip}", check=False).stdout.strip()
    return f"Land {agent}: {branch}\n\n{subjects}\n"
