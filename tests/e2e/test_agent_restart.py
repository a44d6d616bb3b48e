"""Agent restarts.

With the defaults (1 s node lease, 30 s restart grace) on two nodes: an agent
SIGTERMed (as systemd restarts or upgrades it) says goodbye and its node is
held, Restarting, while its lease lapses; started again it adopts its
containers (same PIDs, no restarts, nothing replaced). One SIGTERMed and not
started again loses its instances once the grace is over, and on its return
the replaced ones are stopped (fenced).

On one node with a long lease: an agent SIGKILLed and started again adopts
its running containers and reports the exit of one that ended while it was
down; an agent SIGTERMed while state files are torn still starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from node.network.hostports import chain_name
from node.runtime.shim_client import Zygote
from tests.e2e.cluster import delete_apps, instances, orch, orch_up
from tests.e2e.liveness_checks import Api, Restarted, observed, process, restart, running, snapshot, wait_exit
from tests.fixtures.processes import orch_env, stop, wait_for

pytestmark = pytest.mark.root

APPS = """
apiVersion: orch/v1
kind: App
metadata: {name: steady}
spec:
  replicas: 2
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  stopGracePeriod: 1s
---
apiVersion: orch/v1
kind: App
metadata: {name: brief}
spec:
  replicas: 1
  image: rootfs:%(root)s
  # Exits 7 when the test says so (SIGUSR1): with `sleep 4; exit 7` the emulated VM's slow polls
  # never saw all 3 Running inside those 4 s.
  command: ["sh", "-c", "trap 'exit 7' USR1; while :; do sleep 0.1; done"]
  restartPolicy: Never
"""


KEPT = """
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: %(replicas)d
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  stopGracePeriod: 1s
"""


@pytest.fixture(scope="module")
def defaults(tmp_path_factory, busybox_rootfs):
    """orch up with every default but the node count; yields (cluster.json, API, restarted agents)."""
    tmp = tmp_path_factory.mktemp("restart-defaults")
    with orch_up(tmp, "--nodes", "2", cidr_start=236) as info:
        api, restarted = Api(info), Restarted()
        try:
            yield info, api, restarted
        finally:
            restarted.stop_all()
            api.close()


def test_sigterm_and_restart_moves_nothing(defaults, busybox_rootfs, tmp_path):
    info, api, restarted = defaults
    apps = {"kept"}
    zygote = Zygote(Path(info["stateDir"]) / "nodes" / "node-0" / "containers")
    # A fresh node warms up its runtime before any container (the module's first test).
    warmed = wait_for(zygote.pid, 30, "node-0's zygote, warmed up at its start")
    manifest = KEPT % {"name": "kept", "replicas": 4, "root": busybox_rootfs}
    assert orch(info, "apply", "-", stdin=manifest).returncode == 0
    before = snapshot(wait_for(lambda: running(api, apps, 4), 30, "4 Running"))
    assert sorted(node for node, *_ in before.values()) == ["node-0", "node-0", "node-1", "node-1"]
    agent = process(info, "agent", "node-0")
    with observed(api, apps) as seen:
        os.kill(agent["pid"], signal.SIGTERM)
        signalled = time.monotonic()
        wait_exit(agent["pid"])
        wait_for(lambda: api.nodes()["node-0"] == "Restarting", 10, "node-0 Restarting")
        shown = json.loads(orch(info, "get", "nodes", "-o", "json").stdout)
        held = next(n for n in shown if n["name"] == "node-0")
        assert held["state"] == "Restarting" and held["restartingUntil"]
        described = orch(info, "describe", "node", "node-0").stdout
        assert "state: Restarting" in described and "NodeRestarting" in described
        # Past the lease (1 s) and etcd's expiry tick: a dead node would be replaced by now. The
        # two commands above may have taken that long already (seconds each in the emulated VM,
        # where the restart then came too late for the hold's 30 s: 3abbd17).
        time.sleep(max(0.0, 3 - (time.monotonic() - signalled)))
        restarted_after = time.monotonic() - signalled
        new = restarted.add(restart(agent, tmp_path / "agent-0.log"))
        # 20 s ran out in the emulated VM (1f56058): up to the hold's 30 s, less the 3 above,
        # and the new agent's log if that is not enough.
        wait_for(
            lambda: api.nodes()["node-0"] == "Ready",
            25,
            "node-0 Ready again",
            explain=lambda: "the new agent's log ends:\n" + (tmp_path / "agent-0.log").read_text()[-3000:],
        )
        ready_after = time.monotonic() - signalled
        after = snapshot(wait_for(lambda: running(api, apps, 4), 20, "4 Running"))
    assert new.poll() is None
    # Same instances, nodes, PIDs, restart counts and start times.
    assert after == before, (
        f"restarted {restarted_after:.1f} s after SIGTERM, Ready again after {ready_after:.1f} s (the hold: 30 s); "
        "the new agent's log ends:\n" + (tmp_path / "agent-0.log").read_text()[-3000:]
    )
    # A restart adopts and starts nothing: no warm-up taking CPU from registering and renewing
    # (the old agent's zygote may still be on its way out). A warm-up takes under a second here.
    time.sleep(3)
    assert zygote.pid() in (None, warmed)
    assert not seen.lost() and set(seen.states) == set(before)
    assert "Restarting" in seen.node_states["node-0"] and "NotReady" not in seen.node_states["node-0"]
    assert not [e for e in api.events("InstanceLost") if e.object.startswith("kept-")]
    assert [e for e in api.events("NodeRestarted") if e.object == "node-0"]
    assert orch(info, "delete", "app", "kept").returncode == 0
    wait_for(lambda: not api.instances(apps), 20, "kept removed")


def test_sigterm_without_restart_replaces_after_the_grace_and_fences_on_return(defaults, busybox_rootfs, tmp_path):
    info, api, restarted = defaults
    apps = {"left"}
    wait_for(lambda: set(api.nodes().values()) == {"Ready"}, 20, "both nodes Ready")
    manifest = KEPT % {"name": "left", "replicas": 2, "root": busybox_rootfs}
    assert orch(info, "apply", "-", stdin=manifest).returncode == 0
    before = snapshot(wait_for(lambda: running(api, apps, 2), 30, "2 Running"))
    [(gone, _)] = [(name, v) for name, v in before.items() if v[0] == "node-1"]
    agent = process(info, "agent", "node-1")
    os.kill(agent["pid"], signal.SIGTERM)
    wait_exit(agent["pid"])
    wait_for(lambda: api.nodes()["node-1"] == "Restarting", 10, "node-1 Restarting")
    time.sleep(3)  # a dead node's instances would be replaced by now; these are held
    assert snapshot(api.instances(apps)) == before
    # The grace (30 s) ends: the node is NotReady and its instance is replaced.
    wait_for(lambda: api.nodes()["node-1"] == "NotReady", 40, "node-1 NotReady after the grace")
    lost = wait_for(lambda: [i for i in api.instances(apps) if i.status.reason == "NodeLost"], 10, "its instance Lost")
    assert [i.name for i in lost] == [gone]
    wait_for(lambda: len([i for i in api.instances(apps) if i.node == "node-0" and i.status.pid]) == 2, 20, "replaced")
    # Back: its replaced instance is stopped and removed, nothing else moves.
    restarted.add(restart(agent, tmp_path / "agent-1.log"))
    wait_for(lambda: gone not in {i.name for i in api.instances(apps)}, 30, "the replaced instance fenced")
    assert {i.node for i in api.instances(apps)} == {"node-0"} and len(api.instances(apps)) == 2
    assert orch(info, "delete", "app", "left").returncode == 0
    wait_for(lambda: not api.instances(apps), 20, "left removed")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, busybox_rootfs):
    with orch_up(tmp_path_factory.mktemp("restart"), "--nodes", "1", "--lease-ttl", "15", cidr_start=230) as info:
        yield info


def test_restarted_agent_adopts_containers_and_reports_exits(cluster, busybox_rootfs):
    info = cluster
    assert orch(info, "apply", "-", stdin=APPS % {"root": busybox_rootfs}).returncode == 0

    def all_running():
        insts = instances(info)
        return insts if len(insts) == 3 and all(i["state"] == "Running" for i in insts) else None

    # 30 s ran out once in the emulated VM (the first containers of a fresh cluster there): 60 s,
    # and the failure lists the instances as they were.
    def shown() -> str:
        return "\n".join(
            f"{i['name']} {i['state']} {i.get('reason', '')} {i.get('message', '')}" for i in instances(info)
        )

    before = {i["name"]: i for i in wait_for(all_running, 60, "3 Running", explain=shown)}
    agent = next(p for p in info["processes"] if p["role"] == "agent")
    os.kill(agent["pid"], signal.SIGKILL)
    [pid] = [i["pid"] for i in before.values() if i["app"] == "brief"]
    assert pid and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sh\0")  # its host PID, nothing else
    os.kill(pid, signal.SIGUSR1)  # "brief" exits with 7 while nobody watches
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, "brief's exit")
    restarted = subprocess.Popen(agent["argv"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=orch_env())
    try:
        brief = wait_for(
            lambda: next((i for i in instances(info) if i["app"] == "brief" and i["state"] == "Failed"), None),
            20,
            "the exit that happened while the agent was down",
        )
        assert brief["exitCode"] == 7 and brief["restarts"] == 0
        steady = {i["name"]: i for i in instances(info) if i["app"] == "steady"}
        assert steady.keys() == {n for n, i in before.items() if i["app"] == "steady"}
        for name, inst in steady.items():
            assert inst["state"] == "Running" and inst["restarts"] == 0
            assert inst["pid"] == before[name]["pid"]  # the same process, adopted
            assert inst["startedAt"] == before[name]["startedAt"]
        delete_apps(info, "steady", "brief")
    finally:
        stop(restarted)


SURVIVORS = """
apiVersion: orch/v1
kind: App
metadata: {name: served}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
  ports: [{containerPort: 8080, hostPort: %(port)d}]
  stopGracePeriod: 1s
---
apiVersion: orch/v1
kind: App
metadata: {name: torn}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  stopGracePeriod: 1s
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _fetch(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bytes(r.read())
    except OSError:
        return None


def test_sigterm_takes_the_zygote_and_the_next_agent_reads_past_unreadable_state(cluster, busybox_rootfs, tmp_path):
    """Issue 9 items 18 and 17: an agent stopped with SIGTERM (no --cleanup) leaves its containers
    running but not its zygote. Meanwhile state files are torn (as by a host crash or a disk
    error): the next agent still starts, adopts what it can, republishes a hostPort whose record
    it had to set aside, and reports the container whose start.json is unreadable as lost."""
    info = cluster
    agent = next(p for p in info["processes"] if p["role"] == "agent")
    node_dir = Path(info["stateDir"]) / "nodes" / agent["node"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    running = None if _alive(agent["pid"]) else subprocess.Popen(agent["argv"], env=orch_env())
    assert orch(info, "apply", "-", stdin=SURVIVORS % {"root": busybox_rootfs, "port": port}).returncode == 0
    restarted = None
    try:
        by_app = wait_for(
            lambda: (
                (insts := {i["app"]: i for i in instances(info) if i["state"] == "Running"}).keys()
                >= {"served", "torn"}
                and insts
            ),
            30,
            "both Running",
        )
        served, torn = by_app["served"], by_app["torn"]
        url = f"http://{agent['publishAddress']}:{port}/"
        assert wait_for(lambda: _fetch(url), 10, "the hostPort") == b"hello from orch\n"
        zygote = int((node_dir / "containers" / ".zygote" / "pid").read_text())
        start = json.loads((node_dir / "containers" / served["name"] / "start.json").read_text())
        agent_pid = running.pid if running is not None else agent["pid"]
        os.kill(agent_pid, signal.SIGTERM)
        if running is not None:
            assert running.wait(timeout=30) == 0
        wait_for(lambda: not _alive(agent_pid), 30, "the agent to exit")
        wait_for(lambda: not _alive(zygote), 30, "the zygote to exit with its agent")
        assert _alive(start["shim_pid"]) and _alive(start["pid"])  # the container is supervised still
        # While no agent runs: torn state files.
        (node_dir / "ipam" / "hostports" / f"{served['name']}.json").write_text("")
        (node_dir / "containers" / torn["name"] / "start.json").write_text('{"pid": ')
        (node_dir / "ipam" / "10.250.0.9").write_bytes(b"\xff")  # not in its subnet: ignored
        subnet_ip = served["ip"].rsplit(".", 1)[0] + ".250"
        (node_dir / "ipam" / subnet_ip).write_text("")
        bridge = agent["argv"][agent["argv"].index("--bridge") + 1]
        subprocess.run(["iptables", "-t", "nat", "-F", chain_name(bridge)], check=True)  # only the record has it now
        assert _fetch(url) is None
        log = tmp_path / "agent.log"
        with open(log, "wb") as out:
            restarted = subprocess.Popen(agent["argv"], env=orch_env(), stdout=out, stderr=subprocess.STDOUT)
        # Only the new agent can bring the DNAT back (the record was unreadable, the chain flushed):
        # it adopted the container and published its hostPort again.
        # Up to an agent start (its Ready alone may take 25 s in the emulated VM, see above), then the
        # adoption; the failure shows the new agent's log.
        assert (
            wait_for(
                lambda: _fetch(url),
                60,
                "the hostPort republished",
                explain=lambda: "the new agent's log ends:\n" + log.read_text(errors="replace")[-3000:],
            )
            == b"hello from orch\n"
        )
        adopted = next(i for i in instances(info) if i["name"] == served["name"])
        assert (adopted["state"], adopted["pid"], adopted["restarts"]) == ("Running", served["pid"], 0)
        assert adopted["ip"] == served["ip"]  # taken back from the IPAM state
        again = wait_for(
            lambda: next((i for i in instances(info) if i["app"] == "torn" and i["restarts"] and i["pid"]), None),
            30,
            "torn started again",
        )
        assert again["name"] == torn["name"] and not _alive(torn["pid"])  # the lost one was stopped first
        text = log.read_text()
        assert f"{torn['name']}/start.json is unreadable" in text and "set aside as start.json.corrupt-" in text
        corrupt = sorted(p.name.split(".corrupt-")[0] for p in (node_dir / "ipam").rglob("*.corrupt-*"))
        assert corrupt == sorted([f"{served['name']}.json", subnet_ip]), corrupt
        delete_apps(info, "served", "torn")
    finally:
        for proc in (running, restarted):
            if proc is not None:
                stop(proc)
