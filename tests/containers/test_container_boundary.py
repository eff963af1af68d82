"""A container agent is a trust boundary (issue 12, docs/faults.md rows 32-34): every
escape is tried from inside a real container agent on the real engine, and
fails; what the agent needs (its published port, git on its branch, its own
services, setup) still works.

Network targets are the host itself (a listener on 0.0.0.0), other agents'
containers, and an "outside" network namespace this test makes and removes:
no packet leaves the machine.  Every iptables rule, namespace, container and
network a test makes is gone when it ends.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import (
    check_no_crash,
    hybridiso,
    state,
    status_json,
    write_manifest,
)
from tests.support.docker_fixtures import TEST_LABEL, TEST_RUN, agents_repo
from tests.support.gitrepo import git, make_repo
from tests.support import needs
from tests.support.netlab import host_addresses, host_listener, outside
from tests.support.postgres import free_port

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def _root() -> None:
    needs.root("network isolation is enforced with iptables")


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout.strip()


def container(agent: str) -> str:
    ids = docker("ps", "-aq", "--filter", f"label=dev.hybridiso.agent={agent}", "--filter", "label=dev.hybridiso.role=agent", "--filter", f"label={TEST_LABEL}={TEST_RUN}").split()
    assert len(ids) == 1, ids
    return ids[0]


def inspect(cid: str) -> dict[str, Any]:
    return json.loads(docker("inspect", cid))[0]


def address(cid: str) -> str:
    return next(iter(inspect(cid)["NetworkSettings"]["Networks"].values()))["IPAddress"]


def gateway(cid: str) -> str:
    return next(iter(inspect(cid)["NetworkSettings"]["Networks"].values()))["Gateway"]


def sh(repo: Path, agent: str, script: str) -> str:
    """``script`` inside the agent's container; its output and exit code."""
    r = hybridiso(repo, "exec", agent, "--", "sh", "-c", f"{{ {script} ; }} 2>&1; echo rc=$?", ok=None)
    return r.stdout


def connect(repo: Path, agent: str, host: str, port: int) -> str:
    return sh(repo, agent, f"nc -w 3 {host} {port} </dev/null")


def refused(out: str) -> bool:
    """Refused by hybridiso's rules: rejected with 'administratively
    prohibited', which busybox nc reports as 'No route to host' -- not a
    missing listener ('Connection refused'), not a timeout."""
    return "No route to host" in out and "rc=0" not in out


def rules(bridge_hint: str = "") -> list[str]:
    lines = []
    for tool in ("iptables-save", "ip6tables-save"):
        out = subprocess.run([tool, "-t", "filter"], capture_output=True, text=True, check=False).stdout
        lines += [f"{tool}: {line}" for line in out.splitlines() if "HYBRIDISO" in line and bridge_hint in line]
    return lines


def bridge_of(repo: Path, agent: str) -> str:
    from hybridiso.containers.netguard import bridge_name

    common = Path(git(repo, "rev-parse", "--path-format=absolute", "--git-common-dir"))
    project = hashlib.sha256(str(common).encode()).hexdigest()[:12]
    return bridge_name(project, agent)


def agent_uid(repo: Path, agent: str) -> int:
    uid = int(state(repo)["agents"][agent]["container_user"].split(":")[0])
    assert uid >= 1_600_000_000  # an unprivileged uid of its own: the host user here is root
    return uid


def web(name: str, image: str, extra: str = "") -> str:
    return f"""\
  - name: {name}
    isolation: container
    image: {image}
    command: ["httpd", "-f", "-p", "${{PORT_WEB}}", "-h", "."]
    ports: [web]
{extra}"""


ISOLATED = "    workload: {needs: [network-isolation]}\n"


def get(url: str, timeout: float = 15) -> str:
    import urllib.request

    end = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.time() > end:
                raise
            time.sleep(0.2)


def down(repo: Path) -> None:
    hybridiso(repo, "down", "--force", ok=None)


# --- the network ---------------------------------------------------------------------


def test_an_isolated_agent_reaches_no_host_address_and_its_port_still_answers(tmp_path: Path, busybox_image: str) -> None:
    repo = agents_repo(tmp_path / "r", web("iso", busybox_image, ISOLATED) + web("open", busybox_image), {"index.html": "hello\n"})
    with host_listener() as listener:
        try:
            hybridiso(repo, "up")
            iso, opn = container("iso"), container("open")
            # the control: an ordinary agent reaches the host service through its gateway
            assert "host-secret" in connect(repo, "open", gateway(opn), listener.port)
            # the isolated one reaches it through no address of the host
            targets = {gateway(iso), gateway(opn), "172.17.0.1", *host_addresses()}
            for host in sorted(targets):
                out = connect(repo, "iso", host, listener.port)
                assert refused(out), f"{host}: {out}"
            assert address(iso) not in listener.peers
            # nor any other port of the host (sshd, the Docker API on TCP, ...)
            assert refused(connect(repo, "iso", gateway(iso), 22))
            # no Docker socket: not mounted, and nothing else of the host is
            assert "No such file" in sh(repo, "iso", "ls /var/run/docker.sock /run/docker.sock")
            mounts = {(m["Source"], m["Destination"], m["RW"]) for m in inspect(iso)["Mounts"]}
            env, objects, own = tmp_path / "r.agents" / "iso", repo / ".git" / "objects", repo / ".git" / "hybridiso" / "containers" / "iso"
            # its worktree, its own git dir, the repository's objects read-only, its .git read-only: never the common dir
            assert mounts == {(str(env), str(env), True), (str(own / "git"), str(own / "git"), True),
                              (str(objects), str(objects), False), (str(own / "dotgit"), str(env / ".git"), False)}
            # what isolation must not break: the published port answers on 127.0.0.1
            port = status_json(repo)["iso"]["ports"]["web"]
            assert get(f"http://127.0.0.1:{port}/index.html") == "hello\n"
            # ... and only there (published on loopback, as for every agent)
            for host in host_addresses():
                r = subprocess.run(["curl", "-s", "-m", "2", f"http://{host}:{port}/index.html"], capture_output=True, text=True, check=False)
                assert r.returncode != 0, host
            st = status_json(repo)
            assert st["iso"]["boundary"]["network"].startswith("isolated: no route to the host or outside")
            assert st["open"]["boundary"]["network"] == "its own network" and not st["open"]["problems"]
        finally:
            down(repo)
    assert rules(bridge_of(repo, "iso")) == []


def test_isolated_agents_and_other_agents_cannot_reach_each_other(tmp_path: Path, busybox_image: str) -> None:
    repo = agents_repo(tmp_path / "r", web("iso", busybox_image, ISOLATED) + web("iso2", busybox_image, ISOLATED) + web("open", busybox_image), {"index.html": "hi\n"})
    try:
        hybridiso(repo, "up")
        ports = {a: r["ports"]["web"] for a, r in status_json(repo).items()}
        ips = {a: address(container(a)) for a in ports}
        for src, dst in (("iso", "iso2"), ("iso2", "iso"), ("iso", "open"), ("open", "iso")):
            out = connect(repo, src, ips[dst], ports[dst])
            assert refused(out), f"{src} -> {dst}: {out}"
        # each still serves the host on 127.0.0.1
        for agent, port in ports.items():
            assert get(f"http://127.0.0.1:{port}/index.html") == "hi\n", agent
    finally:
        down(repo)
    assert rules(bridge_of(repo, "iso")) == rules(bridge_of(repo, "iso2")) == []


def test_an_isolated_agent_reaches_outside_only_what_egress_lists(tmp_path: Path, busybox_image: str) -> None:
    with outside(ports=2) as out:
        allowed, other = out.ports
        repo = agents_repo(
            tmp_path / "r",
            web("iso", busybox_image, f'    workload: {{needs: [untrusted-code]}}\n    egress: ["{out.address}:{allowed}"]\n') + web("open", busybox_image),
        )
        try:
            hybridiso(repo, "up")
            # the control: forwarding and NAT reach the outside address on both ports
            assert f"outside:{allowed}" in connect(repo, "open", out.address, allowed)
            assert f"outside:{other}" in connect(repo, "open", out.address, other)
            # the isolated agent: only what egress lists
            assert f"outside:{allowed}" in connect(repo, "iso", out.address, allowed)
            assert refused(connect(repo, "iso", out.address, other))
            # egress to an outside address opens no door to the host
            assert refused(connect(repo, "iso", gateway(container("iso")), allowed))
            plan = {p["agent"]: p for p in json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]}
            assert plan["iso"]["boundary"]["network"] == f"isolated: no route to the host or outside; egress: {out.address}:{allowed}"
        finally:
            down(repo)
    assert rules(bridge_of(repo, "iso")) == []


def test_lost_rules_are_a_problem_up_repairs_and_gc_removes_orphans(tmp_path: Path, busybox_image: str) -> None:
    repo = agents_repo(tmp_path / "r", web("iso", busybox_image, ISOLATED))
    bridge = bridge_of(repo, "iso")
    with host_listener() as listener:
        try:
            hybridiso(repo, "up")
            installed = rules(bridge)
            assert any("agent=iso" in r and f"-i {bridge}" in r for r in installed)
            assert any(r.startswith("ip6tables-save") for r in installed)  # IPv6 too
            # a second up changes nothing
            assert "Up to date" in hybridiso(repo, "up").stderr and rules(bridge) == installed
            # someone flushes the agent's chain: status says so, up repairs it
            subprocess.run(["iptables", "-F", f"HYBRIDISO-F-{bridge[3:]}"], check=True)
            st = status_json(repo)["iso"]
            assert st["boundary"]["network"] == "NOT ISOLATED: its firewall rules are missing"
            assert any("network isolation is not in force" in p for p in st["problems"])
            hybridiso(repo, "up")
            assert rules(bridge) == installed
            assert refused(connect(repo, "iso", gateway(container("iso")), listener.port))
            # a lost state file and an environment removed behind hybridiso's back:
            # gc finds the rules by their comment and removes them with --yes
            git(repo, "worktree", "remove", "--force", str(tmp_path / "r.agents" / "iso"))
            git(repo, "branch", "-D", "hybridiso/iso")
            (repo / ".git" / "hybridiso" / "state.json").unlink()
            found = [f for f in json.loads(hybridiso(repo, "gc", "--json").stdout)["findings"] if f["kind"] == "firewall"]
            assert [f["target"] for f in found] == ["network-isolation rules of agent iso"]
            assert rules(bridge) == installed  # a dry run changes nothing
            hybridiso(repo, "gc", "--yes")
            assert rules(bridge) == []
        finally:
            down(repo)
            from hybridiso.containers import netguard

            netguard.remove({bridge})


def test_without_iptables_an_isolated_agent_is_refused_or_gets_its_fallback(tmp_path: Path, busybox_image: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/faults.md row 33 where hybridiso cannot write the rules (here: iptables not
    installed): never an unisolated start; the manifest's weaker mode only
    when it asks for one, and plan, status and doctor say what it gets."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in os.environ["PATH"].split(":"):
        if os.path.isdir(d):
            for name in os.listdir(d):
                if not name.startswith(("iptables", "ip6tables")) and not (bindir / name).exists():
                    (bindir / name).symlink_to(Path(d) / name)
    monkeypatch.setenv("PATH", str(bindir))
    repo = agents_repo(tmp_path / "r", web("iso", busybox_image, ISOLATED) + web("open", busybox_image))
    try:
        r = hybridiso(repo, "up", ok=False)
        assert r.returncode == 1
        assert "agent iso needs network isolation (network-isolation), which hybridiso enforces with firewall rules" in r.stderr
        assert "iptables-save is not installed" in r.stderr and "network_fallback" in r.stderr
        assert not (tmp_path / "r.agents" / "iso").exists()  # refused before anything of it was made
        assert docker("ps", "-aq", "--filter", "label=dev.hybridiso.agent=iso", "--filter", f"label={TEST_LABEL}={TEST_RUN}") == ""
        assert status_json(repo)["open"]["state"] == "ready"  # the others go ahead
        doctor = json.loads(hybridiso(repo, "doctor", "--json", ok=False).stdout)
        assert [c["status"] for c in doctor if c["name"] == "network isolation"] == ["fail"]
        # the manifest opts into no network at all: it starts, with none
        write_manifest(repo, (repo / "hybridiso.yaml").read_text().replace(ISOLATED, ISOLATED + "    network_fallback: none\n", 1))
        plan = {p["agent"]: p for p in json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]}
        assert plan["iso"]["boundary"]["network"] == "none network"
        hybridiso(repo, "up")
        assert inspect(container("iso"))["HostConfig"]["NetworkMode"] == "none"
        assert "network is unreachable" in sh(repo, "iso", "nc -w 2 172.17.0.1 22").lower()
        assert status_json(repo)["iso"]["boundary"]["network"] == "none network"
        # internal, the weaker one: nothing outside, but the host is reachable
        # and no port is published (what docs/containers.md says it gives)
        write_manifest(repo, (repo / "hybridiso.yaml").read_text().replace("network_fallback: none", "network_fallback: internal"))
        assert "Recreated" in hybridiso(repo, "up").stderr
        iso = container("iso")
        assert json.loads(docker("network", "inspect", inspect(iso)["HostConfig"]["NetworkMode"]))[0]["Internal"] is True
        with outside(ports=1) as out, host_listener() as listener:
            reached = connect(repo, "iso", out.address, out.ports[0])
            assert "outside:" not in reached and "rc=0" not in reached  # Docker drops it (a timeout)
            assert "host-secret" in connect(repo, "iso", gateway(iso), listener.port)
        assert status_json(repo)["iso"]["boundary"]["network"].startswith("internal network (no outside traffic; the host is reachable)")
    finally:
        down(repo)


def test_an_engine_whose_networks_are_not_this_machines_is_refused(tmp_path: Path, busybox_image: str) -> None:
    """Rootless Docker, Docker Desktop, a remote engine: rules written here
    would not see the containers' traffic.  Made for real by running
    hybridiso in a network namespace of its own (the engine is not in it)."""
    netns = f"hyb-test-eng-{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    repo = agents_repo(tmp_path / "r", web("iso", busybox_image, ISOLATED))

    def up_elsewhere() -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "hybridiso", "up"], cwd=repo, capture_output=True, text=True, timeout=180, check=False)
        check_no_crash(proc, ["up"])
        return proc

    try:
        r = up_elsewhere()
        assert r.returncode == 1 and "the Docker engine's networks are not this machine's" in r.stderr, r.stderr
        assert docker("ps", "-q", "--filter", "label=dev.hybridiso.agent=iso", "--filter", f"label={TEST_LABEL}={TEST_RUN}") == ""  # nothing ran
        assert docker("network", "ls", "-q", "--filter", "label=dev.hybridiso.agent=iso", "--filter", f"label={TEST_LABEL}={TEST_RUN}") == ""
        write_manifest(repo, (repo / "hybridiso.yaml").read_text().replace(ISOLATED, ISOLATED + "    network_fallback: none\n", 1))
        r = up_elsewhere()
        assert r.returncode == 0 and "using network_fallback: none" in r.stderr, r.stderr
        assert inspect(container("iso"))["HostConfig"]["NetworkMode"] == "none"
    finally:
        down(repo)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


# --- least privilege ------------------------------------------------------------------------


def test_least_privilege_inside(tmp_path: Path, busybox_image: str) -> None:
    repo = agents_repo(
        tmp_path / "r",
        f"""\
  - name: tight
    isolation: container
    image: {busybox_image}
    command: ["sleep", "3600"]
    read_only: true
    cap_add: [NET_BIND_SERVICE]
    resources: {{pids: 40}}
  - name: plain
    isolation: container
    image: {busybox_image}
    command: ["sleep", "3600"]
""",
    )
    try:
        plan = {p["agent"]: p["boundary"] for p in json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]}
        hybridiso(repo, "up")
        for agent in ("tight", "plain"):
            uid = agent_uid(repo, agent)
            status = sh(repo, agent, "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status")
            assert status.split()[0] == str(uid) != "0"
            caps = dict(re.findall(r"^(\w+):\s+(\S+)$", status, re.MULTILINE))
            assert caps["CapEff"] == "0000000000000000" and caps["NoNewPrivs"] == "1" and caps["Seccomp"] == "2"
            assert caps["CapBnd"] == ("0000000000000400" if agent == "tight" else "0000000000000000")  # NET_BIND_SERVICE is bit 10
            # no way back to root: no capability, no setuid (no-new-privileges)
            assert "rc=0" not in sh(repo, agent, "chown 0 /tmp")
            info = inspect(container(agent))
            host = info["HostConfig"]
            assert host["CapDrop"] == ["ALL"] and host["Privileged"] is False
            assert "no-new-privileges:true" in host["SecurityOpt"] and not any("seccomp" in o for o in host["SecurityOpt"])
            st = status_json(repo)[agent]["boundary"]
            user = state(repo)["agents"][agent]["container_user"]
            assert st["user"] == info["Config"]["User"] == plan[agent]["user"] == user and user.startswith(f"{uid}:")
            assert int(user.split(":")[1]) >= 1_600_000_000  # the repository's agents' own group, never root's
            assert st["cap_drop"] == ["ALL"] and st["no_new_privileges"] and st["seccomp"] == "default" and not st["docker_socket"]
        tight = inspect(container("tight"))["HostConfig"]
        assert tight["ReadonlyRootfs"] is True and tight["PidsLimit"] == 40 and tight["CapAdd"] == ["CAP_NET_BIND_SERVICE"]
        assert inspect(container("plain"))["HostConfig"]["PidsLimit"] == 4096  # always a limit
        out = sh(repo, "tight", "touch /etc/x; touch /tmp/x && echo tmp-ok; touch here && echo worktree-ok")
        assert "Read-only file system" in out and "tmp-ok" in out and "worktree-ok" in out
        plain = sh(repo, "plain", "touch /etc/x")  # read_only is what the manifest asks for: a writable root, not root's
        assert "Permission denied" in plain and "Read-only file system" not in plain
        # the pids limit holds: the 40th process cannot be made
        forks = sh(repo, "tight", "i=0; while [ $i -lt 60 ]; do sleep 30 & i=$((i+1)); done; wait")
        assert "can't fork" in forks or "Resource temporarily unavailable" in forks
        text = hybridiso(repo, "status").stderr
        assert "tight gets: uid " in text and "capabilities: NET_BIND_SERVICE" in text and "read-only root" in text and "pids 40" in text
    finally:
        down(repo)


def test_git_works_and_the_agents_uid_cannot_touch_what_the_host_reads(tmp_path: Path, git_image: str) -> None:
    """The user story: an untrusted-code agent runs a script that tries each
    escape; each is refused, the host is unchanged, and its own commit (and
    rebase) lands on its branch.  (What it does with refs in its own git dir
    is tests/containers/test_container_git.py's.)"""
    repo = make_repo(tmp_path / "r", {"a.txt": "a\n"})
    write_manifest(
        repo,
        f"""labels: {{{TEST_LABEL}: "{TEST_RUN}"}}
agents:
  - name: dev
    isolation: container
    image: {git_image}
    command: ["sleep", "infinity"]
    workload: {{needs: [untrusted-code]}}
  - name: other
    isolation: container
    image: {git_image}
    command: ["sleep", "infinity"]
""",
    )
    common = repo / ".git"
    with host_listener() as listener:
        try:
            hybridiso(repo, "up")
            gw = gateway(container("dev"))
            # the container never sees the common git dir, so nothing of it is
            # granted to the agents' uids: no ACL entry on objects/
            with pytest.raises(OSError):
                os.getxattr(common / "objects", "system.posix_acl_default")
            watched = {p: p.read_bytes() for p in [common / "config", common / "hybridiso" / "state.json", common / "HEAD", common / "packed-refs"] if p.exists()}
            hooks = sorted(os.listdir(common / "hooks"))
            env = tmp_path / "r.agents" / "dev"
            gitfile = (env / ".git").read_text()
            wt_id = gitfile.strip().rsplit("/", 1)[1]
            other_id = (tmp_path / "r.agents" / "other" / ".git").read_text().strip().rsplit("/", 1)[1]
            some_object = next(p for d in sorted((common / "objects").iterdir()) if len(d.name) == 2 for p in d.iterdir())
            object_bytes = some_object.read_bytes()
            script = f"""
try() {{ name=$1; shift; if ( "$@" ) >/dev/null 2>&1; then echo "ESCAPED $name"; else echo "refused $name"; fi; }}
try host-gateway timeout 4 bash -c 'exec 3<>/dev/tcp/{gw}/{listener.port}'
try host-docker0 timeout 4 bash -c 'exec 3<>/dev/tcp/172.17.0.1/{listener.port}'
try git-config git config --file {common}/config core.fsmonitor 'touch /tmp/PWNED'
try git-config-file sh -c 'echo "[core] fsmonitor = touch /tmp/PWNED" >> {common}/config'
try hook sh -c 'printf "#!/bin/sh\\ntouch /tmp/PWNED\\n" > {common}/hooks/post-commit && chmod +x {common}/hooks/post-commit'
try hooks-path git config --file {common}/config core.hooksPath /tmp
try state-file sh -c 'echo {{}} > {common}/hybridiso/state.json'
try state-dir cat {common}/hybridiso/state.json
try gitfile-write sh -c 'echo "gitdir: {common}" > .git'
try gitfile-replace sh -c 'rm -f .git'
try commondir sh -c 'echo /tmp > {common}/worktrees/{wt_id}/commondir'
try commondir-replace mv {common}/worktrees/{wt_id}/commondir /tmp/c
try other-agent sh -c 'echo x > {common}/worktrees/{other_id}/HEAD'
try object-replace rm -f {some_object}
try info-exclude sh -c 'echo x >> {common}/info/exclude'
try refs-rename mv {common}/refs/heads {common}/refs/elsewhere
try reflogs-rename mv {common}/logs/refs/heads {common}/logs/refs/elsewhere
try objects-dir-rename mv {some_object.parent} {common}/objects/elsewhere
try objects-write touch {some_object.parent}/planted
try remotes-first mkdir {common}/refs/remotes
try backups-first mkdir {common}/refs/hybridiso
try become-root sh -c 'chown 0 a.txt'
echo x > b.txt && git add b.txt && git commit -qm "agent work" && echo committed
git log -1 --format=%s
"""
            (env / "attack.sh").write_text(script)
            report = hybridiso(repo, "exec", "dev", "--", "bash", "attack.sh").stdout
            lines = report.splitlines()
            assert not [line for line in lines if line.startswith("ESCAPED")], report
            names = ["host-gateway", "host-docker0", "git-config", "git-config-file", "hook", "hooks-path", "state-file", "state-dir",
                     "gitfile-write", "gitfile-replace", "commondir", "commondir-replace", "other-agent", "object-replace", "info-exclude",
                     "refs-rename", "reflogs-rename", "objects-dir-rename", "objects-write", "remotes-first", "backups-first", "become-root"]
            assert [line.split()[1] for line in lines if line.startswith("refused")] == names
            assert "committed" in lines
            # the host is unchanged ...
            assert all(p.read_bytes() == b for p, b in watched.items())
            assert sorted(os.listdir(common / "hooks")) == hooks and not Path("/tmp/PWNED").exists()
            assert (env / ".git").read_text() == gitfile and some_object.read_bytes() == object_bytes
            assert address(container("dev")) not in listener.peers
            # ... and the agent's commit is on its branch, made as its own uid
            assert git(repo, "log", "-1", "--format=%s", "hybridiso/dev") == "agent work"
            assert (env / "b.txt").stat().st_uid == agent_uid(repo, "dev")
            # rebase onto a base that moved, inside
            (repo / "base.txt").write_text("base\n")
            git(repo, "add", "base.txt")
            git(repo, "commit", "-qm", "base moved")
            hybridiso(repo, "up")  # shows the agent the moved base, as host/main
            out = hybridiso(repo, "exec", "dev", "--", "sh", "-c", "git rebase -q host/main && git log --format=%s -2").stdout.split("\n")
            assert out[:2] == ["agent work", "base moved"]
            # the host's git still works on the environment (it owns the top and .git)
            assert status_json(repo)["dev"]["ahead"] == 1
        finally:
            down(repo)
    # down gave the repository back as it was: no ACL entry of the agent's uids is left
    for d in ("objects", "refs/heads/hybridiso", "logs/refs/heads/hybridiso"):
        try:
            blob = os.getxattr(common / d, "system.posix_acl_access")
        except OSError:
            blob = b""
        assert len(blob) <= 4 + 8 * 3, d  # at most the three entries a mode has
    assert not (os.stat(common / "objects").st_mode & 0o1000)


# --- setup where the agent runs -------------------------------------------------------------


def test_setup_runs_in_the_image_with_the_agents_uid_and_network(tmp_path: Path, busybox_image: str) -> None:
    with host_listener() as listener:
        repo = agents_repo(
            tmp_path / "r",
            web("iso", busybox_image, ISOLATED + f"""    setup:
      - "id -u > setup-uid; cat /etc/hostname > setup-host"
      - ["sh", "-c", "nc -w 3 $(ip route | awk '/default/ {{print $3}}') {listener.port} > setup-net 2>&1 || echo refused >> setup-net"]
""")
            + web("onhost", busybox_image, '    setup: ["id -u > setup-uid"]\n    setup_on: host\n'),
        )
        try:
            plan = {p["agent"]: p["boundary"] for p in json.loads(hybridiso(repo, "plan", "--json").stdout)["agents"]}
            assert plan["iso"]["setup"] == "in its image" and plan["onhost"]["setup"] == "on the host"
            hybridiso(repo, "up")
            env = tmp_path / "r.agents" / "iso"
            assert (env / "setup-uid").read_text().strip() == str(agent_uid(repo, "iso"))
            assert (env / "setup-uid").stat().st_uid == agent_uid(repo, "iso")
            assert (env / "setup-host").read_text().strip() != os.uname().nodename  # not the host
            net = (env / "setup-net").read_text()
            assert "No route to host" in net and "refused" in net and listener.peers == []
            assert (tmp_path / "r.agents" / "onhost" / "setup-uid").read_text().strip() == str(os.getuid())
            log = repo / ".git" / "hybridiso" / "logs" / "iso" / "setup.log"
            assert oct(log.stat().st_mode & 0o777) == "0o600"
            assert "(in a container of hybridiso-test/busybox:1)" in log.read_text() and "# exit 0" in log.read_text()
            assert docker("ps", "-aq", "--filter", "label=dev.hybridiso.role=setup", "--filter", f"label={TEST_LABEL}={TEST_RUN}") == ""
        finally:
            down(repo)


def test_a_failing_setup_in_the_image_is_named_with_a_bounded_tail(tmp_path: Path, busybox_image: str) -> None:
    repo = agents_repo(tmp_path / "r", f"""\
  - name: bad
    isolation: container
    image: {busybox_image}
    command: ["sleep", "3600"]
    setup: ["echo first line; head -c 3000000 /dev/zero | tr '\\\\0' x; echo; echo the real reason; exit 3", "echo never"]
""")
    try:
        r = hybridiso(repo, "up", ok=False)
        assert r.returncode == 1 and "setup command failed for agent bad in its container (exit 3)" in r.stderr
        assert "the real reason" in r.stderr and "full log:" in r.stderr and len(r.stderr) < 20_000
        log = (repo / ".git" / "hybridiso" / "logs" / "bad" / "setup.log").read_text()
        assert "# exit 3" in log and "never" not in log.replace("echo never", "")
        assert docker("ps", "-aq", "--filter", "label=dev.hybridiso.role=setup", "--filter", f"label={TEST_LABEL}={TEST_RUN}") == ""
    finally:
        down(repo)


def test_interrupting_a_setup_in_the_image_removes_its_container(tmp_path: Path, busybox_image: str) -> None:
    repo = agents_repo(tmp_path / "r", f"""\
  - name: slow
    isolation: container
    image: {busybox_image}
    command: ["sleep", "3600"]
    setup: ["sleep 120; touch too-late"]
""")
    proc = subprocess.Popen([sys.executable, "-m", "hybridiso", "up"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        setup = ""
        end = time.time() + 60
        while not setup and time.time() < end:
            setup = docker("ps", "-q", "--filter", "label=dev.hybridiso.role=setup", "--filter", "label=dev.hybridiso.agent=slow", "--filter", f"label={TEST_LABEL}={TEST_RUN}")
            time.sleep(0.2)
        assert setup, "the setup container never started"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert docker("ps", "-aq", "--filter", "label=dev.hybridiso.agent=slow", "--filter", f"label={TEST_LABEL}={TEST_RUN}") == ""
        assert not (tmp_path / "r.agents" / "slow").exists()  # rolled back
    finally:
        if proc.poll() is None:
            proc.kill()
        down(repo)


# --- secrets ----------------------------------------------------------------------------


def test_secrets_stay_out_of_argv_and_readable_files(tmp_path: Path, busybox_image: str) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    repo = agents_repo(tmp_path / "r", f"""\
  - name: vault
    isolation: container
    image: {busybox_image}
    command: ["sleep", "3600"]
    env: {{TOKEN: "{secret}"}}
    setup: ["echo setup saw $TOKEN"]
""")
    try:
        hybridiso(repo, "up")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hybridiso", "exec", "vault", "--", "sh", "-c", "sleep 3; echo got $TOKEN"],
            cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        seen: list[str] = []
        end = time.time() + 2.5
        while time.time() < end:
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace")
                    except OSError:
                        continue
                    if "docker" in cmdline and "exec" in cmdline:
                        seen.append(cmdline)
                    assert secret not in cmdline, f"pid {pid}: {cmdline}"
            time.sleep(0.05)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert out.strip() == f"got {secret}"  # delivered all the same
        assert any("-e\0TOKEN\0" in c for c in seen)  # by name, the value from the environment
        # files that hold it are the owner's alone
        for f in [
            repo / ".git" / "hybridiso" / "state.json",
            repo / ".git" / "hybridiso" / "logs" / "vault" / "setup.log",
            repo / ".git" / "hybridiso" / "compose" / "vault" / "compose.yaml",
            tmp_path / "r.agents" / "vault" / ".hybridiso.env",
        ]:
            assert secret in f.read_text() or f.name == "state.json", f
            assert f.stat().st_mode & 0o077 == 0 or f.name == ".hybridiso.env", f"{f}: {oct(f.stat().st_mode)}"
        # the env file: the host's (0600), readable by the agent's uid through its ACL only
        env_file = tmp_path / "r.agents" / "vault" / ".hybridiso.env"
        assert env_file.stat().st_uid == 0 and env_file.stat().st_mode & 0o007 == 0
        acl = os.getxattr(env_file, "system.posix_acl_access")
        entries = [tuple(int.from_bytes(acl[i:i + n], "little") for i, n in ((o, 2), (o + 2, 2), (o + 4, 4))) for o in range(4, len(acl), 8)]
        assert sorted((tag, perm) for tag, perm, _ in entries) == [(0x01, 6), (0x02, 4), (0x04, 0), (0x10, 4), (0x20, 0)]  # owner rw, agent r, group and others nothing
        assert secret in sh(repo, "vault", "cat .hybridiso.env")
        assert "Permission denied" in sh(repo, "vault", "echo x >> .hybridiso.env")
    finally:
        down(repo)


# --- ports ----------------------------------------------------------------------------------


def test_a_leased_port_another_program_took_is_named_and_leased_again(tmp_path: Path, busybox_image: str) -> None:
    repo = agents_repo(tmp_path / "r", web("web", busybox_image), {"index.html": "hi\n"})
    holder = None
    try:
        hybridiso(repo, "up")
        old = status_json(repo)["web"]["ports"]["web"]
        docker("stop", "-t", "0", container("web"))
        holder = subprocess.Popen([sys.executable, "-c", f"import socket,time; s=socket.socket(); s.bind(('127.0.0.1', {old})); s.listen(); print('ok', flush=True); time.sleep(300)"], stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        doctor = {c["name"]: c for c in json.loads(hybridiso(repo, "doctor", "--json").stdout)}
        check = doctor["leased ports"]
        assert check["status"] == "warn" and f"web.web={old} is held by pid {holder.pid}: {sys.executable} -c" in check["detail"]
        assert "hybridiso up web" in check["fix"]
        r = hybridiso(repo, "up")
        new = status_json(repo)["web"]["ports"]["web"]
        assert new != old
        assert f"web: its port web={old} is taken by another program (pid {holder.pid}: " in r.stderr and f"leased {new} instead" in r.stderr
        assert get(f"http://127.0.0.1:{new}/index.html") == "hi\n"
        assert state(repo)["agents"]["web"]["ports"] == {"web": new}
        doctor = {c["name"]: c for c in json.loads(hybridiso(repo, "doctor", "--json").stdout)}
        assert doctor["leased ports"]["status"] == "ok"
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        down(repo)


def test_a_port_lost_in_a_race_names_the_agent_the_port_and_the_holder(tmp_path: Path, busybox_image: str) -> None:
    """Docker's own refusal when the port went between the lease and the
    start, read back into one message."""
    from hybridiso.errors import UserError
    from hybridiso.project import load_project
    from hybridiso.state import AgentRecord
    from hybridiso.strategies import container as strategy
    from hybridiso.env_context import EnvContext

    port = free_port()
    first = docker("run", "-d", "--label", f"{TEST_LABEL}={TEST_RUN}", "-p", f"127.0.0.1:{port}:80", busybox_image, "sleep", "60")
    try:
        r = subprocess.run(["docker", "run", "-d", "--label", f"{TEST_LABEL}={TEST_RUN}", "-p", f"127.0.0.1:{port}:80", busybox_image, "sleep", "60"], capture_output=True, text=True, check=False)
        assert r.returncode != 0
        repo = make_repo(tmp_path / "r")
        write_manifest(repo, "agents: []\n")
        record = AgentRecord(name="web", strategy="container", branch="b", path=str(tmp_path / "x"), base="main", ports={"web": port})
        ctx = EnvContext(load_project(repo, None), None, record)
        error = strategy._port_taken(ctx, UserError(f"Docker refused to start container x: {r.stderr.strip()}"))
        assert error is not None
        assert f"agent web's port web={port} is taken by another program (pid " in error.message and "docker-proxy" in error.message
        assert error.hint and "`hybridiso up web` leases it another port" in error.hint
    finally:
        subprocess.run(["docker", "rm", "-f", first], capture_output=True, check=False)


# --- services of an isolated agent ------------------------------------------------------


def test_an_isolated_agent_keeps_its_own_services_and_they_are_fenced_too(tmp_path: Path, service_images: tuple[str, str], compose_v2: str) -> None:
    pg, redis = service_images
    repo = make_repo(tmp_path / "r")
    write_manifest(repo, f"""labels: {{{TEST_LABEL}: "{TEST_RUN}"}}
services:
  cache: {{kind: redis, image: {redis}}}
agents:
  - name: iso
    image: {pg}
    command: ["sleep", "infinity"]
    services: [cache]
    workload: {{needs: [network-isolation]}}
""")
    with host_listener() as listener:
        try:
            hybridiso(repo, "up", timeout=300)
            assert sh(repo, "iso", 'redis-cli -u "$REDIS_URL" ping').split()[0] == "PONG"
            service = docker("ps", "-q", "--filter", "label=dev.hybridiso.agent=iso", "--filter", "label=dev.hybridiso.role=service", "--filter", f"label={TEST_LABEL}={TEST_RUN}")
            gw = gateway(service)
            out = subprocess.run(["docker", "exec", service, "timeout", "4", "bash", "-c", f"exec 3<>/dev/tcp/{gw}/{listener.port}"], capture_output=True, text=True, check=False)
            assert out.returncode != 0 and "No route to host" in out.stderr
            assert listener.peers == []
            host = inspect(service)["HostConfig"]
            assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID"] and host["PidsLimit"] == 1024
        finally:
            down(repo)
    assert rules(bridge_of(repo, "iso")) == []


def test_engine_and_compose_give_an_isolated_agent_the_same_boundary(tmp_path: Path, busybox_image: str, compose_v2: str) -> None:
    """The rendered file alone carries the boundary: `docker compose up` of
    it makes the same container on the same bridge (so the same rules apply)."""
    repo = agents_repo(tmp_path / "r", web("iso", busybox_image, ISOLATED + "    read_only: true\n    cap_add: [NET_RAW]\n"))
    try:
        hybridiso(repo, "up")
        ours = inspect(container("iso"))
        file = json.loads(hybridiso(repo, "render", "iso", "--json").stdout)[0]["file"]
        subprocess.run(["docker", "compose", "-f", file, "up", "-d", "--force-recreate"], capture_output=True, text=True, check=True)
        theirs = inspect(container("iso"))
        assert theirs["Id"] != ours["Id"]
        for key in ("CapDrop", "CapAdd", "ReadonlyRootfs", "Tmpfs", "PidsLimit", "SecurityOpt", "Privileged", "NetworkMode"):
            assert ours["HostConfig"][key] == theirs["HostConfig"][key], key
        assert ours["Config"]["User"] == theirs["Config"]["User"]
        network = ours["HostConfig"]["NetworkMode"]
        assert json.loads(docker("network", "inspect", network))[0]["Options"] == {"com.docker.network.bridge.name": bridge_of(repo, "iso")}
        assert refused(connect(repo, "iso", gateway(theirs["Id"]), 22))
    finally:
        down(repo)


def test_an_agent_made_before_it_had_its_own_uid_is_handed_over(tmp_path: Path, git_image: str) -> None:
    """Upgrading: an environment made when containers ran as root (root's
    files, no uid in the record) gets its uid and what it needs on the next
    up, and git inside works as that uid."""
    repo = agents_repo(tmp_path / "r", f'  - {{name: old, isolation: container, image: {git_image}, command: ["sleep", "infinity"]}}\n')
    try:
        hybridiso(repo, "up")
        env = tmp_path / "r.agents" / "old"
        # what an older hybridiso left: everything root's, no ACL, no sticky bit
        for top in (env, repo / ".git"):
            for root, dirs, files in os.walk(top):
                for p in [Path(root), *(Path(root) / n for n in dirs + files)]:
                    if p.is_symlink():
                        continue
                    os.chown(p, 0, 0)
                    for name in ("system.posix_acl_access", "system.posix_acl_default"):
                        try:
                            os.removexattr(p, name)
                        except OSError:
                            pass
                    if p.is_dir():
                        os.chmod(p, p.stat().st_mode & ~0o1000 & ~0o070 | 0o050)
        path = repo / ".git" / "hybridiso" / "state.json"
        data = json.loads(path.read_text())
        record = data["agents"]["old"]
        uid = record.pop("container_user")
        for key in ("container_grants", "network_guard", "egress_addresses"):
            record.pop(key)
        path.write_text(json.dumps(data))
        hybridiso(repo, "up")
        assert agent_uid(repo, "old") == int(uid.split(":")[0])  # the same uid again: it is derived, not random
        out = hybridiso(repo, "exec", "old", "--", "sh", "-c", "id -u; echo x > new.txt && git add new.txt && git commit -qm inside && echo ok").stdout.split()
        assert out == [uid.split(":")[0], "ok"]
        assert git(repo, "log", "-1", "--format=%s", "hybridiso/old") == "inside"
    finally:
        down(repo)
