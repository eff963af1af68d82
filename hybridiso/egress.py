"""An ``egress:`` entry of the manifest: what a network-isolated container
agent may still reach, parsed once for the manifest's checks and for the
firewall rules ``containers/netguard.py`` writes."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


@dataclass(frozen=True)
class Egress:
    """One ``egress:`` entry: ``HOST:PORT`` or ``HOST:PORT/udp``; HOST an
    IPv4 address, a CIDR block or a host name (resolved when ``up`` applies
    the rules, and pinned in the container's /etc/hosts: see containers/build.py)."""

    host: str
    port: int
    protocol: str = "tcp"

    @property
    def is_name(self) -> bool:
        try:
            ipaddress.ip_network(self.host, strict=False)
            return False
        except ValueError:
            return True

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" + ("/udp" if self.protocol == "udp" else "")


def parse_egress(text: str) -> Egress:
    """``10.0.0.5:5432``, ``10.0.0.0/24:443``, ``pypi.org:443``, ``10.0.0.53:53/udp``."""
    spec, protocol = text, "tcp"
    if "/" in text.rsplit(":", 1)[-1]:
        spec, _, protocol = text.rpartition("/")
        if protocol not in ("tcp", "udp"):
            raise ValueError(f"{text!r}: the protocol after the port must be tcp or udp")
    host, sep, port_text = spec.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT (for example 10.0.0.5:5432 or pypi.org:443)")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is not in 1-65535")
    try:
        net = ipaddress.ip_network(host[1:-1] if host.startswith("[") and host.endswith("]") else host, strict=False)
    except ValueError:
        if not _HOSTNAME_RE.match(host):
            raise ValueError(f"{text!r}: {host!r} is neither an IPv4 address, a CIDR block nor a host name") from None
        return Egress(host.lower(), port, protocol)
    if net.version != 4:
        raise ValueError(f"{text!r}: agent networks are IPv4 only, so an IPv6 destination is never reachable")
    if net.is_loopback:
        raise ValueError(f"{text!r}: 127.0.0.0/8 inside a container is its own loopback, always reachable; the host is not there")
    return Egress(str(net) if "/" in host else str(net.network_address), port, protocol)
