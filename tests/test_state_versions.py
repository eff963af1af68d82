"""State files of earlier versions load into the current record's fields
(docs/faults.md row 18): tests/data/state-v1/ holds a file version 1 wrote."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybridiso.state import STATE_VERSION, StateStore
from tests.support.cli import hybridiso, status_json
from tests.support.gitrepo import git, make_repo

V1 = Path(__file__).parent / "data" / "state-v1"


def _project(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The fixture's repository made anew and brought up by this version;
    returns it and its (current version's) state file."""
    repo = make_repo(tmp_path / "r", {"README.md": "hello\n", ".gitignore": ".env.local\n"})
    (repo / ".env.local").write_text("SECRET=1\n")
    (repo / "hybridiso.yaml").write_text((V1 / "hybridiso.yaml").read_text())
    hybridiso(repo, "up")
    return repo, json.loads((repo / ".git" / "hybridiso" / "state.json").read_text())


def _v1_file(now: dict[str, Any]) -> dict[str, Any]:
    """The version 1 fixture with this machine's paths, commit and ports."""
    (checkout,) = {r["checkout"] for r in now["agents"].values()}
    (commit,) = {r["base_commit"] for r in now["agents"].values()}
    text = (V1 / "state.json").read_text().replace("@REPO@", checkout).replace("@BASE_COMMIT@", commit)
    for agent, record in now["agents"].items():
        for name, port in record["ports"].items():
            text = text.replace(f'"@PORT_{agent.upper()}_{name.upper()}@"', str(port))
    assert "@" not in text, text
    data: dict[str, Any] = json.loads(text)
    assert data["version"] == 1 and all("extra" in r for r in data["agents"].values())
    return data


def test_a_version_1_file_loads_into_the_named_fields_and_is_written_back_as_version_2(tmp_path: Path) -> None:
    repo, now = _project(tmp_path)
    before = status_json(repo)
    path = repo / ".git" / "hybridiso" / "state.json"
    path.write_text(json.dumps(_v1_file(now), indent=2))

    state = StateStore(repo / ".git").load()
    assert state.rebuilt_from is None and set(state.agents) == {"web", "api"}
    api, web = state.agents["api"], state.agents["web"]
    assert (api.owns_path, api.included, api.strategy, api.clone_objects) == (True, [".env.local"], "clone", "hard-linked")
    assert (web.owns_path, web.included, web.created_branch) == (True, [], True)
    assert not (api.removing or web.removing or api.adopted or web.adopted)
    # what the file said is all kept: field for field what this version wrote for the same up
    for name, record in state.agents.items():
        fresh = now["agents"][name]
        for key in ("branch", "path", "base_commit", "ports", "include_patterns", "owns_path", "included", "phase"):
            assert getattr(record, key) == fresh[key], (name, key)

    st = hybridiso(repo, "status", "--json")
    assert "unreadable" not in st.stderr and "rebuilt" not in st.stderr, st.stderr
    assert {r["agent"]: r for r in json.loads(st.stdout)} == before
    assert json.loads(path.read_text())["version"] == 1  # status only reads

    hybridiso(repo, "down", "web")
    written = json.loads(path.read_text())
    assert written["version"] == STATE_VERSION == 2
    assert set(written["agents"]) == {"api"}
    assert "extra" not in written["agents"]["api"]
    assert (written["agents"]["api"]["owns_path"], written["agents"]["api"]["included"]) == (True, [".env.local"])
    assert not (tmp_path / "r.agents" / "web").exists()
    assert git(repo, "branch", "--list", "hybridiso/web") == ""  # its branch was hybridiso's: deleted
    hybridiso(repo, "down", "api")
    assert not (tmp_path / "r.agents" / "api").exists() and json.loads(path.read_text())["agents"] == {}


def test_a_half_made_environment_of_a_version_1_file_is_still_rolled_back(tmp_path: Path) -> None:
    # `owns_path` lived in version 1's `extra`: read into the field, it is
    # what lets the next up roll the half-made environment back (docs/faults.md row 9)
    repo, now = _project(tmp_path)
    old = _v1_file(now)
    old["agents"]["web"]["phase"] = "creating"
    (repo / ".git" / "hybridiso" / "state.json").write_text(json.dumps(old))
    r = hybridiso(repo, "up")
    # rolled back (its worktree removed, its branch deleted), then made anew;
    # read without owns_path, the worktree stays and deleting its branch fails
    lines = {line.split()[1]: line for line in r.stderr.splitlines() if line.startswith(" ")}
    assert "Created" in lines["web"] and "Up to date" in lines["api"], r.stderr
    written = json.loads((repo / ".git" / "hybridiso" / "state.json").read_text())
    assert written["version"] == 2 and written["agents"]["web"]["phase"] == "ready"
    assert written["agents"]["web"]["owns_path"] is True and "extra" not in written["agents"]["web"]
