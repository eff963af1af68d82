"""Reading a manifest file: its bytes (never a FIFO or a device), its YAML,
each field (manifest.py), and the checks across fields and against the
repository (manifest_checks.py, which use the planner).  The one way a
command gets a Manifest from a file."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from hybridiso import manifest_checks
from hybridiso.errors import UserError
from hybridiso.manifest import Checked, Manifest, ManifestError, RepoContext, check_fields


def check_manifest_text(text: str, path: Path, repo: RepoContext | None = None) -> Checked:
    """Parse and check ``text``; every problem at once in one ManifestError."""
    checked, problems = check_fields(text, path)
    if checked is not None:
        problems += manifest_checks.check(checked, repo)
    if problems:
        raise ManifestError(path, problems)
    assert checked is not None
    checked.manifest._lines = checked.lines
    return checked


def parse_manifest(text: str, path: Path, repo: RepoContext | None = None) -> Manifest:
    """The manifest in ``text``.  With ``repo``, the workspace is checked
    against the repository too (docs/faults.md row 29)."""
    return check_manifest_text(text, path, repo).manifest


MAX_MANIFEST_BYTES = 16 << 20


def _read_manifest_bytes(path: Path) -> bytes:
    """The file's bytes; a FIFO (which would block), a device (/dev/zero
    never ends) or a file over 16 MiB is refused, not read.  A symlink to a
    regular file is the user's own arrangement and is followed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"no manifest at {path}", hint="run `hybridiso init` to write a starter hybridiso.yaml") from None
    except OSError as e:
        raise UserError(f"cannot read the manifest {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"the manifest {path} is a directory", hint="give the YAML file itself, e.g. -f DIR/hybridiso.yaml")
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"the manifest {path} is not a regular file (a FIFO or a device?)", hint="give the YAML file itself")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read the manifest {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise UserError(f"the manifest {path} is over {MAX_MANIFEST_BYTES >> 20} MiB: not a manifest hybridiso can use")
    return raw


def load_manifest(path: Path, repo: RepoContext | None = None) -> Manifest:
    raw = _read_manifest_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"the manifest {path} is not UTF-8 text (line {line} has the byte {raw[e.start]:#04x})", hint="save it as UTF-8") from None
    return parse_manifest(text, path, repo)
