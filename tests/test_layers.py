"""The import contract in pyproject.toml names every module and package of
hybridiso, so a new one must be given its layer (docs/architecture.md);
`lint-imports` in .ci/run checks the imports themselves."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["type"] == "layers")
    return [str(layer) for layer in contract["layers"]]


def test_every_top_level_module_and_package_has_a_layer() -> None:
    named = {m.strip().removeprefix("hybridiso.") for layer in _layers() for m in re.split(r"[|:]", layer)}
    present = {p.stem for p in (ROOT / "hybridiso").glob("*.py") if p.stem != "__init__"}
    present |= {p.name for p in (ROOT / "hybridiso").iterdir() if (p / "__init__.py").is_file()}
    assert present - named == set(), "give each new module or package its layer in pyproject.toml"
    assert named - present == set(), "the contract names modules that are gone"


def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(tmp_path: Path) -> None:
    """The contract is live: a copy of the package where ports (core) imports
    envs.lifecycle fails lint-imports, and the checkout itself passes."""
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.exists(), "import-linter is part of the test extra: pip install -e .[test]"
    ok = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout[-2000:]
    copy = tmp_path / "copy"
    copy.mkdir()
    subprocess.run(["cp", "-r", str(ROOT / "hybridiso"), str(copy)], check=True)
    ports = copy / "hybridiso" / "ports.py"
    ports.write_text(ports.read_text() + "\nfrom hybridiso.envs import lifecycle  # noqa: E402,F401\n")
    broken = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=copy, capture_output=True, text=True, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"}
    )
    assert broken.returncode == 1, broken.stdout[-2000:]
    assert "hybridiso.ports is not allowed to import hybridiso.envs" in broken.stdout
