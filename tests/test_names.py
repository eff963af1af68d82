from __future__ import annotations

import subprocess

import pytest

from hybridiso.names import agent_name_problem, branch_name_problem, env_var_for_port, port_name_problem


@pytest.mark.parametrize("name", ["ui", "api-2", "a_b", "0agent", "x" * 40])
def test_valid_agent_names(name: str) -> None:
    assert agent_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "UI", "../../etc", "a/b", "has space", "-lead", "_lead", "a.b", "x" * 41, "é"])
def test_invalid_agent_names_explain_the_rule(name: str) -> None:
    problem = agent_name_problem(name)
    assert problem is not None and "compose project-name rule" in problem


BRANCHES = ["main", "feature/x", "a..b", "a.lock", "x/y.lock/z", "has space", "a~1", "a^", "a:b", "-x", "a//b", "/a", "a/", "a.", ".a", "a/.b", "a@{1}", "a?", "a*", "a[", "a\\b", "ok-1.2/z_z"]


@pytest.mark.parametrize("branch", BRANCHES)
def test_branch_rules_agree_with_git(branch: str) -> None:
    git_ok = subprocess.run(["git", "check-ref-format", "--branch", branch], capture_output=True).returncode == 0
    assert (branch_name_problem(branch) is None) == git_ok, branch


def test_lone_at_is_rejected() -> None:
    # git would create it, but `@` means HEAD in every revision argument: an
    # agent branch named so would be unusable in git commands
    assert "'@' alone" in (branch_name_problem("@") or "")


def test_port_names() -> None:
    assert port_name_problem("web") is None
    assert port_name_problem("Web") is not None
    assert port_name_problem("1web") is not None
    assert env_var_for_port("admin_api") == "PORT_ADMIN_API"
