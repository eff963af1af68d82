"""A run reuses its scratch worktree from candidate to candidate
(land/scratch.py), and what one candidate's check leaves there never
reaches the next one's: untracked and ignored files, changed and deleted
tracked files, a nested repository added as a gitlink, a hook planted in
the repository's hooks, a stash, index flags that hide files, a ``.git``
link pointed elsewhere, a FIFO for an index, a ``commondir`` naming another
repository.  Each check fails when it finds any of that, so a
leak is a red candidate."""
from __future__ import annotations

from pathlib import Path

from tests.land.trains import agent_commit, by_agent, land_json, scratch_entries, train_repo
from tests.support.gitrepo import git

# fails (exit 1, says why) unless the scratch is exactly the candidate's commit
CLEAN = r"""
fail() { echo "LEAK: $*"; exit 1; }
pwd -P > "$OUT/$HYBRIDISO_AGENT.pwd"
[ "$(git rev-parse HEAD)" = "$HYBRIDISO_LAND_COMMIT" ] || fail "HEAD is not the candidate"
left=$(git status --porcelain --ignored --untracked-files=all)
[ -z "$left" ] || fail "status: $left"
flags=$(git ls-files -v | grep -v '^H ' || true)
[ -z "$flags" ] || fail "index flags: $flags"
for f in junk.txt junk.ignored build sub hook-ran; do [ ! -e "$f" ] || fail "$f is there"; done
[ "$(cat app.txt)" = "$(git show HEAD:app.txt)" ] || fail "app.txt changed"
[ -e README.md ] || fail "README.md deleted"
case "$(git rev-parse --absolute-git-dir)" in "$COMMON"/worktrees/*) ;; *) fail "git dir is $(git rev-parse --absolute-git-dir)";; esac
"""

JUNK = {
    "a": r"""
echo stash >> README.md && git stash -q
echo junk > junk.txt && echo junk > junk.ignored && mkdir -p build && echo o > build/out.o
echo changed >> app.txt && rm README.md
git init -q sub && git -C sub commit -q --allow-empty -m sub && git add sub 2>/dev/null
mkdir -p "$COMMON/hooks" && printf '#!/bin/sh\ntouch "$PWD/hook-ran"\n' > "$COMMON/hooks/post-checkout" && chmod +x "$COMMON/hooks/post-checkout"
""",
    "b": r"""
echo hidden > README.md && git update-index --skip-worktree README.md
echo hidden > app.txt && git update-index --assume-unchanged app.txt
""",
    "c": r"""
git clone -q --no-checkout "$COMMON" "$OUT/decoy" && git -C "$OUT/decoy" rev-parse HEAD > "$OUT/decoy.head"
echo "gitdir: $OUT/decoy/.git" > .git
""",
    "d": r"""
idx=$(git rev-parse --absolute-git-dir)/index && rm -f "$idx" && mkfifo "$idx"
""",
    "e": r"""
echo "$OUT/decoy/.git" > "$(git rev-parse --absolute-git-dir)/commondir"
""",
    "f": "",
}


def test_what_a_check_leaves_in_the_scratch_never_reaches_the_next_check(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "check.sh"
    body = "".join(f'if [ "$HYBRIDISO_AGENT" = {name} ]; then :\n{junk}\nfi\n' for name, junk in JUNK.items())
    script.write_text("#!/bin/sh\n" + CLEAN + body + "exit 0\n")
    script.chmod(0o755)
    repo = train_repo(tmp_path, f'  check: ["{script}"]\n', list(JUNK), {a: f"    env: {{OUT: '{out}', COMMON: '{tmp_path}/repo/.git'}}" for a in JUNK})
    (repo / ".gitignore").write_text("*.ignored\nbuild/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore")
    for name in JUNK:
        agent_commit(repo, name, {f"{name}.txt": f"{name}\n"})
    data, proc = land_json(repo, ok=True)
    got = by_agent(data)
    assert [got[n]["result"] for n in JUNK] == ["landed"] * len(JUNK), proc.stdout + proc.stderr
    pwd = {n: (out / f"{n}.pwd").read_text().strip() for n in JUNK}
    assert pwd["b"] == pwd["a"]  # cleaned and reused after a's junk
    assert pwd["c"] != pwd["b"]  # b's index hid files: a new scratch for c
    assert pwd["d"] != pwd["c"]  # c pointed its .git elsewhere: not land's any more, never run in again
    assert pwd["e"] != pwd["d"]  # d made its index a FIFO (git would block on it): a new one, and no hang
    assert pwd["f"] != pwd["e"]  # e pointed its metadata's commondir at another repository
    # c's scratch is left (its .git names another repository) and said; no other
    assert scratch_entries(repo) == [Path(pwd["c"]).name]
    assert f"{pwd['c']} is not a scratch worktree hybridiso made" in proc.stderr
    assert git(repo, "stash", "list")  # a's stash is the repository's (refs/stash is shared): land leaves it
    # land never ran git where that .git pointed (a clone with every commit: a reset there would have moved its HEAD)
    assert git(out / "decoy", "rev-parse", "HEAD") == (out / "decoy.head").read_text().strip()


def test_keep_failed_keeps_the_failed_scratch_and_the_next_candidate_gets_another(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "check.sh"
    script.write_text(f'#!/bin/sh\npwd -P > {out}/$HYBRIDISO_AGENT.pwd\n[ ! -e BROKEN ] || {{ echo left > made-by-check; exit 1; }}\n[ ! -e made-by-check ]\n')
    script.chmod(0o755)
    repo = train_repo(tmp_path, f'  check: ["{script}"]\n', ["a", "b", "c"])
    agent_commit(repo, "a", {"a.txt": "a\n"})
    agent_commit(repo, "b", {"BROKEN": "x\n"})
    agent_commit(repo, "c", {"c.txt": "c\n"})
    data, proc = land_json(repo, "--keep-failed", ok=False)
    got = by_agent(data)
    assert [got[n]["result"] for n in "abc"] == ["landed", "failed", "landed"], proc.stderr
    pwd = {n: (out / f"{n}.pwd").read_text().strip() for n in "abc"}
    assert pwd["b"] == pwd["a"] and pwd["c"] != pwd["b"]  # a's reused for b; b's kept, so c got a new one
    kept = Path(got["b"]["kept"])
    assert kept.parent == repo / ".git" / "hybridiso" / "land" / "kept" and kept.name.startswith("b-")  # named for whose it is
    assert (kept / "BROKEN").is_file() and (kept / "made-by-check").read_text() == "left\n"  # as the check left it
    assert not Path(pwd["b"]).exists() and scratch_entries(repo) == []
    assert git(kept, "diff", "--name-only", "main~1", "HEAD") == "BROKEN"  # b applied on what a landed (c landed after)
