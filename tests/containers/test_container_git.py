"""Git inside a container agent without the keys to the house (issue 12,
part 1): a real container agent on the real engine tries every way it has
to make the host run its code or move what is not its own, through git and
around it; the host is untouched.  And what the agent needs of git works:
commit, stash, rebase inside, its commit on the agent branch on the host,
uncommitted work and stash entries kept by ``down`` and brought back by
``restore``.

Each test runs twice: with hybridiso run by root (the container gets an
unprivileged uid of its own) and by a normal user (a throwaway uid, which
the container then runs as: nothing but the mounts stands between the
agent and that user's files).  The normal user is made with ``setpriv``
from root, keeping only CAP_DAC_READ_SEARCH so it can read the Python that
runs hybridiso under /root (it writes nothing it does not own).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import needs
from tests.support.cli import check_no_crash
from tests.support.docker_fixtures import TEST_LABEL, TEST_RUN

pytestmark = pytest.mark.docker

PLAIN_UID = 1_234_567  # no such user on the machine: files it makes are its own alone
WORKTREE = Path(__file__).resolve().parents[2]


@dataclass
class HostUser:
    name: str
    prefix: list[str]
    env: dict[str, str]
    uid: int
    base: Path  # where its repositories go: a directory it owns, on a path it can walk

    def run(self, cwd: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*self.prefix, *argv], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
        if check:
            assert p.returncode == 0, f"{' '.join(argv)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
        return p

    def hi(self, cwd: Path, *args: str, ok: bool | None = True) -> subprocess.CompletedProcess[str]:
        p = self.run(cwd, sys.executable, "-m", "hybridiso", *args, check=False)
        check_no_crash(p, args)
        if ok is True:
            assert p.returncode == 0, f"hybridiso {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
        elif ok is False:
            assert p.returncode != 0, f"hybridiso {' '.join(args)} unexpectedly succeeded:\n{p.stdout}\n{p.stderr}"
        return p

    def git(self, cwd: Path, *args: str) -> str:
        return self.run(cwd, "git", *args).stdout.strip()


@pytest.fixture(params=["root", "normal"])
def host_user(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HostUser]:
    env = {**os.environ, "PYTHONPATH": str(WORKTREE), "HYBRIDISO_TEST_RUN": TEST_RUN}
    for k in [k for k in env if k.startswith("GIT_")]:
        env.pop(k)
    env.update(GIT_AUTHOR_NAME="Host", GIT_AUTHOR_EMAIL="host@example.invalid", GIT_COMMITTER_NAME="Host", GIT_COMMITTER_EMAIL="host@example.invalid")
    if request.param == "root":
        if os.geteuid() != 0:
            needs.root("the root case")
        yield HostUser("root", [], env, 0, tmp_path)
        return
    if os.geteuid() != 0:
        yield HostUser("normal", [], {**env, "HOME": str(tmp_path)}, os.getuid(), tmp_path)
        return
    if not shutil.which("setpriv"):
        needs.cannot_run("no setpriv to become a normal user")
    # pytest's own temp dirs are root's 0700: git as another uid refuses a
    # work tree below them, so the normal user's live in a /tmp dir of its own
    base = Path(tempfile.mkdtemp(prefix="hybridiso-plain-"))
    os.chown(base, PLAIN_UID, PLAIN_UID)
    docker_gid = os.stat("/var/run/docker.sock").st_gid
    prefix = [
        "setpriv", f"--reuid={PLAIN_UID}", f"--regid={PLAIN_UID}", f"--groups={docker_gid}",
        "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
    ]
    try:
        # and its TMPDIR: the test's own is root's too
        yield HostUser("normal", prefix, {**env, "HOME": str(base), "TMPDIR": str(base)}, PLAIN_UID, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def make_repo(user: HostUser, root: Path, agents: str) -> Path:
    root.mkdir()
    if user.prefix:
        os.chown(root, user.uid, user.uid)
    user.git(root, "init", "-q", "-b", "main")
    user.git(root, "config", "user.name", "Host")  # the identity the agents commit with
    user.git(root, "config", "user.email", "host@example.invalid")
    (root / "a.txt").write_text("a\n")
    (root / "hybridiso.yaml").write_text(f'labels: {{{TEST_LABEL}: "{TEST_RUN}"}}\nagents:\n{agents}')
    if user.prefix:
        for p in (root / "a.txt", root / "hybridiso.yaml"):
            os.chown(p, user.uid, user.uid)
    user.git(root, "add", "-A")
    user.git(root, "commit", "-qm", "initial")
    return root


def agent(name: str, image: str) -> str:
    return f'  - {{name: {name}, isolation: container, image: {image}, command: ["sleep", "infinity"]}}\n'


def ref_map(user: HostUser, repo: Path) -> dict[str, str]:
    found = {}
    for line in user.git(repo, "for-each-ref", "--format=%(refname) %(objectname)").splitlines():
        name, oid = line.split(" ")
        found[name] = oid
    return found


def test_nothing_a_container_writes_runs_on_the_host_or_moves_what_is_not_its_own(tmp_path: Path, git_image: str, host_user: HostUser) -> None:
    repo = make_repo(host_user, host_user.base / "r", agent("dev", git_image) + agent("other", git_image))
    common = repo / ".git"
    marker = host_user.base / "PWNED"  # a host path the container cannot reach: only the host could make it
    hi = host_user.hi
    try:
        hi(repo, "up")
        env = host_user.base / "r.agents" / "dev"
        # a backup of another agent the attacker would like gone
        main_tip = host_user.git(repo, "rev-parse", "main")
        host_user.git(repo, "update-ref", "refs/hybridiso/backup/other/20260101T000000Z-abcdef/files", main_tip)
        before = ref_map(host_user, repo)
        watched = {p: p.read_bytes() for p in [common / "config", common / "HEAD", env / ".git", common / "info" / "exclude"]}
        records = {n: (r["path"], r["branch"]) for n, r in json.loads((common / "hybridiso" / "state.json").read_text())["agents"].items()}
        hooks = sorted(os.listdir(common / "hooks")) if (common / "hooks").is_dir() else []
        script = f"""
set -u
GD=$(git rev-parse --absolute-git-dir)
echo "gitdir $GD"
try() {{ name=$1; shift; if ( "$@" ) >/dev/null 2>&1; then echo "did $name"; else echo "refused $name"; fi; }}
# what the host's git would run, if it read any of it
try fsmonitor git config core.fsmonitor "touch {marker} 2>/dev/null; false"
mkdir -p /tmp/hooks
for h in post-checkout post-commit post-merge post-rewrite pre-auto-gc reference-transaction post-index-change pre-push; do
  printf '#!/bin/sh\\ntouch {marker} 2>/dev/null; exit 0\\n' > /tmp/hooks/$h; cp /tmp/hooks/$h "$GD/hooks/$h" 2>/dev/null || {{ mkdir -p "$GD/hooks" && cp /tmp/hooks/$h "$GD/hooks/$h"; }}
done
chmod +x /tmp/hooks/* "$GD"/hooks/*
try hooks-path git config core.hooksPath /tmp/hooks
try filter git config filter.evil.clean "touch {marker} 2>/dev/null; cat"
try smudge git config filter.evil.smudge "touch {marker} 2>/dev/null; cat"
echo '* filter=evil' > .gitattributes
# a nested repository with a config of its own, committed as a gitlink
git init -q sub && git -C sub config core.fsmonitor "touch {marker} 2>/dev/null; false" && echo s > sub/s && git -C sub add s && git -C sub commit -qm s
git add .gitattributes sub 2>/dev/null; git commit -qm "agent work" && echo committed
# the host's files, and its state: not there at all
try state-read cat {common}/hybridiso/state.json
try state-write sh -c 'echo {{}} > {common}/hybridiso/state.json'
try config-write sh -c 'echo "[core] fsmonitor = touch {marker}" >> {common}/config'
try hook-write sh -c 'echo x > {common}/hooks/post-commit'
try admin-dir ls {common}/worktrees
try objects-write touch {common}/objects/planted
try gitfile-write sh -c 'echo "gitdir: /tmp" > .git'
try gitfile-remove rm -f .git
# refs: in its own repository, which is all it has
try main-branch git update-ref refs/heads/main HEAD
try other-branch git update-ref refs/heads/hybridiso/other HEAD
try backup-ref git update-ref refs/hybridiso/backup/other/20260101T000000Z-abcdef/files HEAD
try replace-ref git update-ref refs/replace/{main_tip} HEAD
try tag git tag planted
# and what the host reads of its repository: alternates, a symlinked pack
try alternates sh -c 'echo /etc > "$GD/objects/info/alternates"'
try symlink-pack ln -s /etc/passwd "$GD/objects/pack/pack-0000000000000000000000000000000000000000.pack"
echo done
"""
        (env / "attack.sh").write_text(script)
        out = hi(repo, "exec", "dev", "--", "bash", "attack.sh").stdout
        assert "committed" in out and "done" in out, out
        lines = out.splitlines()
        # nothing of the host's is there to touch
        for name in ("state-read", "state-write", "config-write", "hook-write", "admin-dir", "objects-write", "gitfile-write", "gitfile-remove"):
            assert f"refused {name}" in lines, (name, out)
        assert f"gitdir {common}/hybridiso/containers/dev/git" in lines
        # the host works on the environment: every command that reads it
        hi(repo, "status")
        hi(repo, "gc")
        hi(repo, "down", "dev", ok=False)  # its other refs and its files are work
        assert not marker.exists()
        after = ref_map(host_user, repo)
        # nothing but its own branch moved (and its collected refs appeared)
        changed = {r for r in set(before) | set(after) if before.get(r) != after.get(r)}
        assert changed - {"refs/heads/hybridiso/dev"} == {r for r in changed if r.startswith("refs/hybridiso/agents/dev/")}, changed
        assert after["refs/heads/hybridiso/other"] == before["refs/heads/hybridiso/other"] == main_tip
        # sync rebases both (inside their containers): other's branch becomes the new base, nothing of dev's
        host_user.git(repo, "commit", "--allow-empty", "-qm", "base moved")
        hi(repo, "sync")
        hi(repo, "down", "dev", ok=False)
        assert not marker.exists()
        after = ref_map(host_user, repo)
        assert after["refs/heads/hybridiso/other"] == after["refs/heads/main"]
        assert after["refs/hybridiso/backup/other/20260101T000000Z-abcdef/files"] == main_tip
        assert not [r for r in after if r.startswith(("refs/replace/", "refs/tags/"))]
        assert host_user.git(repo, "log", "-1", "--format=%s", "main") == "base moved"  # the host's own commit, nothing else
        assert host_user.git(repo, "log", "-1", "--format=%s", "hybridiso/dev") == "agent work"
        assert {p: p.read_bytes() for p in watched} == watched
        assert {n: (r["path"], r["branch"]) for n, r in json.loads((common / "hybridiso" / "state.json").read_text())["agents"].items()} == records
        assert (sorted(os.listdir(common / "hooks")) if (common / "hooks").is_dir() else []) == hooks
        # the alternates it rewrote were put back before the host read them
        alternates = (common / "hybridiso" / "containers" / "dev" / "git" / "objects" / "info" / "alternates").read_text()
        assert alternates == f"{common / 'objects'}\n"
        assert not os.path.lexists(common / "hybridiso" / "containers" / "dev" / "git" / "objects" / "pack" / ("pack-" + "0" * 40 + ".pack"))
        hi(repo, "down", "--force")
        assert not marker.exists()
        assert not [r for r in ref_map(host_user, repo) if r.startswith("refs/hybridiso/agents/dev/")]
        assert not (common / "hybridiso" / "containers" / "dev").exists()
    finally:
        hi(repo, "down", "--force", ok=None)
        assert not marker.exists()


def test_commit_stash_and_rebase_inside_land_on_the_branch_and_down_keeps_the_rest(tmp_path: Path, git_image: str, host_user: HostUser) -> None:
    repo = make_repo(host_user, host_user.base / "r", agent("dev", git_image))
    hi = host_user.hi
    try:
        hi(repo, "up")
        env = host_user.base / "r.agents" / "dev"
        out = hi(repo, "exec", "dev", "--", "sh", "-c", """
set -e
git status --porcelain --branch | head -1
echo b > b.txt && git add b.txt && git commit -qm 'agent work'
echo s1 > s1.txt && git stash push -qu -m first
echo s2 > s2.txt && git stash push -qu -m second
git stash list | wc -l
git stash apply -q stash@{1} && git stash drop -q stash@{1} && rm s1.txt
git stash list
echo ok
""").stdout
        assert out.splitlines()[0] == "## hybridiso/dev" and "ok" in out, out
        # exec brought the commit to the agent branch
        assert host_user.git(repo, "log", "-1", "--format=%s", "hybridiso/dev") == "agent work"
        # the base moves; the agent rebases onto it inside, as the host has it
        (repo / "base.txt").write_text("base\n")
        if host_user.prefix:
            os.chown(repo / "base.txt", host_user.uid, host_user.uid)
        host_user.git(repo, "add", "base.txt")
        host_user.git(repo, "commit", "-qm", "base moved")
        hi(repo, "up")  # shows it the new base
        out = hi(repo, "exec", "dev", "--", "sh", "-c", "git rebase -q host/main && git log --format=%s -2").stdout
        assert out.split("\n")[:2] == ["agent work", "base moved"], out
        st = json.loads(hi(repo, "status", "--json").stdout)[0]
        assert st["ahead"] == 1 and st["behind"] == 0 and st["dirty"] == 0
        # uncommitted work inside: down refuses, naming it and the stash entry
        hi(repo, "exec", "dev", "--", "sh", "-c", "echo w > wip.txt && echo changed >> a.txt")
        r = hi(repo, "down", ok=False)
        assert "wip.txt" in r.stderr and "a.txt" in r.stderr and "stash entr" in r.stderr, r.stderr
        assert (env / "wip.txt").exists()
        r = hi(repo, "down", "--force")
        assert not env.exists()
        backup = next(line.split("hybridiso restore dev ")[1].split()[0] for line in r.stdout.splitlines() + r.stderr.splitlines() if "hybridiso restore dev " in line)
        hi(repo, "restore", "dev", backup)
        base = f"restored/dev/{backup}"
        files = host_user.git(repo, "show", f"{base}/files:wip.txt")
        assert files == "w" and host_user.git(repo, "show", f"{base}/files:a.txt") == "a\nchanged"
        assert host_user.git(repo, "log", "-1", "--format=%s", f"{base}/heads/hybridiso/dev") == "agent work"
        assert host_user.git(repo, "show", f"{base}/stash/0^3:s2.txt") == "s2"  # the stash entry left, untracked file and all
    finally:
        hi(repo, "down", "--force", ok=None)


def test_sync_rebases_a_container_agent_inside_its_container(tmp_path: Path, git_image: str, host_user: HostUser) -> None:
    repo = make_repo(host_user, host_user.base / "r", agent("dev", git_image))
    hi = host_user.hi
    try:
        hi(repo, "up")
        hi(repo, "exec", "dev", "--", "sh", "-c", "echo b > b.txt && git add b.txt && git commit -qm 'agent work'")
        host_user.git(repo, "commit", "--allow-empty", "-qm", "base moved")
        out = hi(repo, "sync").stdout
        assert "rebased" in out, out
        assert host_user.git(repo, "log", "--format=%s", "-2", "hybridiso/dev").split("\n") == ["agent work", "base moved"]
        # inside, its own repository is where the host put it: clean, on its branch
        inside = hi(repo, "exec", "dev", "--", "sh", "-c", "git status --porcelain; git log --format=%s -2").stdout.split("\n")
        assert inside[:2] == ["agent work", "base moved"], inside
        # a conflict is aborted inside, nothing changed
        hi(repo, "exec", "dev", "--", "sh", "-c", "echo mine > a.txt && git commit -qam 'agent a'")
        (repo / "a.txt").write_text("theirs\n")
        host_user.git(repo, "commit", "-qam", "base a")
        tip = host_user.git(repo, "rev-parse", "hybridiso/dev")
        r = hi(repo, "sync", ok=False)
        out = r.stdout
        assert "conflict" in out and "a.txt" in out, out
        # the way out is inside its container, onto the base as it sees it there
        assert "`hybridiso exec dev -- git rebase host/main`" in r.stderr, r.stderr
        assert host_user.git(repo, "rev-parse", "hybridiso/dev") == tip
        assert "rebase" not in hi(repo, "exec", "dev", "--", "git", "status").stdout.lower().split("\n")[0]
    finally:
        hi(repo, "down", "--force", ok=None)


def test_commits_only_the_agents_head_reflog_reaches_are_work(tmp_path: Path, git_image: str, host_user: HostUser) -> None:
    """A commit made inside on a detached HEAD, then left (the agent checked
    its branch out again), is in no ref of its repository: only its HEAD
    reflog reaches it.  down refuses over it, --force saves it, restore
    brings it back; a commit its branch amended away is not work."""
    repo = make_repo(host_user, host_user.base / "r", agent("dev", git_image))
    hi = host_user.hi
    try:
        hi(repo, "up")
        hi(repo, "exec", "dev", "--", "sh", "-c", """
set -e
echo one > one.txt && git add one.txt && git commit -qm draft
echo one-fixed > one.txt && git add one.txt && git commit -q --amend -m final
""")
        # the branch's commit is work (down would delete the branch); the
        # commit it amended away is history rewritten on purpose, not work
        r = hi(repo, "down", ok=False)
        assert r.returncode == 1 and "final" in r.stderr and "draft" not in r.stderr, r.stderr
        hi(repo, "exec", "dev", "--", "sh", "-c", """
set -e
git checkout -q --detach
echo lost > lost.txt && git add lost.txt && git commit -qm 'made on a detached HEAD'
git checkout -q hybridiso/dev
test ! -e lost.txt
""")
        r = hi(repo, "down", ok=False)
        assert r.returncode == 1 and "no branch" in r.stderr and "made on a detached HEAD" in r.stderr, r.stderr
        assert (host_user.base / "r.agents" / "dev").is_dir()
        r = hi(repo, "down", "--force")
        backup = next(line.split("hybridiso restore dev ")[1].split()[0] for line in r.stdout.splitlines() + r.stderr.splitlines() if "hybridiso restore dev " in line)
        hi(repo, "restore", "dev", backup)
        restored = [n for n in ref_map(host_user, repo) if n.startswith(f"refs/heads/restored/dev/{backup}/detached/")]
        assert restored, ref_map(host_user, repo)
        assert any(host_user.git(repo, "show", f"{n}:lost.txt") == "lost" for n in restored)
    finally:
        hi(repo, "down", "--force", ok=None)
