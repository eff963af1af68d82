"""The manifest's checks across fields: what no single field can know.

Each check reads the manifest as far as it is valid (``manifest.Checked``)
and skips what field errors took out, so one run reports every problem
(docs/faults.md rows 1, 2, 39), sorted by line with the field errors.  The workspace
check needs the repository (docs/faults.md row 29); the check against the repository's
existing branches needs git and runs at plan time (``existing_branch_problems``).
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

from hybridiso.manifest import Agent, Checked, Manifest, Problem, RepoContext
from hybridiso import names
from hybridiso.names import env_var_for_port, env_var_for_service, ref_conflicts_with_existing
from hybridiso.planner import Facts, decide

# what hybridiso itself puts in every agent's environment (envfile.py)
HYBRIDISO_VARS = ("HYBRIDISO_AGENT", "HYBRIDISO_STRATEGY", "HYBRIDISO_BRANCH", "HYBRIDISO_PATH")


def check(c: Checked, repo: RepoContext | None) -> list[Problem]:
    """Every rule's problems (the manifest sorts them by line), then the
    workspace's when the repository is known."""
    problems = [problem for rule in RULES for problem in rule(c)]
    if repo is not None:
        problems += workspace_problems(c, repo)
    return problems


def _agent_names(c: Checked) -> list[Problem]:
    problems = []
    seen: dict[str, int] = {}
    for i, agent in enumerate(c.manifest.agents):
        if agent.name in seen:
            first = seen[agent.name]
            problems.append(
                Problem(
                    c.line(c.agent_loc(i, "name")),
                    f"agents[{c.agent_pos[i]}].name",
                    f"duplicate agent name {agent.name!r}: agents[{c.agent_pos[first]}] (line "
                    f"{c.line(c.agent_loc(first, 'name'))}) has the same name",
                )
            )
        else:
            seen[agent.name] = i
    return problems


def _services_known(c: Checked) -> list[Problem]:
    m = c.manifest
    problems = []
    for i, agent in enumerate(m.agents):
        for s in agent.services:
            # a service with field errors is reported there, not as unknown
            if s not in m.services and c.clean(("services", s)):
                known = ", ".join(sorted(m.services)) or "none declared"
                problems.append(
                    Problem(c.line(c.agent_loc(i, "services")), f"agents[{c.agent_pos[i]}].services", f"unknown service {s!r} (services: {known})")
                )
    return problems


# the fields the decision rules read: an agent missing one of them (a field
# error took it out) would be judged on the defaults, so it is not judged
_DECISION_FIELDS = ("isolation", "image", "command", "services", "resources", "healthcheck", "workload")


def _decidable(c: Checked, i: int, agent: Agent) -> bool:
    return c.agent_clean(i, *_DECISION_FIELDS) and all(c.clean(("services", s)) for s in agent.services)


def _containers_have_images(c: Checked) -> list[Problem]:
    """An agent the rules give a container needs an image to run."""
    m = c.manifest
    problems = []
    container_services = frozenset(n for n, s in m.services.items() if s.runs_in_container)
    for i, agent in enumerate(m.agents):
        if not _decidable(c, i, agent) or agent.image:
            continue
        decision = decide(agent, Facts(container_services))
        if decision.strategy == "container":
            problems.append(
                Problem(
                    c.line(c.agent_loc(i)),
                    f"agents[{c.agent_pos[i]}].image",
                    f"this agent gets a container ({decision.reason}), and a container needs an 'image' "
                    "(for example python:3.12-slim)",
                )
            )
    return problems


def _healthchecks_have_images(c: Checked) -> list[Problem]:
    return [
        Problem(c.line(c.agent_loc(i, "healthcheck")), f"agents[{c.agent_pos[i]}].healthcheck", "a healthcheck runs in the agent's container: give the agent an 'image'")
        for i, agent in enumerate(c.manifest.agents)
        if _decidable(c, i, agent) and agent.healthcheck is not None and not agent.image
    ]


def _host_network_reaches_services(c: Checked) -> list[Problem]:
    """A host-network container cannot reach services on the agent's own network."""
    m = c.manifest
    problems = []
    for i, agent in enumerate(m.agents):
        if not _decidable(c, i, agent) or "host-network" not in agent.workload.needs or not agent.image:
            continue
        in_containers = [s for s in agent.services if s in m.services and m.services[s].runs_in_container]
        if in_containers:
            problems.append(
                Problem(
                    c.line(c.agent_loc(i, "services")),
                    f"agents[{c.agent_pos[i]}].services",
                    f"{', '.join(in_containers)} would run in containers on the agent's own network, which a "
                    "host-network container cannot reach: drop 'host-network' from workload.needs, or give "
                    "the service a 'url' on a server the host reaches",
                )
            )
    return problems


def _branch_loc(c: Checked, i: int, agent: Agent) -> tuple[str | int, ...]:
    # the default branch hybridiso/<name> has no line of its own: the name's
    return c.agent_loc(i, "branch") if agent.branch else c.agent_loc(i, "name")


def _one_worktree_per_branch(c: Checked) -> list[Problem]:
    """docs/faults.md row 2: two worktree agents on one branch is impossible in
    git; said before any git call.  (With isolation: auto the planner gives
    the second a clone.)"""
    m = c.manifest
    problems = []
    by_branch: dict[str, int] = {}
    for i, agent in enumerate(m.agents):
        shares_refs = agent.isolation in names.STRATEGY_NAMES and agent.isolation not in names.OWN_REPOSITORY
        if not shares_refs or not c.agent_clean(i, "branch", "isolation"):
            continue
        first = by_branch.setdefault(agent.branch_name, i)
        if first != i:
            problems.append(
                Problem(
                    c.line(c.agent_loc(i, "branch")),
                    f"agents[{c.agent_pos[i]}].branch",
                    f"branch {agent.branch_name!r} is also used by agents[{c.agent_pos[first]}] "
                    f"({m.agents[first].name}); two worktrees cannot check out one branch: "
                    "give one a different branch, or isolation: clone",
                )
            )
    return problems


def _branches_do_not_nest(c: Checked) -> list[Problem]:
    """docs/faults.md row 39: git keeps 'feat' as a file, so 'feat/x' cannot
    exist beside it (git's "cannot lock ref", after seconds of retries).  Each
    branch's parents are looked up: linear in the agents, however many there are."""
    m = c.manifest
    problems = []
    owner: dict[str, int] = {}
    for i, agent in enumerate(m.agents):
        if c.agent_clean(i, "branch", "name"):
            owner.setdefault(agent.branch_name, i)
    for branch, i in owner.items():
        parts = branch.split("/")
        parent = next(("/".join(parts[:k]) for k in range(1, len(parts)) if "/".join(parts[:k]) in owner), None)
        if parent is None:
            continue
        j = owner[parent]
        later, earlier = (i, j) if i > j else (j, i)
        problems.append(
            Problem(
                c.line(_branch_loc(c, later, m.agents[later])),
                f"agents[{c.agent_pos[later]}].branch",
                f"branch {m.agents[later].branch_name!r} cannot exist beside branch {m.agents[earlier].branch_name!r} "
                f"of agents[{c.agent_pos[earlier]}] ({m.agents[earlier].name}): git stores a branch as a file, so one "
                "cannot be a directory of the other; give one another name",
            )
        )
    return problems


def _postgres_templates(c: Checked) -> list[Problem]:
    return [
        Problem(
            c.line(("services", name)),
            f"services.{name}.template",
            "a postgres service with a url needs 'template': the database each agent's branch is copied from",
        )
        for name, svc in c.manifest.services.items()
        if svc.kind == "postgres" and svc.url and not svc.template
    ]


def _service_variables(c: Checked) -> list[Problem]:
    """``my-db`` and ``my_db`` would both be MY_DB_URL: the second would win."""
    problems = []
    first: dict[str, str] = {}
    for name in c.manifest.services:
        var = env_var_for_service(name)
        if var in first:
            problems.append(
                Problem(
                    c.line(("services", name)),
                    f"services.{name}",
                    f"services {first[var]!r} (line {c.line(('services', first[var]))}) and {name!r} would both "
                    f"be the variable {var}: rename one",
                )
            )
        else:
            first[var] = name
    return problems


def _agent_variables(c: Checked) -> list[Problem]:
    """Each name that becomes a variable of an agent names one thing: a port,
    a service or an ``env:`` key (docs/faults.md row 39); otherwise one silently wins."""
    m = c.manifest
    problems = []
    reported_defaults: set[str] = set()
    for i, agent in enumerate(m.agents):
        # env: keys with errors were taken out one by one: the rest are checked
        if not c.agent_clean(i, "ports", "services"):
            continue
        made, clashes = _variables_made(c, i, agent)
        problems += clashes
        where = f"agents[{c.agent_pos[i]}]"
        for key in agent.env:
            if key in made:
                problems.append(
                    Problem(c.line(c.agent_loc(i, "env", key)), f"{where}.env.{key}", f"{key} is set by hybridiso for {made[key]}: choose another name")
                )
        for key in m.defaults.env:
            if key in made and key not in agent.env and key not in reported_defaults:
                reported_defaults.add(key)
                problems.append(
                    Problem(
                        c.line(("defaults", "env", key)),
                        f"defaults.env.{key}",
                        f"{key} is set by hybridiso for agent {agent.name}'s {made[key]}: choose another name",
                    )
                )
    return problems


def _variables_made(c: Checked, i: int, agent: Agent) -> tuple[dict[str, str], list[Problem]]:
    """The variables hybridiso sets for agent ``i`` (name -> what sets it),
    and where its ports and services would set one twice."""
    m = c.manifest
    where = f"agents[{c.agent_pos[i]}]"
    problems = []
    made: dict[str, str] = {v: "hybridiso" for v in HYBRIDISO_VARS}
    for port in agent.ports:
        made[env_var_for_port(port)] = f"port {port!r}"
    for s in agent.services:
        var = env_var_for_service(s)
        if var in made:
            problems.append(
                Problem(c.line(c.agent_loc(i, "services")), f"{where}.services", f"service {s!r} sets {var}, which {made[var]} sets too: rename one")
            )
        made.setdefault(var, f"service {s!r}")
    for kind, var in (("postgres", "DATABASE_URL"), ("redis", "REDIS_URL")):
        first = next((s for s in agent.services if s in m.services and m.services[s].kind == kind), None)
        if first is None:
            continue
        if made.setdefault(var, f"service {first!r}") != f"service {first!r}":
            problems.append(
                Problem(
                    c.line(c.agent_loc(i, "services")),
                    f"{where}.services",
                    f"{var} is the URL of {kind} service {first!r}, but {made[var]} sets it too: rename that service",
                )
            )
    return made, problems


# The rules across fields, in the order they run: each is small, named for
# what must hold, and reads only what field errors left valid.
RULES: tuple[Callable[[Checked], list[Problem]], ...] = (
    _agent_names,
    _services_known,
    _containers_have_images,
    _healthchecks_have_images,
    _host_network_reaches_services,
    _one_worktree_per_branch,
    _branches_do_not_nest,
    _postgres_templates,
    _service_variables,
    _agent_variables,
)


# --- the workspace (docs/faults.md row 29) ---------------------------------------------------


def workspace_problems(c: Checked, repo: RepoContext) -> list[Problem]:
    if not c.clean(("workspace",)):
        return []
    m = c.manifest
    line = c.line(("workspace",)) if m.workspace else 1
    try:
        ws = m.workspace_path(repo)
    except (OSError, RuntimeError, ValueError) as e:
        return [Problem(line, "workspace", f"cannot be resolved: {e}")]
    why = workspace_problem(ws, repo)
    if why is None:
        return []
    shown = f"{m.workspace!r}" if m.workspace else "the default"
    if str(ws) != m.workspace:
        shown += f" ({ws})"
    return [
        Problem(
            line,
            "workspace",
            f"{shown} {why}; hybridiso creates and removes directories there: give it a directory of its own, "
            f"e.g. workspace: ../{repo.root.name}.agents (the default)",
        )
    ]


def workspace_problem(ws: Path, repo: RepoContext) -> str | None:
    """Why ``ws`` (resolved) cannot be the workspace, or None."""
    root = repo.root.resolve()
    common = repo.common_dir.resolve()
    try:
        home: Path | None = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):
        home = None
    if ws == Path(ws.anchor):
        return "is the file system's root"
    if home is not None and ws == home:
        return "is your home directory"
    if home is not None and ws in home.parents:
        return "holds your home directory"
    if ws == root or root in ws.parents:
        return "is inside the repository's working tree (every environment would show as untracked files)"
    if ws == common or common in ws.parents:
        return "is inside the repository's git directory"
    if ws == root.parent:
        return "is the repository's parent directory (it holds the repository and its neighbours)"
    if ws in root.parents or ws in common.parents:
        return "holds the repository"
    for tree in repo.worktrees:
        tree = tree.resolve()
        if ws == tree or tree in ws.parents:  # (the agents' own worktrees are inside it, not around it)
            return f"is inside the worktree at {tree} (its files would show there as untracked)"
    if ws.exists() and not ws.is_dir():
        return "exists and is not a directory"
    return None


# --- against the repository, at plan time -------------------------------------------


def existing_branch_problems(m: Manifest, branches: Collection[str], created: Collection[str]) -> list[Problem]:
    """Agents' branches that git could not create beside the repository's
    ``branches`` (``feat`` when ``feat/x`` exists, or the reverse).  Agents
    in ``created`` already have their branch, and are not checked."""
    wanted = {a.branch_name: i for i, a in reversed(list(enumerate(m.agents))) if a.name not in created}
    problems = []
    for branch, other in ref_conflicts_with_existing(wanted, branches):
        i = wanted[branch]
        agent = m.agents[i]
        loc: tuple[str | int, ...] = ("agents", i, "branch") if agent.branch else ("agents", i, "name")
        problems.append(
            Problem(
                m.line_of(*loc),
                f"agents[{i}].branch",
                f"branch {branch!r} cannot be created: the repository has branch {other!r}, and git stores a branch "
                "as a file, so one cannot be a directory of the other; give the agent another branch "
                f"(or rename {other!r})",
            )
        )
    return problems
