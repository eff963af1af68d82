from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import REPORTED, crash_logs
from tests.support.gitrepo import make_repo

# The checkout under test: subprocesses (`python -m hybridiso`) must run this
# tree's code, not whatever an editable install elsewhere points at.
CHECKOUT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.support.docker_fixtures", "tests.support.postgres"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No test may read or write the real user's home or global git config."""
    home = tmp_path_factory.mktemp("home")
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Test Agent\n\temail = test@example.invalid\n"
        "[init]\n\tdefaultBranch = main\n"
        # local submodule URLs in tests (git >= 2.38.1 forbids them by default)
        "[protocol \"file\"]\n\tallow = always\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", str(CHECKOUT))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_CONFIG_GLOBAL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Agent")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Agent")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.invalid")
    # a TMPDIR per test: hybridiso writes its crash logs there (errors.py), so
    # a crash in any run the test made, however it started it, is found below
    tmp = tmp_path_factory.mktemp("tmp")
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield home
    logs = crash_logs() - REPORTED
    if logs:
        shown = "\n".join(f"--- {log}\n{log.read_text(errors='replace')}" for log in sorted(logs))
        pytest.fail(f"hybridiso crashed during this test (exit 3) and wrote:\n{shown}", pytrace=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh repository with one commit on ``main``."""
    return make_repo(tmp_path / "repo", {"README.md": "hello\n", "src/app.py": "print('hi')\n"})
