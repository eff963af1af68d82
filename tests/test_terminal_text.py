"""Names an agent chose (files, refs, commit subjects) reach the user's
terminal in hybridiso's messages and tables: escape sequences in them are
shown, never obeyed (found in a hostile pass: a file name cleared the
screen and retitled the terminal through `down`'s refusal)."""
from __future__ import annotations

from pathlib import Path

from hybridiso.output import printable
from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import git, make_repo

EVIL = "evil\x1b]0;PWNED\x07\x1b[2J\x9b31m"


def test_printable_shows_control_characters_and_keeps_lines() -> None:
    assert printable("a\tb\nc") == "a\tb\nc"
    assert printable(EVIL) == "evil\\x1b]0;PWNED\\x07\\x1b[2J\\x9b31m"
    assert printable("ünïcode ✔") == "ünïcode ✔"


def test_names_an_agent_chose_are_shown_not_obeyed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    write_manifest(repo, "agents:\n  - name: a\n")
    hybridiso(repo, "up")
    env = tmp_path / "repo.agents" / "a"
    (env / EVIL).write_text("x\n")
    git(env, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", f"subject {EVIL}")
    for args in (("down", "a"), ("status",), ("gc",)):
        r = hybridiso(repo, *args, ok=None)
        both = r.stdout + r.stderr
        assert "\x1b" not in both and "\x07" not in both and "\x9b" not in both, (args, both)
    refused = hybridiso(repo, "down", "a", ok=False)
    assert "evil\\x1b]0;PWNED" in refused.stderr, refused.stderr
