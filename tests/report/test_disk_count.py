"""The quick disk count (issue 15) says exactly what the inode-by-inode count
says, on trees made to trip it: hard links inside one tree, between trees and
to the store, a clone's hard-linked objects, an environment inside another
(or inside the store), a symlinked one, a missing one, files going away."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hybridiso.report import measure
from hybridiso.report.measure import disk_report, exact_disk_report
from tests.support.gitrepo import git, make_repo


def _tree(root: Path, n: int, size: int = 3000) -> Path:
    for i in range(n):
        f = root / f"d{i % 4}" / f"f{i}"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * (size + 700 * i))
    return root


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, dict[str, Path], list[Path]]:
    repo = make_repo(tmp_path / "proj", {f"src/m{i}.py": f"v = {i}\n" * (50 + i) for i in range(40)})
    git(repo, "gc", "-q")
    store = repo / ".git"
    _tree(store / "hybridiso", 3)  # the state dir: not the store's
    ws = tmp_path / "proj.agents"
    a, b = _tree(ws / "a", 12), _tree(ws / "b", 9)
    os.link(a / "d0" / "f0", b / "d0" / "linked-from-a")  # shared by two envs
    os.link(a / "d1" / "f1", a / "d2" / "second-name")  # two names in one env: still its own
    pack = next((store / "objects" / "pack").glob("*.pack"))
    os.link(pack, b / "pack-copy")  # hard-linked to the store (a clone's objects)
    os.link(store / "hybridiso" / "d0" / "f0", a / "from-state-dir")  # linked to the excluded dir
    git(tmp_path, "clone", "-q", "--local", str(repo), str(ws / "c"))
    os.symlink(a / "d0", a / "link-to-dir")  # never followed
    os.mkfifo(a / "d3" / "fifo")  # never opened (it would block whoever reads it)
    return store, {"a": a, "b": b, "c": ws / "c", "gone": ws / "gone"}, [store / "hybridiso"]


def test_the_quick_count_is_the_exact_count(trees: tuple[Path, dict[str, Path], list[Path]]) -> None:
    store, envs, exclude = trees
    quick = disk_report(store, envs, exclude)
    assert quick == exact_disk_report(store, envs, exclude)
    # and it did count the shared parts as shared (the fixture is not trivial)
    assert quick.envs["b"].shared_bytes > 0 and quick.envs["c"].shared_bytes > 0
    assert quick.envs["a"].unique_bytes > 0 and quick.envs["gone"] == measure.DiskShare(0, 0, 0)


def test_without_gnu_find_python_walks_the_same(trees: tuple[Path, dict[str, Path], list[Path]], monkeypatch: pytest.MonkeyPatch) -> None:
    store, envs, exclude = trees
    monkeypatch.setenv("PATH", str(store))  # no find on PATH: the Python walk
    assert measure._find_walks([os.fspath(store)]) is None
    assert disk_report(store, envs, exclude) == exact_disk_report(store, envs, exclude)


@pytest.mark.parametrize("shape", ["nested", "inside-store", "symlink", "same-twice", "store-in-env"])
def test_overlapping_trees_are_counted_exactly(trees: tuple[Path, dict[str, Path], list[Path]], shape: str) -> None:
    store, envs, exclude = trees
    envs = dict(envs)
    if shape == "nested":
        envs["inner"] = envs["a"] / "d0"  # files reached from two envs, each with one link
    elif shape == "inside-store":
        envs["objects"] = store / "objects"
    elif shape == "symlink":
        link = envs["a"].parent / "sym"
        link.symlink_to(envs["b"])  # inodes() scans through a symlinked top
        envs["sym"] = link
    elif shape == "same-twice":
        envs["again"] = envs["b"]
    else:
        envs["whole"] = store.parent  # the repository, store inside it
    assert disk_report(store, envs, exclude) == exact_disk_report(store, envs, exclude)


def test_a_mount_inside_a_tree_means_the_exact_count(trees: tuple[Path, dict[str, Path], list[Path]], monkeypatch: pytest.MonkeyPatch) -> None:
    store, envs, exclude = trees
    points = [os.fspath(envs["a"] / "d0")]
    assert not measure._mounts_inside([envs["b"]])
    calls: list[int] = []
    real = measure.exact_disk_report
    monkeypatch.setattr(measure, "exact_disk_report", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(measure, "_mount_points", lambda: points)
    assert measure._mounts_inside([envs["a"]])  # d0 is inside a
    assert disk_report(store, envs, exclude) == real(store, envs, exclude)
    assert calls == [1]


def test_mount_table_paths_are_unescaped() -> None:
    assert measure._unescape("/a\\040b\\011c\\134d") == "/a b\tc\\d"
