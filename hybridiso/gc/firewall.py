"""gc finder for network-isolation rules whose agent is gone (issue 12).

``down`` removes an agent's rules with its network; these are what a crash,
a lost state file or a hand-removed environment left.  Rules are hybridiso's
when their hook comment names this project (netguard.py), and kept while a
record of the project still has that agent.  Without root the firewall
cannot be read: then nothing is found, and gc says why when the manifest has
isolated agents.
"""
from __future__ import annotations

from collections.abc import Callable

from hybridiso import output
from hybridiso.containers import netguard
from hybridiso.gc.rules import Finding
from hybridiso.project import Project
from hybridiso.state import State

FIREWALL = "firewall"


def firewall_findings(project: Project, state: State, dry_run: bool) -> list[Finding]:
    from hybridiso.strategies.container import project_label

    why = netguard.unavailable()
    if why is not None:
        if any(a.network_isolated for a in project.manifest.agents):
            output.warn(f"gc: network-isolation rules were not checked: {why}")
        return []
    ours = project_label(project)
    known = {netguard.bridge_name(ours, a.name): a.name for a in project.manifest.agents}
    from hybridiso.gc.land_leftovers import land_running

    landing = land_running(project)
    findings = []
    for rule in netguard.installed():
        agent = rule.agent if rule.project == ours else known.get(rule.bridge, "") if not rule.project else ""
        if not agent or agent in state.agents:
            continue
        if landing and agent in known.values():
            continue  # maybe a land check's: its isolation must hold while it runs
        findings.append(
            Finding(
                FIREWALL,
                f"network-isolation rules of agent {agent}",
                True,
                "firewall rules for an agent that no longer exists",
                [f"iptables chains HYBRIDISO-F-{rule.bridge[3:]} and HYBRIDISO-I-{rule.bridge[3:]} (bridge {rule.bridge})"],
                apply=_remover(rule.bridge),
            )
        )
    return findings


def _remover(bridge: str) -> Callable[[], list[str]]:
    def apply() -> list[str]:
        netguard.remove({bridge})
        return [f"rules of bridge {bridge}" for r in netguard.installed() if r.bridge == bridge]

    return apply
