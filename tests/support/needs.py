"""What a test needs from the machine (root, a tmpfs mount, setpriv...).

Without it the test cannot run: a skip on a developer's machine, but in CI
(CI=true) a failure, as for Docker, PostgreSQL and the browser: CI runs as
root on a machine that allows these, so a fault-row test that does not run
there is one whose fault was never tested (docs/faults.md)."""
from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cannot_run(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (in CI a test that cannot run is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def root(why: str) -> None:
    if os.geteuid() != 0:
        cannot_run(f"needs root: {why}")
