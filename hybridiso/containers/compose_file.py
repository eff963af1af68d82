"""A container agent's compose file: its ContainerSpec rendered through
``templates/compose.yaml.j2`` (render.py quotes every value) with the labels
that let ``down`` and ``gc`` find each object, written atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hybridiso.containers.spec import AGENT_SERVICE, SERVICE_CAPABILITIES, SERVICE_PIDS, ContainerSpec
from hybridiso.render import render_template
from hybridiso.state import atomic_write_text

LABEL_PREFIX = "dev.hybridiso"  # the same keys as docker_client.LABEL_*


def compose_labels(spec: ContainerSpec) -> dict[str, Any]:
    """Labels for every object of the project.  ``spec.labels`` may refine
    ``project`` (the container strategy puts its stable repository id there)
    but the role of each object is always hybridiso's."""
    common = {
        f"{LABEL_PREFIX}.project": spec.project,
        f"{LABEL_PREFIX}.compose-project": spec.project,
        f"{LABEL_PREFIX}.agent": spec.agent,
        **dict(spec.labels),
    }
    role = f"{LABEL_PREFIX}.role"
    service = f"{LABEL_PREFIX}.service"
    return {
        "agent": {**common, role: "agent", service: AGENT_SERVICE},
        "network": {**common, role: "network"},
        "services": {s.name: {**common, role: "service", service: s.name} for s in spec.services},
        "volumes": {s.name: {**common, role: "volume", service: s.name} for s in spec.services},
    }


def render_compose(spec: ContainerSpec) -> str:
    return render_template(
        "compose.yaml.j2",
        spec=spec,
        env=dict(spec.environment),
        labels=compose_labels(spec),
        service_caps=SERVICE_CAPABILITIES,
        service_pids=SERVICE_PIDS,
    )


def write_compose(spec: ContainerSpec, path: str | os.PathLike[str], anchor: Path | None = None) -> Path:
    """Render, then replace ``path`` atomically (temp file beside it +
    ``os.replace``): a reader never sees half a file, a failed render leaves
    the old one.  Mode 0600: the file holds the agent's environment.  Below
    ``anchor`` nothing on the way may be a symlink."""
    target = Path(path)
    atomic_write_text(target, render_compose(spec), anchor=anchor)
    return target
