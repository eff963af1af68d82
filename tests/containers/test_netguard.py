"""netguard's rules and the manifest keys of a container agent's boundary,
without the engine (tests/containers/test_container_boundary.py tries them for real)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybridiso import egress
from hybridiso.containers import netguard
from hybridiso.manifest import ManifestError
from hybridiso.manifest_file import parse_manifest


def test_egress_entries_are_addresses_blocks_or_names_with_a_port() -> None:
    assert str(egress.parse_egress("10.0.0.5:5432")) == "10.0.0.5:5432"
    assert str(egress.parse_egress("10.1.2.3/16:443")) == "10.1.0.0/16:443"
    assert str(egress.parse_egress("PyPI.org:443")) == "pypi.org:443"
    udp = egress.parse_egress("10.0.0.53:53/udp")
    assert (udp.host, udp.port, udp.protocol) == ("10.0.0.53", 53, "udp") and not udp.is_name
    for bad, why in (
        ("pypi.org", "is not HOST:PORT"),
        ("10.0.0.5:0", "not in 1-65535"),
        ("10.0.0.5:70000", "not in 1-65535"),
        ("10.0.0.5:53/icmp", "tcp or udp"),
        ("[::1]:443", "IPv4 only"),
        ("fd00::1:443", "IPv4 only"),
        ("127.0.0.1:80", "its own loopback"),
        ("exa mple.org:80", "neither an IPv4 address"),
        ("-bad-.org:80", "neither an IPv4 address"),
    ):
        with pytest.raises(ValueError, match=why):
            egress.parse_egress(bad)


def test_the_rules_are_written_as_iptables_save_prints_them() -> None:
    guard = netguard.Guard("0123456789ab", "api", netguard.bridge_name("0123456789ab", "api"), (("10.0.0.5", 5432, "tcp"), ("10.0.0.0/24", 53, "udp")))
    assert guard.bridge.startswith("hyb") and len(guard.bridge) == 15
    b, k = guard.bridge, guard.key
    rules = netguard.chain_rules(guard)
    assert rules[f"HYBRIDISO-F-{k}"] == [
        f"-A HYBRIDISO-F-{k} -i {b} -o {b} -j RETURN",
        f"-A HYBRIDISO-F-{k} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A HYBRIDISO-F-{k} -d 10.0.0.5/32 -i {b} -p tcp -m tcp --dport 5432 -j RETURN",
        f"-A HYBRIDISO-F-{k} -d 10.0.0.0/24 -i {b} -p udp -m udp --dport 53 -j RETURN",
        f"-A HYBRIDISO-F-{k} -j REJECT --reject-with icmp-admin-prohibited",
    ]
    assert rules[f"HYBRIDISO-I-{k}"] == [
        f"-A HYBRIDISO-I-{k} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A HYBRIDISO-I-{k} -d 10.0.0.5/32 -p tcp -m tcp --dport 5432 -j RETURN",
        f"-A HYBRIDISO-I-{k} -d 10.0.0.0/24 -p udp -m udp --dport 53 -j RETURN",
        f"-A HYBRIDISO-I-{k} -j REJECT --reject-with icmp-admin-prohibited",
    ]
    # IPv6: nothing but the agent's own network
    v6 = netguard.chain_rules(guard, v6=True)
    assert v6[f"HYBRIDISO-F-{k}"][-1].endswith("icmp6-adm-prohibited") and v6[f"HYBRIDISO-I-{k}"] == [f"-A HYBRIDISO-I-{k} -j REJECT --reject-with icmp6-adm-prohibited"]
    hooks = netguard.hook_rules(guard)
    assert all('--comment "hybridiso project=0123456789ab agent=api"' in h for h in hooks)
    # distinct agents, distinct bridges; the same agent, the same bridge
    assert netguard.bridge_name("0123456789ab", "api") == b != netguard.bridge_name("0123456789ab", "ui") != netguard.bridge_name("ba9876543210", "api")


def _saved(*rules: str, chains: tuple[str, ...] = ()) -> netguard.Table:
    text = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n"
    text += "".join(f":{c} - [0:0]\n" for c in chains) + "\n".join(rules) + "\nCOMMIT\n"
    return netguard.Table.parse(text)


def test_an_unchanged_agent_costs_no_write_and_a_changed_one_one_batch() -> None:
    guard = netguard.Guard("0123456789ab", "api", netguard.bridge_name("0123456789ab", "api"))
    empty = _saved("-A FORWARD -j DOCKER-USER", "-A DOCKER-USER -j RETURN")
    batch = netguard._apply_batch(guard, empty, False)
    assert batch is not None
    assert ":HYBRIDISO-FWD - [0:0]" in batch and f"-I DOCKER-USER 1 -j {netguard.CHAIN_FORWARD}" in batch and f"-I INPUT 1 -j {netguard.CHAIN_INPUT}" in batch
    # what that batch makes, read back: nothing to do
    chains = ("HYBRIDISO-FWD", "HYBRIDISO-IN", guard.forward_chain, guard.input_chain)
    rules = [f"-A DOCKER-USER -j {netguard.CHAIN_FORWARD}", f"-A INPUT -j {netguard.CHAIN_INPUT}", *netguard.hook_rules(guard)]
    rules += [r for rs in netguard.chain_rules(guard).values() for r in rs]
    installed = _saved(*rules, chains=chains)
    assert netguard._apply_batch(guard, installed, False) is None and netguard.in_force(guard, installed)
    assert [i.agent for i in netguard.installed(installed)] == ["api"]
    # an egress entry added: the agent's chains are refilled, its hooks replaced, nothing else touched
    wider = netguard.Guard(guard.project, guard.agent, guard.bridge, (("10.0.0.5", 443, "tcp"),))
    batch = netguard._apply_batch(wider, installed, False)
    assert batch is not None and not any(line.startswith((":HYBRIDISO-FWD", ":HYBRIDISO-IN", "-I ")) for line in batch)
    # status tells "isolated, older egress" from "not isolated"
    assert netguard.hooked(wider, installed) and not netguard.in_force(wider, installed)
    flushed = _saved(*[r for r in rules if not r.startswith(f"-A {guard.forward_chain} ")], chains=chains)
    assert not netguard.hooked(guard, flushed)
    # removing the last agent takes the top chains and their jumps with it
    removal = netguard._remove_batch({guard.bridge}, installed)
    assert f"-X {guard.forward_chain}" in removal and f"-D DOCKER-USER -j {netguard.CHAIN_FORWARD}" in removal and "-X HYBRIDISO-FWD" in removal
    # ... but not while another agent still has rules
    other = netguard.Guard("0123456789ab", "ui", netguard.bridge_name("0123456789ab", "ui"))
    both = _saved(*rules, *netguard.hook_rules(other), chains=(*chains, other.forward_chain, other.input_chain))
    removal = netguard._remove_batch({guard.bridge}, both)
    assert "-X HYBRIDISO-FWD" not in removal and not any(other.bridge in line for line in removal)


def test_without_docker_user_the_rules_hook_into_forward() -> None:
    guard = netguard.Guard("0123456789ab", "api", netguard.bridge_name("0123456789ab", "api"))
    table = netguard.Table.parse("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")
    batch = netguard._apply_batch(guard, table, False)
    assert batch is not None and f"-I FORWARD 1 -j {netguard.CHAIN_FORWARD}" in batch


def _agent(extra: str) -> str:
    return f"agents:\n  - name: a\n    image: img\n{extra}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('    egress: ["10.0.0.5:5432"]\n', "egress lists what a network-isolated agent may still reach"),
        ("    network_fallback: none\n", "network_fallback applies to network-isolated agents"),
        ("    workload: {needs: [network-isolation, host-network]}\n", "host-network shares the host's network"),
        ("    cap_add: [NOT_A_CAP]\n", "unknown capabilities NOT_A_CAP"),
        ("    cap_add: [ALL]\n", "ALL would give back every capability"),
        ('    workload: {needs: [untrusted-code]}\n    egress: ["nowhere"]\n', "is not HOST:PORT"),
        ("    setup_on: elsewhere\n", "setup_on"),
    ],
)
def test_boundary_keys_are_checked_with_the_line(extra: str, message: str) -> None:
    with pytest.raises(ManifestError) as e:
        parse_manifest(_agent(extra), Path("hybridiso.yaml"))
    assert message in str(e.value) and "line " in str(e.value)


def test_container_keys_need_an_image() -> None:
    with pytest.raises(ManifestError, match="read_only shapes a container: give the agent an 'image'"):
        parse_manifest("agents:\n  - name: a\n    read_only: true\n", Path("hybridiso.yaml"))


def test_boundary_keys_parse() -> None:
    m = parse_manifest(
        _agent('    workload: {needs: [untrusted-code]}\n    egress: ["10.0.0.5:5432", "pypi.org:443"]\n    cap_add: [cap_net_raw]\n    read_only: true\n    setup_on: host\n    network_fallback: internal\n'),
        Path("hybridiso.yaml"),
    )
    a = m.agents[0]
    assert a.network_isolated and a.egress == ["10.0.0.5:5432", "pypi.org:443"] and a.cap_add == ["NET_RAW"]
    assert (a.read_only, a.setup_on, a.network_fallback) == (True, "host", "internal")
