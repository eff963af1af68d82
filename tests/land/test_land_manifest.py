"""The manifest's ``land:`` section (issue 14 item 1)."""
from __future__ import annotations

from pathlib import Path

import pytest

from hybridiso.manifest import ManifestError
from hybridiso.manifest_file import parse_manifest

P = Path("/repo/hybridiso.yaml")


def test_defaults_rebase_onto_base_without_push() -> None:
    m = parse_manifest("base: trunk\nagents:\n  - name: a\n", P)
    assert m.land.check == []
    assert m.land_method_for(m.agents[0]) == "rebase"
    assert m.land_target() == "trunk"
    assert m.land.push is None
    assert m.land_timeout_for(m.agents[0]) == 1800.0


def test_agent_overrides_check_method_and_timeout_only() -> None:
    m = parse_manifest(
        "land:\n  check: ['pytest -q']\n  method: merge\n  target: release\n  push: origin\n  timeout: 2m\n"
        "agents:\n  - name: a\n    land: {method: squash, timeout: 5s, check: [[make, test]]}\n  - name: b\n",
        P,
    )
    a, b = m.agents
    assert (m.land_method_for(a), m.land_timeout_for(a), m.land_check_for(a)) == ("squash", 5.0, [["make", "test"]])
    assert (m.land_method_for(b), m.land_timeout_for(b), m.land_check_for(b)) == ("merge", 120.0, ["pytest -q"])
    assert m.land_target() == "release" and m.land.push == "origin"


def test_an_agent_may_turn_its_check_off_with_an_empty_list() -> None:
    m = parse_manifest("land:\n  check: ['pytest']\nagents:\n  - name: a\n    land: {check: []}\n", P)
    assert m.land_check_for(m.agents[0]) == []


def test_errors_name_line_and_field_all_at_once() -> None:
    text = (
        "land:\n  method: octopus\n  timeout: soon\n  target: 'a..b'\n  bogus: 1\n  push: '-x'\n"
        "agents:\n  - name: a\n    land: {target: x}\n  - name: b\n    land: {timeout: 0s, check: ['']}\n"
    )
    with pytest.raises(ManifestError) as e:
        parse_manifest(text, P)
    lines = [line.strip() for line in str(e.value).splitlines() if line.strip().startswith("line ")]
    assert lines[0].startswith("line 2: land.method: Input should be 'rebase', 'merge' or 'squash'")
    assert lines[1].startswith("line 3: land.timeout: 'soon' is not a duration")
    assert lines[2].startswith("line 4: land.target: branch name 'a..b' is invalid")
    assert lines[3].startswith("line 5: land.bogus: unknown key")
    assert lines[4].startswith("line 6: land.push: '-x' is not a remote name")
    assert lines[5].startswith("line 9: agents[0].land.target: unknown key")
    assert any(x.startswith("line 11: agents[1].land.check[0]: the command is empty") for x in lines), lines
    assert any(x.startswith("line 11: agents[1].land.timeout: '0s' is shorter than 1s") for x in lines), lines


def test_a_timeout_over_a_day_is_refused() -> None:
    with pytest.raises(ManifestError, match=r"line 2: land.timeout: '25h' is longer than 24h"):
        parse_manifest("land:\n  timeout: 25h\n", P)
