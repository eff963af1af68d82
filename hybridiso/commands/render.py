"""``hybridiso render [AGENT...]``: write container agents' compose files, start nothing."""
from __future__ import annotations

import argparse

from hybridiso import output, ports, strategies
from hybridiso.commands.common import add_json_flag, check_names, make_plan, project_from_args
from hybridiso.env_context import context
from hybridiso.errors import UserError
from hybridiso.envs.reconcile import adopt_from_reality
from hybridiso.state import AgentRecord

HELP = "write the compose file of each container agent without starting anything"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "render",
        help=HELP,
        description=HELP + ". Each file runs by hand with `docker compose -f FILE up`.",
    )
    p.add_argument("agents", nargs="*", metavar="AGENT")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    from hybridiso.env_context import EnvContext

    project = project_from_args(args)
    with project.store.locked("render"):
        state = project.store.load()
        adopt_from_reality(project, state)
        names = check_names(project, args.agents)
        plan = make_plan(project, state)
        chosen = []
        for p in plan.agents:
            if names and p.agent.name not in names:
                continue
            if not strategies.uses_docker(p.strategy):  # the agents with a compose file
                if names:
                    raise UserError(f"agent {p.agent.name} is a {p.strategy}, not a container: it has no compose file")
                continue
            chosen.append(p)
        # an agent not up yet gets the ports `up` would lease now; they are
        # not reserved until `up` records them
        provisional = ports.lease(
            {p.agent.name: p.agent.ports for p in chosen if p.agent.name not in state.agents},
            {n: r.ports for n, r in state.agents.items()},
            project.manifest.ports.bounds(),
            {port: e.who() for port, e in ports.leased_elsewhere(project.repo.common_dir).items()},
        )
        written = []
        for p in chosen:
            name = p.agent.name
            if name in state.agents:
                ctx = context(project, state, name)
            else:
                record = AgentRecord(
                    name=name, strategy=p.strategy, branch=p.branch, path=p.path,
                    base=project.manifest.base, ports=provisional[name],
                )
                ctx = EnvContext(project, p.agent, record)
            path = strategies.get(p.strategy).render(ctx)
            if path is None:
                continue
            is_up = name in state.agents
            written.append(
                {
                    "agent": name,
                    "project": project.compose_project(name),
                    "file": str(path),
                    "up": is_up,
                    "ports": dict(ctx.record.ports),
                }
            )
    if args.json:
        output.print_json(written)
    elif written:
        rows = [
            [w["agent"], w["project"], w["file"], "" if w["up"] else "not up: ports provisional, worktree not made yet"]
            for w in written
        ]
        output.print_table(rows, ["AGENT", "COMPOSE PROJECT", "FILE", "NOTE"])
        if not all(w["up"] for w in written):
            output.message("`docker compose -f FILE up` needs the agent's worktree: `hybridiso up AGENT` makes it")
    for p in chosen:
        if p.agent.network_isolated:
            # the rules live in the host's firewall, not in the file (docs/containers.md)
            output.warn(f"{p.agent.name}: started by hand, its container gets no network-isolation rules; `hybridiso up {p.agent.name}` writes them first")
    else:
        output.message("no container agents in the manifest")
    return 0
