"""An agent SIGKILLed and started again adopts its running containers (same
PIDs, no restart) and reports the exit of one that ended while it was down.
The node lease is long here, so the restart happens before the node is
declared dead; with the default 1 s lease the instances would be replaced."""

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
from tests.e2e.cluster import instances, orch, orch_up, wait_all_removed
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
  command: ["sh", "-c", "sleep 4; exit 7"]
  restartPolicy: Never
"""


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

    before = {i["name"]: i for i in wait_for(all_running, 30, "3 Running")}
    agent = next(p for p in info["processes"] if p["role"] == "agent")
    os.kill(agent["pid"], signal.SIGKILL)
    time.sleep(5)  # "brief" exits with 7 while nobody watches
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
        for app in ("steady", "brief"):
            assert orch(info, "delete", "app", app).returncode == 0
        wait_all_removed(info)
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
    stat = Path(f"/proc/{pid}/stat").read_text()
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
        assert wait_for(lambda: _fetch(url), 30, "the hostPort republished") == b"hello from orch\n"
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
        for app in ("served", "torn"):
            assert orch(info, "delete", "app", app).returncode == 0
        wait_all_removed(info)
    finally:
        for proc in (running, restarted):
            if proc is not None:
                stop(proc)
