"""``hybridiso exec AGENT -- CMD``: run a command in an agent's environment."""
from __future__ import annotations

import argparse
import os
import subprocess

from hybridiso import output, process_groups, strategies
from hybridiso.commands.common import check_names, project_from_args
from hybridiso.env_context import context, environment_for
from hybridiso.errors import UserError
from hybridiso.project import Project
from hybridiso.envs.reconcile import adopt_from_reality
from hybridiso.state import PHASE_READY, AgentRecord

HELP = "run a command in an agent's environment (its directory and env vars, or inside its container)"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "exec",
        help=HELP,
        description=HELP + ". The command's exit code becomes hybridiso's.",
        epilog="example: hybridiso exec api -- git status",
    )
    p.add_argument("agent", metavar="AGENT")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments")
    # no command is a usage error (exit 2), said by argparse's own path
    p.set_defaults(usage_error=p.error)


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        args.usage_error("no command given: hybridiso exec AGENT -- CMD [ARGS...]")
    project = project_from_args(args)
    state = project.store.load()
    adopt_from_reality(project, state)
    check_names(project, [args.agent], state)
    if args.agent not in state.agents:
        raise UserError(f"agent {args.agent} has no environment yet", hint=f"hybridiso up {args.agent}")
    ctx = context(project, state, args.agent)
    refuse_unfinished(project, ctx.record)
    strategy = strategies.get(ctx.record.strategy)
    if not strategy.observe(ctx).exists:
        raise UserError(f"agent {args.agent}'s directory {ctx.path} is missing", hint=f"hybridiso up {args.agent}")
    env = environment_for(project, ctx.agent, ctx.record)
    argv, cwd = strategy.exec_argv(ctx, command, env)
    try:
        # down finds (and with --force stops) what still runs in it
        token = {process_groups.TOKEN_VAR: process_groups.exec_token(project.id, ctx.name)}
        code = subprocess.call(argv, cwd=cwd, env={**os.environ, **env, **token})
    except FileNotFoundError:
        # the shell's codes: 127 not found, 126 cannot run
        output.message(f"hybridiso: error: command not found: {argv[0]}")
        return 127
    except PermissionError:
        output.message(f"hybridiso: error: command not executable: {argv[0]}")
        return 126
    return strategy.after_exec(ctx, command, code)  # a container's commits are on the agent branch when exec returns


def refuse_unfinished(project: Project, record: AgentRecord) -> None:
    """An environment still ``creating`` is either being made by a running
    ``up`` or left half-made by one that died: the next ``up`` rolls it back,
    so nothing may be started in it (docs/faults.md row 25)."""
    if record.phase == PHASE_READY:
        return
    running = project.store.agent_holder(record.name) is not None
    why = "a running `hybridiso up` is creating it" if running else "its creation was interrupted (an `up` stopped half-way)"
    raise UserError(
        f"agent {record.name}'s environment is not ready: {why}",
        hint="wait for that `up` to finish, then run exec again"
        if running
        else f"`hybridiso up {record.name}` rolls it back and creates it again (it keeps it, and says so, if work was written into it)",
    )
