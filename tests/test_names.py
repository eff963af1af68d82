from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hybridiso.names import (
    STRATEGY_NAMES,
    PROJECT_NAME_RE,
    agent_name_problem,
    branch_name_problem,
    compose_project_name,
    env_var_for_port,
    env_var_for_service,
    port_name_problem,
    ref_conflict,
    ref_conflicts_with_existing,
    service_name_problem,
)
from tests.support.gitrepo import make_repo


@pytest.mark.parametrize("name", ["ui", "api-2", "a_b", "0agent", "x" * 40])
def test_valid_agent_names(name: str) -> None:
    assert agent_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "UI", "../../etc", "a/b", "has space", "-lead", "_lead", "a.b", "x" * 41, "é"])
def test_invalid_agent_names_explain_the_rule(name: str) -> None:
    problem = agent_name_problem(name)
    assert problem is not None and "compose project-name rule" in problem


BRANCHES = ["HEAD", "main", "feature/x", "a..b", "a.lock", "x/y.lock/z", "has space", "a~1", "a^", "a:b", "-x", "a//b", "/a", "a/", "a.", ".a", "a/.b", "a@{1}", "a?", "a*", "a[", "a\\b", "ok-1.2/z_z"]


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


# docs/faults.md row 39: `$` matches before a final newline, so "ui\n" passed ^...$
@pytest.mark.parametrize("check", [agent_name_problem, port_name_problem, service_name_problem])
def test_a_name_ending_in_a_newline_is_refused(check) -> None:  # type: ignore[no-untyped-def]
    assert check("web") is None
    assert check("web\n") is not None
    assert check("web\r\n") is not None


def test_branch_rules_beyond_check_ref_format() -> None:
    # git check-ref-format accepts these; git cannot use or store them
    assert "'HEAD' names" in (branch_name_problem("HEAD") or "")
    assert branch_name_problem("feature/HEAD") is None  # only the name HEAD itself is refused
    assert branch_name_problem("x" * 250) is None
    long = branch_name_problem("a/" + "x" * 251)
    assert long is not None and "251 bytes" in long and "'.lock'" in long
    assert "bytes" in (branch_name_problem("é" * 126) or "")  # 252 bytes in UTF-8, 126 characters
    assert branch_name_problem("main\n") is not None


def test_a_250_byte_branch_is_what_git_can_store(tmp_path: Path) -> None:
    # the bound is git's, measured: a 251-byte component fails on "<name>.lock"
    repo = make_repo(tmp_path / "r")
    assert subprocess.run(["git", "branch", "x" * 250], cwd=repo, capture_output=True).returncode == 0
    r = subprocess.run(["git", "branch", "y" * 251], cwd=repo, capture_output=True, text=True)
    assert r.returncode != 0 and "File name too long" in r.stderr


def test_ref_conflicts_are_directories_of_each_other() -> None:
    assert ref_conflict("feat", {"feat/x", "other"}) == "feat/x"
    assert ref_conflict("feat/x/y", {"feat"}) == "feat"
    assert ref_conflict("feat", {"feature", "feat-2", "fea"}) is None
    assert ref_conflict("a/b", {"a/b"}) is None  # the same branch is no conflict
    # an existing branch is used as it is; only new ones are refused
    assert ref_conflicts_with_existing(["feat", "b/c", "main"], ["feat/z", "b", "main"]) == [("feat", "feat/z"), ("b/c", "b")]
    assert ref_conflicts_with_existing(["feat"], ["feat", "feat/z"]) == []


def test_ref_conflicts_agree_with_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    existing = ["feat/x", "team", "a/b/c"]
    for b in existing:
        subprocess.run(["git", "branch", b], cwd=repo, check=True)
    for name in ["feat", "team/one", "a", "a/b", "a/b/c/d", "feature", "a/bc", "teams"]:
        git_ok = subprocess.run(["git", "branch", name], cwd=repo, capture_output=True).returncode == 0
        if git_ok:
            subprocess.run(["git", "branch", "-D", name], cwd=repo, check=True, capture_output=True)
        assert (ref_conflicts_with_existing([name], existing) == []) == git_ok, name


def test_service_names_follow_compose_and_map_to_one_variable() -> None:
    assert service_name_problem("my-db") is None and service_name_problem("cache_2") is None
    for bad in ("My.DB", "a b", "1db", "", "x" * 31, "db$"):
        assert "service name" in (service_name_problem(bad) or ""), bad
    assert "reserved" in (service_name_problem("agent") or "")
    assert env_var_for_service("my-db") == env_var_for_service("my_db") == "MY_DB_URL"


def test_strategy_names_agree_with_the_registry_and_the_manifest() -> None:
    """One table of names (names.STRATEGY_NAMES): the registry has a module
    for each, in its order, saying of itself what the table tells the core,
    and the manifest accepts exactly those and ``auto``."""
    from pydantic import ValidationError

    from hybridiso.manifest import Manifest
    from hybridiso.strategies import STRATEGIES, disagreements

    assert tuple(STRATEGIES) == STRATEGY_NAMES
    assert disagreements(STRATEGIES) == []
    for name in ("auto", *STRATEGY_NAMES):
        agent = {"name": "a", "isolation": name, "image": "busybox:latest"}
        assert Manifest.model_validate({"version": 1, "agents": [agent]}).agents[0].isolation == name
    for name in ("vm", "Worktree", "", 5):
        with pytest.raises(ValidationError, match="Input should be 'auto', 'worktree', 'clone' or 'container'"):
            Manifest.model_validate({"version": 1, "agents": [{"name": "a", "isolation": name}]})


def test_the_registry_check_names_each_disagreement() -> None:
    """A strategy added to the registry and not the names table (or saying
    otherwise of itself than the table does) is caught when hybridiso starts."""
    from types import SimpleNamespace

    from hybridiso.strategies import STRATEGIES, Strategy, disagreements

    extra = SimpleNamespace(NAME="copy", SHARES_REFS=True, UNTRUSTED_FILES=False)
    grown: dict[str, Strategy] = {**STRATEGIES, "copy": extra}  # type: ignore[dict-item]
    assert disagreements(grown) == ["the registry has worktree, clone, container, copy, names.STRATEGY_NAMES has worktree, clone, container"]
    lying = SimpleNamespace(NAME="clone", SHARES_REFS=True, UNTRUSTED_FILES=True)
    swapped: dict[str, Strategy] = {**STRATEGIES, "clone": lying}  # type: ignore[dict-item]
    assert disagreements(swapped) == [
        "clone: UNTRUSTED_FILES is True, names.UNTRUSTED_FILES says otherwise",
        "clone: SHARES_REFS is True, names.OWN_REPOSITORY says otherwise",
    ]
    misnamed: dict[str, Strategy] = {**STRATEGIES, "worktree": STRATEGIES["clone"]}
    assert "worktree is registered under another name than its NAME 'clone'" in disagreements(misnamed)


def test_compose_project_names_are_readable_valid_and_distinct() -> None:
    name = compose_project_name("/work/shop", "api")
    assert name.startswith("hybridiso-shop-api-") and len(name) == len("hybridiso-shop-api-") + 8
    assert all(c in "0123456789abcdef" for c in name.rsplit("-", 1)[1])
    assert compose_project_name("/work/shop", "api") == name == compose_project_name("/work/./shop/", "api")  # normalised
    # same readable parts, other repository or agent: another hash
    assert compose_project_name("/other/shop", "api") != name
    assert compose_project_name("/work/shop", "api-") != name
    assert compose_project_name("/work/shop", "api", repo_name="Shop Front!").startswith("hybridiso-shop-front-api-")
    # what compose forbids is mapped, long parts are cut, nothing left is "x"
    odd = compose_project_name("/w/My Repo..v2", "a_b")
    assert odd.startswith("hybridiso-my-repo-v2-a-b-") and PROJECT_NAME_RE.match(odd)
    long = compose_project_name("/w/" + "r" * 60, "a" * 40)
    assert long.startswith("hybridiso-" + "r" * 20 + "-" + "a" * 40 + "-") and len(long) <= 80
    assert compose_project_name("/w/---", "a").startswith("hybridiso-x-a-")
    assert compose_project_name("/w/r", "a", repo_name="-" * 30 + "b").startswith("hybridiso-b-a-")


def test_ref_conflict_names_the_branch_in_the_way() -> None:
    assert ref_conflict("feat/x", ["feat", "main"]) == "feat"
    assert ref_conflict("a/b/c", ["a"]) == "a"
    assert ref_conflict("a/b/c", ["a/b"]) == "a/b"
    assert ref_conflict("feat", ["feat/x", "main"]) == "feat/x"
    assert ref_conflict("feat", ["feature", "feat-x", "feat.y"]) is None  # a prefix, not a directory
    assert ref_conflict("feat", []) is None and ref_conflict("feat", ["feat"]) is None
    assert env_var_for_port("web") == "PORT_WEB"
