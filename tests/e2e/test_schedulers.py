"""orch up --schedulers 2 with real agents: SIGKILL the leader; agents move to
the other scheduler without their nodes ever going NotReady, it takes over
the lead, and placement continues."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.e2e.cluster import instances, orch, orch_up, wait_removed
from tests.fixtures.processes import wait_for

pytestmark = pytest.mark.root

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: after}
spec:
  replicas: 4
  image: rootfs:%s
  command: ["sleep", "100000"]
  stopGracePeriod: 1s
"""


def nodes(info):
    r = orch(info, "get", "nodes", "-o", "json")
    return json.loads(r.stdout) if r.returncode == 0 else []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, busybox_rootfs):
    tmp = tmp_path_factory.mktemp("schedulers")
    with orch_up(tmp, "--nodes", "2", "--schedulers", "2", cidr_start=220) as info:
        yield info


def test_agents_and_cli_fail_over_to_the_surviving_scheduler(cluster, busybox_rootfs):
    info = cluster
    assert len(info["schedulers"]) == 2
    both = {**info, "schedulers": [",".join(info["schedulers"])]}  # the CLI tries them in turn
    wait_for(lambda: [n for n in nodes(both) if n["state"] == "Ready"] == nodes(both) and len(nodes(both)) == 2,
             20, "2 Ready nodes")  # fmt: skip
    leader = next(p for p in info["processes"] if p["role"] == "scheduler" and "scheduler-0" in p["argv"])
    os.kill(leader["pid"], signal.SIGKILL)
    killed = time.monotonic()
    not_ready_seen = False
    while time.monotonic() - killed < 4:  # past the leader lease (3 s): agents moved, a new leader rules
        not_ready_seen |= any(n["state"] != "Ready" for n in nodes(both))
        time.sleep(0.2)
    assert not not_ready_seen, "a node looked dead while its agent moved to the other scheduler"
    assert orch(both, "apply", "-", stdin=APP % busybox_rootfs).returncode == 0
    wait_for(lambda: sum(i["state"] == "Running" for i in instances(both)) == 4, 20, "placed by the new leader")
    assert sorted(sum(i["node"] == n for i in instances(both)) for n in ("node-0", "node-1")) == [2, 2]
    assert orch(both, "delete", "app", "after").returncode == 0
    wait_removed(both)
