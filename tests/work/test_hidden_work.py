"""Work that ``git status`` does not show is still work (attack11 #1, #2, #6).

Each fault is made for real in a worktree and a clone environment: index
flags (``--skip-worktree``, ``--assume-unchanged``), ignore rules the
environment added (a ``.gitignore`` the commit lacks, a line added to a
clone's ``info/exclude``), a repository nested inside the environment, and a
file renamed to an ignored name, then edited.  Plain ``down`` refuses naming
it; ``down --force`` saves it and ``hybridiso restore`` brings back the
same bytes -- or, for a nested repository a backup cannot hold, ``--force``
refuses too and nothing is touched.  What the repository's own rules ignore
is disposable, and ``down`` names it as it deletes it.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.cli import hybridiso, write_manifest
from tests.support.gitrepo import git, make_repo

STRATEGIES = ["worktree", "clone"]
RESTORE_RE = re.compile(r"bring it back: (hybridiso restore (\S+) (\S+))")


def project(tmp_path: Path, isolation: str) -> tuple[Path, Path]:
    repo = make_repo(
        tmp_path / "repo",
        {"src/deep/dir/f.txt": "hi\n", ".gitignore": "*.sqlite\n.env.local\n", "README.md": "r\n"},
    )
    write_manifest(repo, f"version: 1\nbase: main\nagents:\n  - name: a\n    isolation: {isolation}\n")
    git(repo, "add", "hybridiso.yaml")
    git(repo, "commit", "-q", "-m", "manifest")
    hybridiso(repo, "up")
    return repo, tmp_path / "repo.agents" / "a"


def refs(repo: Path) -> dict[str, str]:
    lines = git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
    return dict(line.split(" ", 1) for line in lines)


def refuses(repo: Path, env: Path, *words: str) -> None:
    """Plain ``down`` (and its dry run) refuse naming ``words``; nothing changes."""
    before = refs(repo)
    for args in (("down", "--dry-run"), ("down",)):
        r = hybridiso(repo, *args, ok=False)
        assert r.returncode == 1
        text = r.stdout + r.stderr
        assert "would refuse" in text if "--dry-run" in args else "would lose" in r.stderr, text
        for w in words:
            assert w in text, (w, text)
    assert env.is_dir()
    assert refs(repo) == before


def force_and_restore(repo: Path, env: Path) -> str:
    """``down --force`` then the restore command it printed: the files branch."""
    r = hybridiso(repo, "down", "--force")
    assert not env.exists()
    m = RESTORE_RE.search(r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    hybridiso(repo, *m.group(1).split()[1:])
    return f"restored/a/{m.group(3)}/files"


def saved(repo: Path, branch: str, rel: str) -> str:
    return git(repo, "show", f"{branch}:{rel}")


@pytest.mark.parametrize("isolation", STRATEGIES)
@pytest.mark.parametrize("flag", ["--skip-worktree", "--assume-unchanged"])
def test_an_edit_under_an_index_flag_is_work(tmp_path: Path, isolation: str, flag: str) -> None:
    repo, env = project(tmp_path, isolation)
    git(env, "update-index", flag, "src/deep/dir/f.txt")
    (env / "src/deep/dir/f.txt").write_text("hi\nEDIT\n")
    assert git(env, "status", "--porcelain") == ""  # git itself no longer shows it
    refuses(repo, env, "1 modified: src/deep/dir/f.txt")
    branch = force_and_restore(repo, env)
    assert saved(repo, branch, "src/deep/dir/f.txt") == "hi\nEDIT"


@pytest.mark.parametrize("isolation", STRATEGIES)
def test_a_folder_that_ignores_itself_is_work(tmp_path: Path, isolation: str) -> None:
    repo, env = project(tmp_path, isolation)
    (env / "notes").mkdir()
    (env / "notes/.gitignore").write_text("*\n")
    (env / "notes/plan.md").write_text("PLAN\n")
    assert git(env, "status", "--porcelain") == ""
    refuses(repo, env, "ignored only by the environment's own rules: notes/")
    branch = force_and_restore(repo, env)
    assert saved(repo, branch, "notes/plan.md") == "PLAN"
    assert saved(repo, branch, "notes/.gitignore") == "*"


def test_a_clone_exclude_line_the_repository_lacks_hides_nothing(tmp_path: Path) -> None:
    repo, env = project(tmp_path, "clone")
    with (env / ".git/info/exclude").open("a") as f:
        f.write("secret*\n")
    (env / "secret.txt").write_text("S\n")
    assert git(env, "status", "--porcelain") == ""
    refuses(repo, env, "ignored only by the environment's own rules: secret.txt")
    branch = force_and_restore(repo, env)
    assert saved(repo, branch, "secret.txt") == "S"


@pytest.mark.parametrize("isolation", STRATEGIES)
def test_what_the_repository_ignores_is_disposable_and_named(tmp_path: Path, isolation: str) -> None:
    """The rule: the repository's own committed .gitignore ignores it, so it
    is not work (docs/lifecycle.md); ``down`` still says it deleted it."""
    repo, env = project(tmp_path, isolation)
    (env / "data.sqlite").write_text("DB\n")
    r = hybridiso(repo, "down")
    assert "deleted what the repository's own ignore rules ignore: data.sqlite" in r.stdout + r.stderr
    assert not env.exists()


@pytest.mark.parametrize("isolation", STRATEGIES)
def test_a_file_renamed_to_an_ignored_name_keeps_its_edit(tmp_path: Path, isolation: str) -> None:
    repo, env = project(tmp_path, isolation)
    (env / "src/deep/dir/f.txt").rename(env / "src/f.sqlite")
    with (env / "src/f.sqlite").open("a") as f:
        f.write("EDITED\n")
    refuses(repo, env, "1 modified: src/deep/dir/f.txt")
    r = hybridiso(repo, "down", "--force", ok=None)
    assert r.returncode == 0, r.stderr
    assert "ignored files kept in the backup too: src/f.sqlite" in r.stdout + r.stderr
    m = RESTORE_RE.search(r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    hybridiso(repo, *m.group(1).split()[1:])
    branch = f"restored/a/{m.group(3)}/files"
    assert saved(repo, branch, "src/f.sqlite") == "hi\nEDITED"
    assert "src/deep/dir/f.txt" not in git(repo, "ls-tree", "-r", "--name-only", branch).split()


def _nested_init(env: Path) -> str:
    nested = env / "nested"
    nested.mkdir()
    git(nested, "init", "-q")
    (nested / "x").write_text("X\n")
    git(nested, "add", "x")
    git(nested, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "-m", "NESTED")
    (nested / "uncommitted").write_text("U\n")
    return "nested"


def _worktree_of_main(env: Path) -> str:
    git(env, "worktree", "add", "-q", "-b", "inner-br", "inner")
    (env / "inner/notes.txt").write_text("U\n")
    return "inner"


def _own_worktree_of_clone(env: Path) -> str:
    git(env, "worktree", "add", "-q", "--detach", "inner")
    git(env / "inner", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "IN")
    return "inner"


def _hidden_deep(env: Path) -> str:
    (env / "notes").mkdir()
    (env / "notes/.gitignore").write_text("*\n")
    (env / "notes/deep").mkdir()
    git(env / "notes/deep", "init", "-q", "r")
    (env / "notes/deep/r/f").write_text("F\n")
    return "notes/deep/r"


NESTED = [
    ("worktree", _nested_init),
    ("clone", _nested_init),
    ("worktree", _worktree_of_main),
    ("clone", _own_worktree_of_clone),
    ("clone", _hidden_deep),
]


@pytest.mark.parametrize(("isolation", "make"), NESTED, ids=[f"{i}-{m.__name__.strip('_')}" for i, m in NESTED])
def test_a_nested_repository_is_refused_even_with_force(tmp_path: Path, isolation: str, make: object) -> None:
    repo, env = project(tmp_path, isolation)
    assert callable(make)
    where = make(env)
    files = sorted(str(p.relative_to(env)) for p in env.rglob("*") if ".git" not in p.relative_to(env).parts)
    heads = git(env / where, "rev-parse", "HEAD", check=False)
    before = refs(repo)
    r = hybridiso(repo, "down", "--force", ok=False)
    assert r.returncode == 1
    assert f"{where} is a git repository of its own inside the environment" in r.stderr, r.stderr
    assert "nothing was removed" in r.stderr
    assert sorted(str(p.relative_to(env)) for p in env.rglob("*") if ".git" not in p.relative_to(env).parts) == files
    assert git(env / where, "rev-parse", "HEAD", check=False) == heads
    assert refs(repo) == before
