"""``hybridiso render [AGENT...]``: write container agents' compose files, start nothing."""
from __future__ import annotations

import argparse

from hybridiso import output
from hybridiso.commands.common import add_json_flag, check_names, context, make_plan, project_from_args
from hybridiso.container_spec import project_name
from hybridiso.errors import UserError
from hybridiso.reconcile import adopt_from_reality
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
    from hybridiso.strategies import container

    project = project_from_args(args)
    state = project.store.load()
    adopt_from_reality(project, state)
    names = check_names(project, args.agents)
    plan = make_plan(project, state)
    written = []
    for p in plan.agents:
        if names and p.agent.name not in names:
            continue
        if p.strategy != "container":
            if names:
                raise UserError(f"agent {p.agent.name} is a {p.strategy}, not a container: it has no compose file")
            continue
        record = state.agents.get(p.agent.name) or AgentRecord(
            name=p.agent.name, strategy=p.strategy, branch=p.branch, path=p.path, base=project.manifest.base
        )
        ctx = context(project, state, p.agent.name) if p.agent.name in state.agents else None
        if ctx is None:
            from hybridiso.strategies.base import EnvContext

            ctx = EnvContext(project, p.agent, record)
        path = container.render(ctx)
        written.append({"agent": p.agent.name, "project": project_name(str(project.root), p.agent.name), "file": str(path)})
    if args.json:
        output.print_json(written)
    elif written:
        output.print_table([[w["agent"], w["project"], w["file"]] for w in written], ["AGENT", "COMPOSE PROJECT", "FILE"])
    else:
        output.message("no container agents in the manifest")
    return 0
