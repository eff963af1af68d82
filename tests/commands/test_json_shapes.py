"""The --json shapes docs/cli.md documents, key for key: printed from the
commands' result types through output.json_value, nothing else leaks in
(gc's callback, status's internal flags) and nothing documented goes."""
from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import make_repo

UP = {"name", "strategy", "action", "ok", "seconds", "error", "path", "ports", "note", "why"}
STATUS = {
    "agent", "strategy", "state", "branch", "path", "ahead", "behind", "dirty", "ports", "process",
    "disk_bytes", "disk_shared_bytes", "problems", "in_manifest", "boundary", "off", "land", "ok",
}
GC_FINDING = {"kind", "target", "action", "reason", "owns", "result", "left"}


def test_up_status_down_and_gc_print_their_documented_shapes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, "agents:\n  - {name: web, ports: [web]}\n  - {name: api, isolation: clone}\n")
    up = json.loads(hybridiso(repo, "up", "--json").stdout)
    assert [set(o) for o in up] == [UP, UP]
    assert {(o["name"], o["action"], o["ok"]) for o in up} == {("web", "Created", True), ("api", "Created", True)}
    assert {o["name"]: o["path"] for o in up} == {"web": str(tmp_path / "r.agents" / "web"), "api": str(tmp_path / "r.agents" / "api")}
    again = json.loads(hybridiso(repo, "up", "--json").stdout)
    assert {o["action"] for o in again} == {"Up to date"}

    rows = json.loads(hybridiso(repo, "status", "--json").stdout)
    assert [set(r) for r in rows] == [STATUS, STATUS]
    assert {(r["agent"], r["state"], r["ok"], r["land"]) for r in rows} == {("web", "ready", True, None), ("api", "ready", True, None)}

    (tmp_path / "r.agents" / "web" / "new.txt").write_text("work\n")
    dry = json.loads(hybridiso(repo, "down", "--dry-run", "--json", ok=False).stdout)
    assert {r["agent"]: r for r in dry} == {
        "api": {"agent": "api", "action": "would remove", "work": None},
        "web": {"agent": "web", "action": "would refuse", "work": "1 untracked: new.txt", "reason": dry[1]["reason"]},
    }
    assert "has work that `down` would lose" in dry[1]["reason"]
    refused = json.loads(hybridiso(repo, "down", "web", "--json", ok=False).stdout)
    assert refused == [{"agent": "web", "action": "refused", "reason": refused[0]["reason"]}]
    forced = json.loads(hybridiso(repo, "down", "web", "--force", "--json").stdout)
    [row] = forced
    assert set(row) == {"agent", "action", "backup_ref", "database_dumps", "restore"} and row["action"] == "removed"
    assert row["restore"] == f"hybridiso restore web {row['backup_ref'].rsplit('/', 1)[-1]}"

    write_manifest(repo, "agents: []\n")
    gc = json.loads(hybridiso(repo, "gc", "--json").stdout)
    assert set(gc) == {"applied", "findings", "summary"} and gc["applied"] is False
    assert [set(f) for f in gc["findings"]] == [GC_FINDING]
    assert (gc["findings"][0]["target"], gc["findings"][0]["action"], gc["findings"][0]["result"]) == ("api", "keep", None)
    plain = json.loads(hybridiso(repo, "down", "--json").stdout)
    assert plain == [{"agent": "api", "action": "removed", "backup_ref": None, "database_dumps": {}}]  # no backup: no restore
