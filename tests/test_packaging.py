"""Templates are found from a source checkout and from an installed wheel."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hybridiso.resources import compose_dir, templates_dir

ROOT = Path(__file__).resolve().parents[1]


def test_source_checkout_finds_top_level_dirs() -> None:
    assert templates_dir() == ROOT / "templates"
    assert compose_dir() == ROOT / "compose"


@pytest.mark.slow
def test_installed_wheel_carries_templates(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(wheels.glob("hybridiso-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    probe = (
        "import hybridiso.resources as r, hybridiso.render as rd;"
        "print(r.templates_dir()); print(r.compose_dir());"
        "print(rd.render_template('hybridiso.yaml.j2', base='main', setup=[], include=[], repo_name='x')[:40])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == str(target / "hybridiso" / "_data" / "templates")
    assert out[1] == str(target / "hybridiso" / "_data" / "compose")
    assert out[2].startswith("# hybridiso manifest")
    assert (target / "hybridiso" / "_data" / "compose" / "postgres.yaml.j2").exists()
