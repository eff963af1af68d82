"""Starting a one-container compose project straight through the Engine API.

Most agents are one container (no ``services:``).  For those, ``up`` does
what ``docker compose up --detach`` does with the rendered file -- the same
container and network names, the same ``com.docker.compose.*`` labels, so
``docker compose -p P ps|logs|down`` and ``hybridiso down`` treat it as
Compose's own -- but asks the engine itself instead of starting the Compose
CLI, a Go process that costs 0.1-0.15 s per agent and competes for the CPU
while many agents start (docs/benchmarks.md has the figures).

What is applied is read back from the rendered file, so the file stays the
one description of the container.  A file with anything this module does not
translate (services, named volumes, ``depends_on``) goes to Compose.
tests/containers/test_engine_apply.py starts the same file both ways and compares what
Docker reports about the two containers.

This module is pure translation; docker_client.py makes the calls.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hybridiso.containers.spec import AGENT_SERVICE
from hybridiso.containers.docker_client import COMPOSE_CONFIG_HASH, ContainerPlan
from hybridiso.manifest import parse_size


# the keys of the agent service that translate() turns into API fields
TRANSLATED_KEYS = frozenset(
    {
        "image", "command", "working_dir", "user", "init", "security_opt", "cpus", "mem_limit",
        "pids_limit", "network_mode", "networks", "extra_hosts", "volumes", "environment",
        "ports", "healthcheck", "labels", "cap_drop", "cap_add", "read_only", "tmpfs",
    }
)
TRANSLATED_TOP = frozenset({"name", "services", "networks"})
# of the project network: the bridge name an isolated agent's rules are
# keyed by travels in driver_opts (netguard.py); nothing may be dropped
TRANSLATED_NETWORK = frozenset({"labels", "driver_opts", "internal"})

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_NANOS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def duration_ns(text: str) -> int:
    """A compose duration ("2s", "500ms", "1m30s") in nanoseconds."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration")
    return int(sum(float(n) * _NANOS[u] for n, u in parts))


def unescape(value: Any) -> Any:
    """Undo the renderer's ``$`` doubling, as Compose's interpolation does
    (values only: Compose leaves keys alone, and so does the renderer)."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [unescape(v) for v in value]
    if isinstance(value, dict):
        return {k: unescape(v) for k, v in value.items()}
    return value


def _capabilities(names: Any) -> list[str] | None:
    """As Compose hands them to the engine: CAP_-prefixed, ALL as is."""
    return [n if n == "ALL" or n.startswith("CAP_") else f"CAP_{n}" for n in names or []] or None


def translate(doc: Mapping[str, Any], file: Path, image_id: str = "") -> ContainerPlan | None:
    """The one container of a parsed compose file as an API body, or None
    when the file needs Compose itself.  ``image_id`` (what the image name
    resolves to now) is part of the config: a rebuilt image recreates the
    container, as with Compose."""
    if list(doc.get("services") or {}) != [AGENT_SERVICE]:
        return None
    return translate_agent(doc, file, image_id)


def translate_agent(doc: Mapping[str, Any], file: Path, image_id: str = "") -> ContainerPlan | None:
    """The agent service of a parsed compose file as an API body, whatever
    else the file has (the one-off setup container of an agent with
    services); None when the agent service has what this module does not
    translate."""
    if set(doc) - TRANSLATED_TOP:
        return None
    services = doc.get("services") or {}
    if AGENT_SERVICE not in services:
        return None
    svc = unescape(services[AGENT_SERVICE])
    if set(svc) - TRANSLATED_KEYS or any(v.get("type") != "bind" for v in svc.get("volumes") or []):
        return None
    project = str(doc["name"])
    networks = unescape(doc.get("networks") or {})
    joined = list(svc.get("networks") or [])
    if len(joined) > 1 or (joined and joined[0] not in networks):
        return None
    net = (networks.get(joined[0]) or {}) if joined else {}
    if set(net) - TRANSLATED_NETWORK:
        return None
    # Compose v2's names: container <project>-<service>-1, network <project>_<key>
    container_name = f"{project}-{AGENT_SERVICE}-1"
    network = f"{project}_{joined[0]}" if joined else ""
    compose_labels = {
        "com.docker.compose.project": project,
        "com.docker.compose.project.config_files": str(file),
        "com.docker.compose.project.working_dir": str(file.parent),
        "com.docker.compose.service": AGENT_SERVICE,
        "com.docker.compose.container-number": "1",
        "com.docker.compose.oneoff": "False",
        "com.docker.compose.depends_on": "",
        "com.docker.compose.image": image_id,
    }
    host: dict[str, Any] = {
        "Init": bool(svc.get("init", False)),
        "SecurityOpt": list(svc.get("security_opt") or []),
        "Mounts": [
            {"Type": "bind", "Source": v["source"], "Target": v["target"], "ReadOnly": bool(v.get("read_only", False))}
            for v in svc.get("volumes") or []
        ],
        "PortBindings": {},
        # Compose accepts host=ip and host:ip; the engine only the latter
        "ExtraHosts": [h.replace("=", ":", 1) for h in svc.get("extra_hosts") or []] or None,
        "NetworkMode": svc.get("network_mode") or network,
        "CapDrop": _capabilities(svc.get("cap_drop")),
        "CapAdd": _capabilities(svc.get("cap_add")),
        "ReadonlyRootfs": bool(svc.get("read_only", False)),
    }
    if svc.get("tmpfs"):
        # Compose's short syntax, "PATH[:OPTIONS]"; the engine takes {PATH: OPTIONS}
        tmpfs = [svc["tmpfs"]] if isinstance(svc["tmpfs"], str) else svc["tmpfs"]
        host["Tmpfs"] = {t.partition(":")[0]: t.partition(":")[2] for t in tmpfs}
    if svc.get("cpus") is not None:
        host["NanoCpus"] = round(float(svc["cpus"]) * 1e9)
    if svc.get("mem_limit") is not None:
        host["Memory"] = parse_size(svc["mem_limit"])  # binary units, as Compose
    if svc.get("pids_limit") is not None:
        host["PidsLimit"] = int(svc["pids_limit"])
    exposed: dict[str, dict[str, Any]] = {}
    for p in svc.get("ports") or []:
        key = f"{p['target']}/{p.get('protocol', 'tcp')}"
        exposed[key] = {}
        host["PortBindings"].setdefault(key, []).append({"HostIp": p.get("host_ip", ""), "HostPort": str(p["published"])})
    config: dict[str, Any] = {
        "Image": svc["image"],
        "WorkingDir": svc.get("working_dir", ""),
        "User": svc.get("user", ""),
        "Env": [f"{k}={v}" for k, v in (svc.get("environment") or {}).items()],
        "Labels": {**(svc.get("labels") or {}), **compose_labels},
        "ExposedPorts": exposed,
        "HostConfig": host,
    }
    if svc.get("command") is not None:
        config["Cmd"] = list(svc["command"])
    hc = svc.get("healthcheck")
    if hc:
        config["Healthcheck"] = {
            "Test": list(hc["test"]),
            "Interval": duration_ns(hc.get("interval", "30s")),
            "Timeout": duration_ns(hc.get("timeout", "30s")),
            "Retries": int(hc.get("retries", 3)),
            "StartPeriod": duration_ns(hc.get("start_period", "0s")),
        }
    if joined:
        config["NetworkingConfig"] = {"EndpointsConfig": {network: {"Aliases": [AGENT_SERVICE, container_name]}}}
    network_labels = {}
    options = {str(k): str(v) for k, v in (net.get("driver_opts") or {}).items()}
    internal = bool(net.get("internal", False))
    if joined:
        network_labels = {
            **net.get("labels", {}),
            "com.docker.compose.project": project,
            "com.docker.compose.network": joined[0],
        }
    digest = hashlib.sha256(json.dumps([config, network, network_labels, options, internal], sort_keys=True).encode()).hexdigest()
    config["Labels"][COMPOSE_CONFIG_HASH] = digest  # ours, not what Compose would compute: its own `up` recreates it
    return ContainerPlan(project, AGENT_SERVICE, container_name, config, network or None, network_labels, digest, bool(hc), options, internal)
