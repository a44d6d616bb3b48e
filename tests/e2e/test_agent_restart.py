"""An agent SIGKILLed and started again adopts its running containers (same
PIDs, no restart) and reports the exit of one that ended while it was down.
The node lease is long here, so the restart happens before the node is
declared dead; with the default 1 s lease the instances would be replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

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
