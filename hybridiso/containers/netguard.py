"""Network isolation for container agents: iptables rules that hybridiso owns.

An agent with ``needs: [network-isolation]`` or ``[untrusted-code]`` gets a
bridge network of its own whose Linux bridge hybridiso names itself
(``hyb`` + 12 hex of the project id and the agent name, see ``bridge_name``),
so the rules below can be written before Docker makes the network and still
hold when it is made again (a pruned network, a hand-run ``docker compose
up``).  Measured on Docker 20.10 (issue 12): an ``internal: true`` network
alone is not enough -- a host listener on 0.0.0.0 answered through the
internal bridge's gateway -- so the boundary is the host's own firewall:

- ``HYBRIDISO-FWD``, jumped to first from ``DOCKER-USER`` (Docker's chain for
  user rules, itself first in ``FORWARD``; ``FORWARD`` when Docker made no
  ``DOCKER-USER``), sends every packet entering or leaving an agent's bridge
  to that agent's chain ``HYBRIDISO-F-<key>``: traffic between the agent and
  its own services (same bridge) and replies to connections that were allowed
  go on to Docker's own rules (``RETURN``: we only ever take away); the
  manifest's ``egress:`` destinations go on too; everything else is rejected
  (another agent, the internet, a VPN, the cloud metadata address).
- ``HYBRIDISO-IN``, jumped to first from ``INPUT``, does the same for packets
  from the bridge to the host's own addresses (the bridge's gateway, every
  host interface, a service listening on 0.0.0.0, the Docker API if it
  listens on TCP): only replies (published ports: docker-proxy connects from
  the host, the container answers) and ``egress:`` to a host address pass.

Rejected with ``icmp-admin-prohibited`` ("No route to host"), so an agent's
tools fail at once instead of hanging, and the error says what happened.
The same chains in ``ip6tables`` reject all IPv6 (agent networks are IPv4
only; Docker also disables IPv6 inside their containers).

Each hook rule carries a comment naming the project and the agent, so
``down`` removes exactly the agent's rules and ``gc`` finds the ones whose
agent is gone.  Changes are one ``iptables-restore --noflush`` batch (one
kernel transaction), under a machine-wide lock (several repositories share
the two top chains).  Needs root (``CAP_NET_ADMIN``) and an engine whose
networks live in this machine's network namespace: rootless Docker, Docker
Desktop and a remote ``DOCKER_HOST`` do not qualify, and ``up`` refuses
(``unavailable``, ``bridge_visible``) unless the manifest chooses a weaker
mode (docs/containers.md).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hybridiso import process
from hybridiso.egress import Egress
from hybridiso.errors import UserError

CHAIN_FORWARD = "HYBRIDISO-FWD"
CHAIN_INPUT = "HYBRIDISO-IN"
BRIDGE_PREFIX = "hyb"  # + 12 hex: 15 characters, the kernel's limit for an interface name
DOCKER_USER = "DOCKER-USER"
LOCK_PATHS = (Path("/run/lock"), Path("/run"), Path("/var/lock"))
LOCK_NAME = "hybridiso-netguard.lock"
COMMENT_PREFIX = "hybridiso"
TIMEOUT = 30

_COMMENT_RE = re.compile(r'--comment "?hybridiso project=(?P<project>[0-9a-f]+) agent=(?P<agent>[A-Za-z0-9_.-]+)"?')
_CHAIN_RE = re.compile(r"^:(HYBRIDISO-[FI]-(?P<key>[0-9a-f]{12})) ")


class Unavailable(UserError):
    """hybridiso cannot enforce network isolation on this machine."""


# --- egress: what an isolated agent may still reach --------------------------------


def resolve(entry: Egress) -> list[str]:
    """The IPv4 addresses (or the CIDR block) an entry allows, looked up now."""
    if not entry.is_name:
        return [entry.host]
    import socket

    try:
        infos = socket.getaddrinfo(entry.host, entry.port, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise UserError(
            f"egress {entry}: the host name {entry.host} does not resolve here ({e.strerror or e})",
            hint="fix the name in hybridiso.yaml, or give the address (10.0.0.5:443) or a CIDR block (10.0.0.0/24:443)",
        ) from None
    return sorted({str(info[4][0]) for info in infos})


# --- the rules --------------------------------------------------------------------


def bridge_name(project_id: str, agent: str) -> str:
    """The Linux bridge of an isolated agent's network: stable for the agent,
    distinct between agents and repositories, 15 characters."""
    return BRIDGE_PREFIX + hashlib.sha256(f"{project_id}\0{agent}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Guard:
    """What isolates one agent: its bridge and what it may still reach."""

    project: str
    agent: str
    bridge: str
    allow: tuple[tuple[str, int, str], ...] = ()  # (address or CIDR, port, protocol)

    @property
    def key(self) -> str:
        return self.bridge[len(BRIDGE_PREFIX):]

    @property
    def forward_chain(self) -> str:
        return f"HYBRIDISO-F-{self.key}"

    @property
    def input_chain(self) -> str:
        return f"HYBRIDISO-I-{self.key}"

    @property
    def comment(self) -> str:
        return f'-m comment --comment "{COMMENT_PREFIX} project={self.project} agent={self.agent}"'


def _allow_rule(chain: str, guard: Guard, address: str, port: int, protocol: str) -> str:
    net = ipaddress.ip_network(address, strict=False)
    return f"-A {chain} -d {net} -i {guard.bridge} -p {protocol} -m {protocol} --dport {port} -j RETURN"


def chain_rules(guard: Guard, v6: bool = False) -> dict[str, list[str]]:
    """The agent's own chains, as ``iptables-save`` prints them (so what is
    installed compares equal to what is wanted, and an unchanged agent costs
    no kernel transaction)."""
    f, i, b = guard.forward_chain, guard.input_chain, guard.bridge
    reject = "--reject-with icmp6-adm-prohibited" if v6 else "--reject-with icmp-admin-prohibited"
    established = "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
    forward = [f"-A {f} -i {b} -o {b} -j RETURN"]  # the agent and its own services
    inbound = []
    if not v6:
        forward.append(f"-A {f} {established}")
        forward += [_allow_rule(f, guard, a, p, proto) for a, p, proto in guard.allow]
        inbound.append(f"-A {i} {established}")
        inbound += [_allow_rule(i, guard, a, p, proto).replace(f" -i {b}", "") for a, p, proto in guard.allow]
    forward.append(f"-A {f} -j REJECT {reject}")
    inbound.append(f"-A {i} -j REJECT {reject}")
    return {f: forward, i: inbound}


def hook_rules(guard: Guard) -> list[str]:
    c = guard.comment
    return [
        f"-A {CHAIN_FORWARD} -i {guard.bridge} {c} -j {guard.forward_chain}",
        f"-A {CHAIN_FORWARD} -o {guard.bridge} {c} -j {guard.forward_chain}",
        f"-A {CHAIN_INPUT} -i {guard.bridge} {c} -j {guard.input_chain}",
    ]


# --- what is installed -----------------------------------------------------------------


@dataclass
class Table:
    """The filter table as ``iptables-save`` printed it."""

    chains: set[str]
    rules: dict[str, list[str]]

    @classmethod
    def parse(cls, text: str) -> Table:
        chains: set[str] = set()
        rules: dict[str, list[str]] = {}
        for line in text.splitlines():
            if line.startswith(":"):
                chains.add(line[1:].split()[0])
            elif line.startswith("-A "):
                rules.setdefault(line.split()[1], []).append(line)
        return cls(chains, rules)

    def hooks_of(self, bridge: str) -> list[str]:
        return [r for chain in (CHAIN_FORWARD, CHAIN_INPUT) for r in self.rules.get(chain, []) if f" {bridge} " in f"{r} "]

    def jumps_to(self, chain: str, target: str) -> bool:
        return any(r.endswith(f" -j {target}") for r in self.rules.get(chain, []))


@dataclass(frozen=True)
class Family:
    name: str
    save: str
    restore: str
    v6: bool


IPV4 = Family("iptables", "iptables-save", "iptables-restore", False)
IPV6 = Family("ip6tables", "ip6tables-save", "ip6tables-restore", True)


def families() -> list[Family]:
    """IPv4 always; IPv6 where the kernel has it."""
    return [IPV4, IPV6] if Path("/proc/net/if_inet6").exists() else [IPV4]


def _run(argv: Sequence[str], text: str | None = None) -> str:
    try:
        proc = process.run(argv, input=text, check=False, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Unavailable(f"{argv[0]} could not run: {e}", hint=_HINT) from None
    if proc.returncode != 0:
        # iptables warns about legacy tables on stderr even when it works: only a failure counts
        why = " ".join(line for line in proc.stderr.strip().splitlines() if "legacy tables present" not in line)
        raise Unavailable(f"{' '.join(argv)} failed (exit {proc.returncode}): {why[:400]}", hint=_HINT)
    return proc.stdout


_HINT = (
    "network isolation is enforced with iptables on the Docker host and needs root there: run `hybridiso up` as root, "
    "or choose `network_fallback: none` or `internal` for the agent in hybridiso.yaml (docs/containers.md says what each gives)"
)


def read(family: Family = IPV4) -> Table:
    return Table.parse(_run([family.save, "-t", "filter"]))


def unavailable() -> str | None:
    """Why this process cannot write the rules (None: it can)."""
    if os.geteuid() != 0:
        return "hybridiso is not running as root, and only root may change the host's firewall"
    for family in families():
        for tool in (family.save, family.restore):
            if shutil.which(tool) is None:
                return f"{tool} is not installed (Debian/Ubuntu: apt-get install iptables)"
    return None


def bridge_visible(bridge: str) -> bool:
    """The bridge is in this process's network namespace: the engine's
    networks are this machine's (not rootless Docker, a VM or another host)."""
    return Path("/sys/class/net", bridge).exists()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One writer of hybridiso's chains at a time on this machine: the top
    chains are shared by every repository's agents."""
    directory = next((p for p in LOCK_PATHS if p.is_dir()), Path("/tmp"))
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _base_chain(table: Table) -> str:
    return DOCKER_USER if DOCKER_USER in table.chains else "FORWARD"


def _apply_batch(guard: Guard, table: Table, v6: bool) -> list[str] | None:
    """The restore lines that make ``guard`` true; None when it already is."""
    wanted = chain_rules(guard, v6)
    hooks = hook_rules(guard)
    current_hooks = table.hooks_of(guard.bridge)
    base = _base_chain(table)
    ready = (
        all(table.rules.get(c, []) == r and c in table.chains for c, r in wanted.items())
        and sorted(current_hooks) == sorted(hooks)
        and table.jumps_to(base, CHAIN_FORWARD)
        and table.jumps_to("INPUT", CHAIN_INPUT)
    )
    if ready:
        return None
    lines = [f":{c} - [0:0]" for c in (CHAIN_FORWARD, CHAIN_INPUT) if c not in table.chains]
    lines += [f":{c} - [0:0]" for c in wanted]  # declared: made, or emptied to be refilled
    lines += ["-D" + r[2:] for r in current_hooks]
    for rules in wanted.values():
        lines += rules
    lines += hooks
    if not table.jumps_to(base, CHAIN_FORWARD):
        lines.append(f"-I {base} 1 -j {CHAIN_FORWARD}")
    if not table.jumps_to("INPUT", CHAIN_INPUT):
        lines.append(f"-I INPUT 1 -j {CHAIN_INPUT}")
    return lines


def _restore(family: Family, lines: list[str]) -> None:
    _run([family.restore, "--noflush"], "*filter\n" + "\n".join(lines) + "\nCOMMIT\n")


def apply(guard: Guard) -> bool:
    """Install or update the agent's rules (idempotent); True when it changed any."""
    changed = False
    with _locked():
        for family in families():
            lines = _apply_batch(guard, read(family), family.v6)
            if lines is not None:
                _restore(family, lines)
                changed = True
    return changed


def _remove_batch(bridges: set[str], table: Table) -> list[str]:
    keys = {b[len(BRIDGE_PREFIX):] for b in bridges}
    lines = [f"-D{r[2:]}" for b in bridges for r in table.hooks_of(b)]
    doomed = [c for c in table.chains if (m := re.fullmatch(r"HYBRIDISO-[FI]-([0-9a-f]{12})", c)) and m.group(1) in keys]
    lines += [f"-F {c}" for c in doomed] + [f"-X {c}" for c in doomed]
    left = [r for chain in (CHAIN_FORWARD, CHAIN_INPUT) for r in table.rules.get(chain, []) if not any(f" {b} " in f"{r} " for b in bridges)]
    if not left:
        # the last isolated agent on this machine: leave the firewall as it was
        base = _base_chain(table)
        if table.jumps_to(base, CHAIN_FORWARD):
            lines.append(f"-D {base} -j {CHAIN_FORWARD}")
        if table.jumps_to("INPUT", CHAIN_INPUT):
            lines.append(f"-D INPUT -j {CHAIN_INPUT}")
        lines += [f"-X {c}" for c in (CHAIN_FORWARD, CHAIN_INPUT) if c in table.chains]
    return lines


def remove(bridges: set[str]) -> None:
    """Remove the rules of these bridges (and the top chains once nothing
    uses them).  Nothing to remove, or no root: nothing happens."""
    if not bridges or unavailable() is not None:
        return
    with _locked():
        for family in families():
            table = read(family)
            if not any(table.hooks_of(b) for b in bridges) and not any(c.endswith(tuple(b[len(BRIDGE_PREFIX):] for b in bridges)) for c in table.chains if c.startswith("HYBRIDISO-")):
                continue
            _restore(family, _remove_batch(bridges, table))


@dataclass(frozen=True)
class Installed:
    project: str
    agent: str
    bridge: str


def installed(table: Table | None = None) -> list[Installed]:
    """Every agent whose rules are in the (IPv4) table, from the hook comments."""
    table = table if table is not None else read()
    found: dict[str, Installed] = {}
    for rule in table.rules.get(CHAIN_FORWARD, []) + table.rules.get(CHAIN_INPUT, []):
        m = _COMMENT_RE.search(rule)
        b = re.search(r" -[io] (hyb[0-9a-f]{12}) ", rule)
        if m and b:
            found[b.group(1)] = Installed(m.group("project"), m.group("agent"), b.group(1))
    # an agent chain without hooks (a batch that a crash interrupted cannot
    # leave one: restore is one transaction; a hand edit can)
    for chain in table.chains:
        m = re.fullmatch(r"HYBRIDISO-[FI]-([0-9a-f]{12})", chain)
        if m and BRIDGE_PREFIX + m.group(1) not in found:
            found[BRIDGE_PREFIX + m.group(1)] = Installed("", "", BRIDGE_PREFIX + m.group(1))
    return sorted(found.values(), key=lambda i: i.bridge)


def hooked(guard: Guard, table: Table) -> bool:
    """The agent's chains exist, end in a reject and are jumped to: it is
    isolated, whatever its egress rules say (they may predate the manifest)."""
    chains = chain_rules(guard)
    return (
        all(c in table.chains and table.rules.get(c, [])[-1:] == rules[-1:] for c, rules in chains.items())
        and sorted(table.hooks_of(guard.bridge)) == sorted(hook_rules(guard))
        and table.jumps_to(_base_chain(table), CHAIN_FORWARD)
        and table.jumps_to("INPUT", CHAIN_INPUT)
    )


def in_force(guard: Guard, table: Table | None = None) -> bool:
    """The agent's rules are installed as wanted and hooked in (IPv4)."""
    table = table if table is not None else read()
    return _apply_batch(guard, table, False) is None
