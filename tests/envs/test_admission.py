"""Admission control in `up` (issue 15): compute-bound setups never more at
once than the machine (or ``limits:``) allows, ``kind: io`` ones more; who
waits is said; a Ctrl-C or kill -9 while agents wait leaves nothing the next
`up` does not converge (docs/faults.md rows 9, 38).  Real repositories, real
setups: how many ran at once is counted through a marker directory that
each setup writes into, never from timings."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hybridiso import machine
from tests.support.cli import hybridiso, no_crash, state, write_manifest
from tests.support.gitrepo import git, make_repo

# A setup that says how many setups were running when it started (itself
# included), then burns CPU for SECONDS: the count is the marker files
# present, each setup's own made before it counts and removed when it ends.
BURN = """
import os, sys, time
marks, seen, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
me = os.path.join(marks, os.environ["HYBRIDISO_AGENT"])
open(me, "w").close()
with open(os.path.join(seen, os.environ["HYBRIDISO_AGENT"]), "w") as f:
    f.write(str(len(os.listdir(marks))))
end = time.monotonic() + seconds
while time.monotonic() < end:
    pass
os.remove(me)
"""

# A setup that waits until WANT setups run at once (a barrier): it fails
# after 60 s if admission never lets that many in.
BARRIER = """
import os, sys, time
marks, want = sys.argv[1], int(sys.argv[2])
open(os.path.join(marks, os.environ["HYBRIDISO_AGENT"]), "w").close()
deadline = time.monotonic() + 60
while len(os.listdir(marks)) < want:
    if time.monotonic() > deadline:
        sys.exit("only %d setups ran at once" % len(os.listdir(marks)))
    time.sleep(0.05)
"""

# A setup that marks that it started, then sleeps (to be interrupted).
SLOW = """
import os, sys, time
open(os.path.join(sys.argv[1], os.environ["HYBRIDISO_AGENT"]), "w").close()
time.sleep(float(sys.argv[2]))
"""


def _scripts(tmp_path: Path) -> tuple[Path, Path, Path]:
    marks, seen = tmp_path / "marks", tmp_path / "seen"
    marks.mkdir()
    seen.mkdir()
    script = tmp_path / "setup.py"
    return marks, seen, script


def _manifest(repo: Path, setup: str, names: list[str], extra: str = "", agent_extra: str = "") -> None:
    agents = "\n".join(f"  - {{name: {n}{agent_extra}}}" for n in names)
    write_manifest(repo, f"version: 1\nbase: main\n{extra}defaults:\n  setup: [{setup!r}]\nagents:\n{agents}\n")


def _max_seen(seen: Path) -> int:
    counts = [int(p.read_text()) for p in seen.iterdir()]
    assert counts, "no setup ran"
    return max(counts)


def test_compute_setups_never_more_than_limits_setup_jobs_and_who_waits_is_said(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    marks, seen, script = _scripts(tmp_path)
    script.write_text(BURN)
    names = [f"a{i}" for i in range(5)]
    _manifest(repo, f"{sys.executable} {script} {marks} {seen} 2", names, extra="limits: {setup_jobs: 2}\n")
    proc = hybridiso(repo, "up", "-j", "8")  # -j lets 8 be made at once; setups still 2
    assert sorted(p.name for p in seen.iterdir()) == names  # every setup ran
    assert _max_seen(seen) <= 2
    # the three that came later waited, and were told why
    assert "2 compute setups running (limits.setup_jobs: 2); " in proc.stderr
    waited = [line.rsplit("; ", 1)[1] for line in proc.stderr.splitlines() if line.endswith(" waits")]
    assert waited and set(waited) <= {f"{n} waits" for n in names}
    assert all(r["phase"] == "ready" for r in state(repo)["agents"].values())


def test_by_default_compute_setups_are_bounded_by_the_machine_cores(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    marks, seen, script = _scripts(tmp_path)
    script.write_text(BURN)
    cores = machine.capacity().cores
    names = [f"a{i}" for i in range(cores + 3)]
    _manifest(repo, f"{sys.executable} {script} {marks} {seen} 1.5", names)  # kind unset: counted compute-bound
    proc = hybridiso(repo, "up", "-j", str(cores + 3))
    assert len(list(seen.iterdir())) == len(names)
    assert _max_seen(seen) <= cores
    assert f"compute setups running on {cores} core" in proc.stderr or f"compute setup running on {cores} core" in proc.stderr


def test_io_setups_run_more_at_once_than_there_are_cores(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    marks, seen, script = _scripts(tmp_path)
    script.write_text(BARRIER)
    cores = machine.capacity().cores
    want = cores + 2  # more than the compute bound, within 4 per core
    names = [f"io{i}" for i in range(want)]
    _manifest(repo, f"{sys.executable} {script} {marks} {want}", names, agent_extra=", workload: {kind: io}")
    proc = hybridiso(repo, "up", "-j", str(want))
    assert "waits" not in proc.stderr
    assert len(list(marks.iterdir())) == want
    plan = hybridiso(repo, "plan", "--json")
    assert '"io_setups": ' + str(min(256, 4 * cores)) in plan.stdout.replace("\n", "")


def test_limits_are_validated_like_every_manifest_key(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    for value, said in [
        ("true", "Input should be a valid integer"),
        ('"2"', "Input should be a valid integer"),
        ("1.5", "Input should be a valid integer"),
        ("0", "Input should be greater than or equal to 1"),
        ("257", "Input should be less than or equal to 256"),
        ("99999999999999999999", "Input should be less than or equal to 256"),
        ("-1", "Input should be greater than or equal to 1"),
    ]:
        write_manifest(repo, f"version: 1\nbase: main\nlimits:\n  setup_jobs: {value}\nagents: [{{name: a}}]\n")
        for verb in ("plan", "up"):
            proc = hybridiso(repo, verb, ok=False)
            assert proc.returncode == 1 and "Traceback" not in proc.stderr
            assert str(repo / "hybridiso.yaml") in proc.stderr and f"line 4: limits.setup_jobs: {said}" in proc.stderr, proc.stderr
    write_manifest(repo, "version: 1\nbase: main\nlimits: {setup_jobs: 1, setup_job: 2}\nagents: [{name: a}]\n")
    proc = hybridiso(repo, "plan", ok=False)
    assert "line 3: limits.setup_job: unknown key" in proc.stderr
    write_manifest(repo, "version: 1\nbase: main\nlimits: {setup_jobs: 3, io_setup_jobs: 7}\nagents: [{name: a}]\n")
    plan = hybridiso(repo, "plan")
    assert "setups at once: 3 compute-bound (limits.setup_jobs: 3), 7 I/O-bound (limits.io_setup_jobs: 7)" in plan.stderr


def test_plan_says_the_parallelism_and_warns_when_container_memory_limits_exceed_the_machine(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    here = machine.capacity()
    write_manifest(
        repo,
        "version: 1\nbase: main\ndefaults: {setup: ['true']}\nagents:\n"
        "  - {name: big, isolation: container, image: python:3.12-slim, resources: {memory: 1t}}\n"
        "  - {name: w, workload: {kind: io}}\n",
    )
    import json

    data = json.loads(hybridiso(repo, "plan", "--json").stdout)
    par = data["parallelism"]
    assert par["cores"] == here.cores and par["compute_setups"] == here.cores
    assert par["compute_agents"] == ["big"] and par["io_agents"] == ["w"]
    assert any("memory limits add up to 1.0 TiB (big 1.0 TiB), more than this machine's" in w for w in data["warnings"])
    text = hybridiso(repo, "plan").stderr
    assert f"setups at once: {here.cores} compute-bound ({here.cores} usable core" in text
    assert "memory limits add up to 1.0 TiB" in text


def _start_up(repo: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path(__file__).resolve().parents[2]))}
    return subprocess.Popen([sys.executable, "-m", "hybridiso", "up", "-j", "4"], cwd=repo, stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env)


def _wait_for(cond, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _converged(repo: Path, names: list[str], marks: Path, script: Path) -> None:
    """The next up (with a setup that ends) makes every agent, and nothing
    the interrupted one made is left beside them."""
    _manifest(repo, f"{sys.executable} {script} {marks} 0", names, extra="limits: {setup_jobs: 1}\n")
    hybridiso(repo, "up")
    records = state(repo)["agents"]
    assert sorted(records) == names and all(r["phase"] == "ready" for r in records.values())
    worktrees = [line for line in git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")]
    assert len(worktrees) == len(names) + 1
    assert sorted(p.name for p in (repo.parent / "repo.agents").iterdir() if not p.name.startswith(".")) == names


@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_interrupted_while_agents_wait_leaves_nothing_the_next_up_does_not_converge(tmp_path: Path, how: str) -> None:
    repo = make_repo(tmp_path / "repo")
    marks, _, script = _scripts(tmp_path)
    script.write_text(SLOW)
    names = ["a", "b", "c", "d"]
    _manifest(repo, f"{sys.executable} {script} {marks} 120", names, extra="limits: {setup_jobs: 1}\n")
    log = tmp_path / "up.log"
    proc = _start_up(repo, log)
    try:
        # one setup runs, the others were made and wait for it
        _wait_for(lambda: len(list(marks.iterdir())) == 1 and log.read_text().count(" waits") >= 1)
        running = next(marks.iterdir()).name
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 130
            text = log.read_text()
            no_crash(130, text, ["up"])
            assert "interrupted; stopping and rolling back" in text
            # nothing left half-made: no record, no worktree, no directory
            assert state(repo).get("agents", {}) == {}
            assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
            assert not [p for p in (repo.parent / "repo.agents").iterdir() if not p.name.startswith(".")]
        else:
            proc.kill()
            proc.wait(30)
            # the journal says what was being made; the running setup is
            # recorded, so the next up can stop it (docs/faults.md row 38)
            records = state(repo)["agents"]
            assert sorted(records) == names and all(r["phase"] == "creating" for r in records.values())
            assert records[running]["setup_processes"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert len(list(marks.iterdir())) == 1  # the waiting ones never started their setup
    for p in marks.iterdir():
        p.unlink()
    _converged(repo, names, marks, script)
    assert sorted(p.name for p in marks.iterdir()) == names  # each set up once, anew


def test_the_setup_of_an_existing_agent_is_admitted_too(tmp_path: Path) -> None:
    """An update that reruns setup (its command changed) waits its turn like a creation."""
    repo = make_repo(tmp_path / "repo")
    marks, seen, script = _scripts(tmp_path)
    script.write_text(BURN)
    names = ["a", "b", "c"]
    _manifest(repo, f"{sys.executable} {script} {marks} {seen} 0", names, extra="limits: {setup_jobs: 1}\n")
    hybridiso(repo, "up")
    for p in seen.iterdir():
        p.unlink()
    _manifest(repo, f"{sys.executable} {script} {marks} {seen} 1.5", names, extra="limits: {setup_jobs: 1}\n")
    proc = hybridiso(repo, "up", "-j", "3")
    assert _max_seen(seen) == 1 and len(list(seen.iterdir())) == 3
    assert "1 compute setup running (limits.setup_jobs: 1); " in proc.stderr
    assert proc.stderr.count("Set up") == 3


def test_admission_counts_memory_that_resources_ask_for() -> None:
    """Compute setups whose resources.memory add up past what is available
    run one after the other, whatever the cores; one runs whatever it asks."""
    from hybridiso.env_context import EnvContext
    from hybridiso.envs.admission import Admission, SetupLimits
    from hybridiso.manifest import Agent
    from hybridiso.state import AgentRecord

    gib = 1 << 30
    said: list[str] = []
    board = Admission(SetupLimits(8, "8 cores", 32, "io", 3 * gib), 8, said.append)
    running, most, lock = [0], [0], threading.Lock()

    def job(name: str, memory: str) -> None:
        agent = Agent.model_validate({"name": name, "image": "python:3.12-slim", "resources": {"memory": memory}})
        ctx = EnvContext(None, agent, AgentRecord(name=name, strategy="container", branch=name, path="/x", base="main"))  # type: ignore[arg-type]
        steps = board.steps_for(ctx)
        ctx.steps = steps
        with steps.job(), steps.step("setup"):
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.3)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=job, args=(f"m{i}", "2g")) for i in range(3)]
    threads.append(threading.Thread(target=job, args=("huge", "1t")))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] == 1  # 2 GiB each of 3 GiB: one at a time; 1 TiB alone
    assert any("of 3.0 GiB memory" in s and s.endswith(" waits") for s in said), said
    assert board.max_running["compute"] == 1


def test_two_ups_at_once_share_the_machines_compute_slots(tmp_path: Path) -> None:
    """Two repositories' `up`s on one machine: their compute setups together
    stay within the limit (slot files under the state home, held by flock)."""
    marks, seen, script = _scripts(tmp_path)
    script.write_text(BURN)
    procs = []
    for n in ("one", "two"):
        repo = make_repo(tmp_path / n)
        _manifest(repo, f"{sys.executable} {script} {marks} {seen} 2", [f"{n}1", f"{n}2"], extra="limits: {setup_jobs: 1}\n")
        procs.append((repo, _start_up(repo, tmp_path / f"{n}.log")))
    for _, proc in procs:
        assert proc.wait(180) == 0
    text = (tmp_path / "one.log").read_text() + (tmp_path / "two.log").read_text()
    no_crash(0, text, ["up"])
    assert len(list(seen.iterdir())) == 4
    assert _max_seen(seen) == 1  # never two at once, whichever run they belong to
    assert "1 compute setup running on this machine (0 of this run, the others of another `hybridiso up`); " in text
    # the slots are free again: a kill -9 or an end lets go of them
    slots = Path(os.environ["HOME"]) / ".local" / "state" / "hybridiso" / "setup-slots"
    assert [p.name for p in slots.iterdir()] == ["compute-0.lock"]


def test_a_symlink_where_a_slot_file_goes_is_never_followed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    marks, seen, script = _scripts(tmp_path)
    script.write_text(BURN)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    slots = Path(os.environ["HOME"]) / ".local" / "state" / "hybridiso" / "setup-slots"
    slots.mkdir(parents=True)
    (slots / "compute-0.lock").symlink_to(victim)
    _manifest(repo, f"{sys.executable} {script} {marks} {seen} 0.5", ["a", "b"], extra="limits: {setup_jobs: 1}\n")
    proc = hybridiso(repo, "up")
    assert victim.read_text() == "keep\n"
    assert "compute setups of other `hybridiso up` runs are not counted" in proc.stderr and "symlink" in proc.stderr
    assert _max_seen(seen) == 1  # its own are still counted
