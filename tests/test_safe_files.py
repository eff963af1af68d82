"""hybridiso.safe_files: symlinks, FIFOs and devices are never followed or read."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hybridiso import safe_files
from hybridiso.safe_files import UnsafePath


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    f = outside / "precious.txt"
    f.write_text("do not touch\n")
    return f


def test_write_replaces_a_symlink_instead_of_following_it(tmp_path: Path, victim: Path) -> None:
    anchor = tmp_path / "env"
    anchor.mkdir()
    (anchor / ".hybridiso.env").symlink_to(victim)
    safe_files.write_atomic(anchor, ".hybridiso.env", "A=1\n")
    assert victim.read_text() == "do not touch\n"
    assert not (anchor / ".hybridiso.env").is_symlink()
    assert (anchor / ".hybridiso.env").read_text() == "A=1\n"
    assert oct((anchor / ".hybridiso.env").stat().st_mode & 0o777) == oct(0o600)


def test_symlinked_parent_is_refused_for_reads_and_writes(tmp_path: Path, victim: Path) -> None:
    anchor = tmp_path / "env"
    anchor.mkdir()
    (anchor / "config").symlink_to(victim.parent)
    with pytest.raises(UnsafePath, match="symlink"):
        safe_files.write_atomic(anchor, "config/precious.txt", "pwned")
    with pytest.raises(UnsafePath, match="symlink"):
        safe_files.read_bytes(anchor, "config/precious.txt")
    with pytest.raises(UnsafePath, match="symlink"):
        safe_files.ensure_dir(anchor, "config/sub")
    assert victim.read_text() == "do not touch\n"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["precious.txt"]


def test_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "f")
    result: list[BaseException | None] = []

    def read() -> None:
        try:
            safe_files.read_bytes(tmp_path, "f")
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            result.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    assert result, "reading a FIFO blocked"
    assert isinstance(result[0], UnsafePath) and "FIFO" in str(result[0])
    with pytest.raises(UnsafePath, match="FIFO"):
        os.close(safe_files.open_regular(tmp_path, "f", os.O_WRONLY | os.O_APPEND | os.O_CREAT))


def test_symlink_to_a_device_is_never_read(tmp_path: Path) -> None:
    (tmp_path / "state.json").symlink_to("/dev/zero")
    with pytest.raises(UnsafePath, match="symlink"):
        safe_files.read_bytes(tmp_path, "state.json")


def test_device_and_oversized_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafePath, match="character device"):
        safe_files.read_bytes(Path("/dev"), "null")
    (tmp_path / "big").write_bytes(b"x" * 2048)
    with pytest.raises(UnsafePath, match="2048 bytes"):
        safe_files.read_bytes(tmp_path, "big", limit=1024)
    assert safe_files.read_bytes(tmp_path, "big", limit=4096) == b"x" * 2048
    assert safe_files.read_bytes(tmp_path, "missing") is None
    assert safe_files.read_bytes(tmp_path, "no/such/dir") is None


def test_paths_may_not_climb_out(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="leaves the directory"):
        safe_files.write_atomic(tmp_path, "../escape", "x")
    assert not (tmp_path.parent / "escape").exists()


def test_open_regular_creates_with_mode_and_appends(tmp_path: Path) -> None:
    fd = safe_files.open_regular(tmp_path, "logs/a/setup.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"one\n")
    os.close(fd)
    fd = safe_files.open_regular(tmp_path, "logs/a/setup.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"two\n")
    os.close(fd)
    log = tmp_path / "logs" / "a" / "setup.log"
    assert log.read_text() == "one\ntwo\n"
    assert log.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "logs").stat().st_mode & 0o777 == 0o700
