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

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hybridiso import git, output, planner, process_groups, strategies
from hybridiso.process import CommandError
from hybridiso.errors import UserError
from hybridiso.land import apply as applying
from hybridiso.land import databases as check_dbs
from hybridiso.land.check import run_checks
from hybridiso.land.store import Journal, LandStore, Landing
from hybridiso.manifest import Agent, Command
from hybridiso.project import Project
from hybridiso.services.branches import env_var as branches_env_var
from hybridiso.setup_runner import LogFile
from hybridiso.state import ProcessGroup, State

MAX_ATTEMPTS = 3  # applying and checking again after the target or the branch moved
PUSH_ATTEMPTS = 3

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
            if o.commits == 0 or git.is_ancestor(self.root, tip, current):
                if explicit:
                    o.result, o.why = EMPTY, "nothing new beyond the target"
                    run.outcomes.append(o)
                continue
            why = self._uncommitted(cand)
            if why:
                o.result, o.why = REFUSED, why
            else:
                made, conflicts = applying.simulate(self.root, current, tip)
                if made is None:
                    o.result, o.paths = CONFLICT, list(conflicts)
                    o.why = f"would conflict in {', '.join(conflicts)}" if conflicts else "git could not merge it"
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
                    applying.remove_scratch(self.root, build.scratch)
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
        if o.commits == 0 or git.is_ancestor(self.root, tip, base):
            if explicit:
                o.result, o.why = EMPTY, "nothing new beyond the target"
            return None
        why = self._uncommitted(cand)
        if why:
            o.result, o.why = REFUSED, why
            return None
        return tip

    def build(self, run: Run, cand: Candidate, base: str, tip: str, o: Outcome) -> Build | None:
        """Predict, then apply ``tip`` onto ``base`` in a new scratch
        worktree; None (``o.result`` set) on a conflict or when nothing is
        new, the scratch worktree then removed."""
        name = cand.agent.name
        conflicts = applying.predict(self.root, base, tip)
        if conflicts:
            o.result, o.paths, o.why = CONFLICT, list(conflicts), f"conflicts with {run.target} in {', '.join(conflicts)}"
            return None
        scratch = applying.new_scratch(self.store.scratch_dir, name)
        self._phase(name, "apply")
        _log(name, "apply", f"{o.method} {o.commits} commit{'s' if o.commits != 1 else ''} onto {run.target} ({_short(base)})")
        try:
            made = applying.apply(self.root, scratch, o.method, base, tip, _message(o.method, name, cand.branch, self.root, base, tip))
        except BaseException:
            applying.remove_scratch(self.root, scratch)
            raise
        if made.commit is None:
            applying.remove_scratch(self.root, scratch)
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
        kept = self.store.kept_dir / build.scratch.name
        git.run(self.root, "worktree", "move", str(build.scratch), str(kept))
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
        self._follow_checkouts(run.target, target, new)
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
        from hybridiso.land import container_check  # a container agent's check runs in its image

        image = container_check.for_candidate(self.project, self.state, cand.agent)
        try:
            result = run_checks(
                commands,
                scratch,
                env,
                log,
                timeout,
                header=f"land {o.agent} {commit}",
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
        to tracked files, or untracked files where the landing writes."""
        changed = git.changed_paths(self.root, old, new) if old and new else None
        for path in self._target_checkouts(target):
            dirty = git.work_status(path)
            tracked = [p for code, p in dirty if code != "??"]
            untracked = [p for code, p in dirty if code == "??" and (changed is None or p in changed)] if changed is not None else []
            if tracked or untracked:
                files = tracked + untracked
                shown = ", ".join(files[:10]) + (f" (+{len(files) - 10} more)" if len(files) > 10 else "")
                why = f"the target {target} is checked out at {path} with uncommitted changes: {shown}"
                if raising:
                    raise UserError(why + "; nothing was landed", hint=f"commit or stash them in {path}, then run `hybridiso land` again")
                return why + " (commit or stash them, then run `hybridiso land` again)"
        return ""

    def _follow_checkouts(self, target: str, old: str, new: str) -> None:
        """The target moved: the checkouts that have it follow, file by file
        as a fast-forward would (read-tree refuses to lose a change)."""
        for path in self._target_checkouts(target):
            r = git.run(path, "read-tree", "-m", "-u", old, new, check=False)
            if r.returncode != 0:
                output.warn(f"{target} moved to {_short(new)} but the files at {path} could not follow ({(r.stderr or r.stdout).strip()[:300]}); run `git -C {path} reset --keep {new}`")

    def _move_branch(self, cand: Candidate, tip: str, new: str, o: Outcome) -> None:
        """The agent's branch moves to what landed (gc sees it merged), and
        its environment's files follow when clean; under the repository
        lock, for this moment only."""
        with self.project.store.locked("land", wait_message=True):
            if cand.env is not None and self._uncommitted(cand):
                o.why = f"its branch was left at {_short(tip)}: {self._uncommitted(cand)}"
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
        landing it was in the middle of, remove its scratch worktrees."""
        said = []
        journal = self.store.read_journal()
        if journal is not None:
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
        removed = 0
        if self.store.scratch_dir.is_dir():
            for entry in sorted(self.store.scratch_dir.iterdir()):
                applying.remove_scratch(self.root, entry)
                removed += 1
        if removed:
            said.append(f"{removed} scratch worktree{'s' if removed != 1 else ''} removed")
        self.store.clear_journal()
        text = "; ".join(said)
        if text:
            output.message(f"hybridiso: {text}")
        return text

    def _finish(self, landing: Landing) -> str:
        now = git.resolve_commit(self.root, landing.target_ref)
        if now is None or not git.is_ancestor(self.root, landing.landed, now):
            return f"{landing.agent} had not landed: it is a candidate again"
        where = Path(landing.where)
        moved = git.run(where, "update-ref", f"refs/heads/{landing.branch}", landing.landed, landing.tip, check=False).returncode == 0
        if where == self.root or not moved:
            pass
        return f"{landing.agent} had landed; its branch " + ("now points at what landed" if moved else "had moved since, so it was left as it is")


def _describe(command: Command) -> str:
    return command if isinstance(command, str) else " ".join(command)


def _message(method: str, agent: str, branch: str, repo: Path, target: str, tip: str) -> str:
    if method == "merge":
        return f"Land {agent}: merge {branch}"
    subjects = git.run(repo, "log", "--no-merges", "--format=* %s", f"{target}..{tip}", check=False).stdout.strip()
    return f"Land {agent}: {branch}\n\n{subjects}\n"
