"""Network targets for the container boundary tests, all on this machine.

- ``HostListener``: a TCP server on the host's 0.0.0.0 (every host address,
  the agents' bridge gateways included), recording who connected -- the
  "host service" an isolated agent must not reach.
- ``Outside``: a network namespace with a veth pair the test creates and
  removes, and TCP servers in it: an address "outside" the machine that
  containers reach through forwarding and NAT, as they would the internet,
  without sending a packet off this host.
Every name carries the pytest pid, so concurrent runs never collide, and
each is removed on exit (also when the test fails).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support import needs


class HostListener:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.peers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                continue
            self.peers.append(addr[0])
            with contextlib.suppress(OSError):
                conn.sendall(b"host-secret\n")
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@contextlib.contextmanager
def host_listener() -> Iterator[HostListener]:
    listener = HostListener()
    try:
        yield listener
    finally:
        listener.close()


def host_addresses() -> list[str]:
    """This machine's IPv4 addresses, loopback and container bridges aside."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        name, addr = parts[1], parts[3].split("/")[0]
        if name == "lo" or name.startswith(("docker", "br-", "hyb", "veth", "hvo")):
            continue
        found.append(addr)
    return found


SERVE = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, a = s.accept()
        c.sendall(b"outside:%d\\n" % port); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


@dataclass
class Outside:
    netns: str
    address: str  # the namespace's end of the veth
    ports: list[int] = field(default_factory=list)


def _sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


@contextlib.contextmanager
def outside(ports: int = 2) -> Iterator[Outside]:
    """A namespace with servers on ``ports`` TCP ports at a 10.x address."""
    needs.root("making a network namespace")
    tag = f"{os.getpid() % 100000}"
    netns, host_if, ns_if = f"hyb-test-{tag}", f"hvo{tag}a", f"hvo{tag}b"
    octet = os.getpid() % 250 + 1
    host_ip, ns_ip = f"10.253.{octet}.1", f"10.253.{octet}.2"
    server = None
    try:
        _sh("ip", "netns", "add", netns)
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", netns)
        _sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        _sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _sh("ip", "netns", "exec", netns, "ip", "link", "set", ns_if, "up")
        _sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        _sh("ip", "netns", "exec", netns, "ip", "route", "add", "default", "via", host_ip)
        chosen = []
        for _ in range(ports):
            with contextlib.closing(socket.socket()) as s:
                s.bind(("127.0.0.1", 0))
                chosen.append(int(s.getsockname()[1]))
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", SERVE, *map(str, chosen)], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield Outside(netns, ns_ip, chosen)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)  # takes the veth pair with it
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        time.sleep(0)
