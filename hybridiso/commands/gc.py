"""``hybridiso gc``: find what is finished or abandoned, and clean it up."""
from __future__ import annotations

import argparse
import shutil
from dataclasses import asdict

from hybridiso import git, lifecycle, output, service_branches, strategies
from hybridiso.commands.common import add_json_flag, project_from_args
from hybridiso.gc_rules import FINDERS, Finding, _ctx
from hybridiso.project import Project
from hybridiso.reconcile import adopt_from_reality
from hybridiso.state import State

HELP = "remove merged, zombie and orphaned environments and what they own (dry run without --yes)"


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "gc",
        help=HELP,
        description=(
            "Find agents whose branch is merged into base (also squash and rebase merges, by content), "
            "zombie worktrees (directory deleted by hand), environments whose branch was deleted "
            "upstream, orphan directories in the workspace, and container resources and database "
            "branches of agents that are gone. Without --yes it only shows what it would do. "
            "Uncommitted or unmerged work is never deleted."
        ),
    )
    p.add_argument("--yes", "-y", action="store_true", help="do it")
    p.add_argument("--dry-run", action="store_true", help="show what would be done (the default without --yes)")
    add_json_flag(p)


def run(args: argparse.Namespace) -> int:
    project = project_from_args(args)
    act = args.yes and not args.dry_run
    with project.store.locked("gc"):
        state = project.store.load()
        if state.rebuilt_from:
            output.warn(state.rebuilt_from)
        adopt_from_reality(project, state)
        findings = [f for finder in FINDERS for f in finder(project, state)]
        findings += _docker_findings(project, state)
        done: list[dict[str, object]] = []
        for f in findings:
            result = "would remove" if f.action == "remove" else "kept"
            if act and f.action == "remove":
                result = _apply(project, state, f)
            done.append({**asdict(f), "result": result})
        project.store.save(state)  # remembered upstreams; removed records
        _prune_temp_refs(project)
    removed = sum(1 for d in done if d["result"] == "removed")
    kept = sum(1 for d in done if d["result"] == "kept")
    if args.json:
        output.print_json({"findings": done, "removed": removed, "kept": kept, "dry_run": not act})
        return 0
    if not done:
        output.message("nothing to clean up")
        return 0
    output.print_table([[d["kind"], d["target"], d["result"], d["reason"]] for d in done], ["KIND", "WHAT", "RESULT", "WHY"])
    if act:
        output.message(f"removed {removed}, kept {kept}")
    else:
        would = sum(1 for d in done if d["result"] == "would remove")
        output.message(f"would remove {would}, keep {kept}; run `hybridiso gc --yes` to do it")
    return 0


def _apply(project: Project, state: State, f: Finding) -> str:
    if f.kind in ("merged", "upstream-deleted", "zombie") and f.agent in state.agents:
        ctx = _ctx(project, state, f.agent)
        strategy = strategies.get(ctx.record.strategy)
        if f.kind == "upstream-deleted" and not strategy.SHARES_REFS and ctx.path.is_dir():
            # a clone's branch lives only in the clone: bring it home before removing
            git.run(ctx.path, "push", "-q", "--no-verify", str(project.root), f"HEAD:refs/heads/{ctx.record.branch}")
        strategy.remove(ctx)
        service_branches.release(ctx)
        if f.detail.get("delete_branch") and strategy.SHARES_REFS and git.branch_exists(project.root, ctx.record.branch):
            git.delete_branch(project.root, ctx.record.branch)
        del state.agents[f.agent]
        lifecycle.log_path(project, f.agent, "setup").unlink(missing_ok=True)
        return "removed"
    if f.kind == "orphan-dir":
        shutil.rmtree(f.target)
        return "removed"
    if f.kind == "database":
        from hybridiso import databases

        databases.drop_branch(str(f.detail["server"]), f.target)
        return "removed"
    if f.kind == "docker":
        from hybridiso import docker_client

        docker_client.remove_labelled(dict(f.detail["labels"]))  # type: ignore[arg-type]
        return "removed"
    return "kept"


def _docker_findings(project: Project, state: State) -> list[Finding]:
    """Containers, networks, volumes labelled for this repository's agents
    that no longer exist."""
    from hybridiso import docker_client
    from hybridiso.strategies.container import repo_id

    ok, _ = docker_client.reachable()
    if not ok:
        return []
    from hybridiso.strategies.base import EnvContext
    from hybridiso.state import AgentRecord

    probe = EnvContext(project, None, AgentRecord(name="-", strategy="container", branch="-", path="-", base="-"))
    rid = repo_id(probe)
    found = docker_client.labelled_resources({docker_client.LABEL_PROJECT: rid})
    live = {n for n, r in state.agents.items() if r.strategy == "container"}
    agents: dict[str, int] = {}
    for kind in ("containers", "networks", "volumes"):
        for res in found[kind]:
            agent = res["labels"].get(docker_client.LABEL_AGENT)
            if agent and agent not in live:
                agents[agent] = agents.get(agent, 0) + 1
    return [
        Finding("docker", f"agent {a}", "remove", f"{n} Docker resources labelled for agent {a}, which no longer exists", a,
                {"labels": {docker_client.LABEL_PROJECT: rid, docker_client.LABEL_AGENT: a}})
        for a, n in sorted(agents.items())
    ]


def _prune_temp_refs(project: Project) -> None:
    refs = git.out(project.root, "for-each-ref", "--format=%(refname)", "refs/hybridiso/gc/").splitlines()
    for ref in refs:
        git.run(project.root, "update-ref", "-d", ref)
    git.worktree_prune(project.root)
