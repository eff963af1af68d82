"""What the machine sustains (issue 15): cores from the affinity mask, fewer
when a cgroup's cpu.max says so; memory from /proc/meminfo, less under the
cgroup's memory.max; `land --parallel` and `up` read the same figure."""
from __future__ import annotations

import os
from pathlib import Path

from hybridiso import machine
from hybridiso.land.machine import MAX_DEFAULT, MEMORY_PER_CHECK, machine_parallel


def _cgroup(tmp_path: Path, cpu: str | None, memory: str | None) -> str:
    for name, text in (("cpu.max", cpu), ("memory.max", memory)):
        if text is not None:
            (tmp_path / name).write_text(text + "\n")
    return str(tmp_path)


def test_cores_are_the_affinity_mask_without_a_cpu_quota(tmp_path: Path) -> None:
    here = machine.capacity(_cgroup(tmp_path, "max 100000", "max"))
    assert here.cores == len(os.sched_getaffinity(0)) and here.cores_from == ""
    assert here.memory_total is not None and here.memory_available is not None
    assert here.memory_available <= here.memory_total


def test_a_cpu_quota_below_the_cores_bounds_them_rounded_up(tmp_path: Path) -> None:
    here = machine.capacity(_cgroup(tmp_path, "50000 100000", None))  # half a core
    assert here.cores == 1 and "cgroup cpu.max" in here.describe()
    assert machine.capacity(_cgroup(tmp_path, "150000 100000", None)).cores == min(2, len(os.sched_getaffinity(0)))


def test_unreadable_or_odd_cgroup_files_are_left_out_never_guessed_low(tmp_path: Path) -> None:
    for cpu in ("", "garbage", "-1 100000", "100000 0", "1 2 3"):
        assert machine.capacity(_cgroup(tmp_path, cpu, "lots")).cores == len(os.sched_getaffinity(0))


def test_memory_max_bounds_memory_and_memory_bounds_jobs(tmp_path: Path) -> None:
    here = machine.capacity(_cgroup(tmp_path, None, str(machine.GIB + 5)))
    assert here.memory_total == machine.GIB + 5 and here.memory_available is not None and here.memory_available <= machine.GIB + 5
    assert here.jobs(machine.GIB) == 1  # one GiB each: one job, whatever the cores
    assert here.jobs(0) == here.cores


def test_land_parallel_is_the_same_capacity_capped_at_8() -> None:
    k, why = machine_parallel()
    here = machine.capacity()
    assert k == min(here.jobs(MEMORY_PER_CHECK), MAX_DEFAULT) and why == here.describe()


def test_what_the_cgroup_already_uses_is_not_available(tmp_path: Path) -> None:
    root = _cgroup(tmp_path, None, str(4 * machine.GIB))
    (tmp_path / "memory.current").write_text(str(3 * machine.GIB) + "\n")
    here = machine.capacity(root)
    assert here.memory_total == 4 * machine.GIB and here.memory_available == machine.GIB
