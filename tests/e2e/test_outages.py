"""Outages of the control plane evict nothing (issue 10 item 5), on `orch up`
clusters with every default (1 s node lease): more than half of the agents
stopped at once (SIGSTOP), etcd stopped for 30 s or restarted on its data,
the scheduler SIGKILLed and restarted, the leader SIGKILLed with a second
scheduler taking over. Each time no instance is marked Lost, and every one
keeps its PID: nothing running is stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from node.session import first_scheduler
from tests.e2e.cluster import orch, orch_up
from tests.e2e.liveness_checks import (
    Api,
    Restarted,
    observed,
    process,
    restart,
    running,
    snapshot,
    wait_exit,
)
from tests.fixtures.processes import wait_for

pytestmark = pytest.mark.root

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: %(replicas)d
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  stopGracePeriod: 1s
"""
GRACE = 6.5  # scheduler/liveness.py reconnect_grace(1): a lease, the agents' reconnect backoff, a margin


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, busybox_rootfs):
    """orch up --nodes 3 with an app of 6 replicas (2 per node) Running; yields (cluster.json, API, restarted)."""
    with orch_up(tmp_path_factory.mktemp("outages"), "--nodes", "3", cidr_start=206) as info:
        api, restarted = Api(info), Restarted()
        try:
            manifest = APP % {"name": "steady", "replicas": 6, "root": busybox_rootfs}
            assert orch(info, "apply", "-", stdin=manifest).returncode == 0
            insts = wait_for(lambda: running(api, {"steady"}, 6), 30, "6 Running")
            assert sorted(i.node for i in insts) == ["node-0", "node-0", "node-1", "node-1", "node-2", "node-2"]
            yield info, api, restarted
        finally:
            restarted.stop_all()
            api.close()


def settled(api: Api, apps: set[str], count: int, leader: dict) -> dict[str, tuple[str, int, int, int]]:
    """Every node Ready, the apps' instances Running and `leader` leading, past any grace that
    the outage or the new leadership started: anything still wrong would have moved by then."""
    wait_for(lambda: metric(leader["metricsUrl"], "orch_scheduler_leader") == 1, 30, "a leader")
    # A restarted scheduler serves /metrics (and may lead) before its API listens: wait_for takes
    # its refused calls (UNAVAILABLE) as "not yet".
    wait_for(lambda: set(api.nodes().values()) == {"Ready"}, 30, "every node Ready")
    wait_for(lambda: running(api, apps, count), 30, f"{count} Running")
    time.sleep(GRACE + 1)
    return snapshot(wait_for(lambda: running(api, apps, count), 10, f"{count} Running"))


def lost_events(api: Api, app: str) -> list[str]:
    return [e.object for e in api.events("InstanceLost") if e.object.startswith(app + "-")]


def metric(url: str, name: str, labels: str = "") -> float | None:
    """One sample from a /metrics page; None when absent or the process does not answer."""
    series = f"{name}{{{labels}}} " if labels else f"{name} "
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            lines = r.read().decode().splitlines()
    except OSError:
        return None
    return next((float(line.split()[-1]) for line in lines if line.startswith(series)), None)


def test_more_than_half_of_the_nodes_not_ready_evicts_nothing(cluster):
    info, api, _ = cluster
    before = snapshot(api.instances({"steady"}))
    stopped = [process(info, "agent", n)["pid"] for n in ("node-1", "node-2")]
    with observed(api, {"steady"}) as seen:
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_for(lambda: [api.nodes()[n] for n in ("node-1", "node-2")] == ["NotReady"] * 2, 15, "2 NotReady")
            wait_for(
                lambda: {e.object for e in api.events("EvictionPaused")} >= {"node-1", "node-2"},
                15,
                "an event saying why nothing is evicted",
            )
            scheduler = process(info, "scheduler")
            held = metric(scheduler["metricsUrl"], "orch_scheduler_evictions_held_nodes", 'reason="EvictionPaused"')
            assert held == 2
            time.sleep(2)  # two dead nodes' instances would have been replaced by now
            assert snapshot(api.instances({"steady"})) == before
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        after = settled(api, {"steady"}, 6, process(info, "scheduler"))
    assert after == before and not seen.lost() and not lost_events(api, "steady")
    message = next(e.message for e in api.events("EvictionPaused") if e.object == "node-2")
    assert "nodes are not ready at once" in message and "suspecting the control plane" in message
    log = (Path(info["stateDir"]) / "logs" / "scheduler-0.log").read_text()
    assert "not evicting node-" in log and "suspecting the control plane" in log


# 2 s: the node leases (1 s) lapse, the leader's (3 s) does not, so the leader reconciles right
# after. 30 s, where everything lapses, leadership too: tests/e2e/test_partitions.py stops every
# member of the lab's three for 30 s (one run of that wait is enough for the suite's time).
def test_etcd_stopped_evicts_nothing(cluster):
    info, api, _ = cluster
    before = snapshot(api.instances({"steady"}))
    etcd = process(info, "etcd")
    with observed(api, {"steady"}) as seen:
        os.kill(etcd["pid"], signal.SIGSTOP)
        try:
            time.sleep(2)
        finally:
            os.kill(etcd["pid"], signal.SIGCONT)
        after = settled(api, {"steady"}, 6, process(info, "scheduler"))
    assert after == before and not seen.lost() and not lost_events(api, "steady")


def test_etcd_restarted_on_its_data_evicts_nothing(cluster, tmp_path):
    info, api, restarted = cluster
    before = snapshot(api.instances({"steady"}))
    etcd = process(info, "etcd")
    with observed(api, {"steady"}) as seen:
        os.kill(etcd["pid"], signal.SIGTERM)
        wait_exit(etcd["pid"])
        time.sleep(3)  # down for longer than a node lease
        restarted.add(restart(etcd, tmp_path / "etcd.log"))
        after = settled(api, {"steady"}, 6, process(info, "scheduler"))
    assert after == before and not seen.lost() and not lost_events(api, "steady")


def test_scheduler_killed_and_restarted_evicts_nothing(cluster, tmp_path):
    info, api, restarted = cluster
    before = snapshot(api.instances({"steady"}))
    scheduler = process(info, "scheduler")
    with observed(api, {"steady"}) as seen:
        os.kill(scheduler["pid"], signal.SIGKILL)
        wait_exit(scheduler["pid"])
        time.sleep(2)  # every node lease lapses meanwhile: nobody refreshes them
        restarted.add(restart(scheduler, tmp_path / "scheduler.log"))
        after = settled(api, {"steady"}, 6, scheduler)  # the new process: same argv, same ports
    assert after == before and not seen.lost() and not lost_events(api, "steady")


def test_leadership_change_evicts_nothing(tmp_path, busybox_rootfs):
    with orch_up(tmp_path, "--nodes", "2", "--schedulers", "2", cidr_start=212) as info:
        leading = leader_index(info)
        leader, follower = (process(info, "scheduler", index=i) for i in (leading, 1 - leading))
        api = Api({**info, "schedulers": [info["schedulers"][1 - leading]]})  # the one that survives
        try:
            manifest = APP % {"name": "led", "replicas": 4, "root": busybox_rootfs}
            assert orch(info, "apply", "-", stdin=manifest).returncode == 0
            before = snapshot(wait_for(lambda: running(api, {"led"}, 4), 30, "4 Running"))
            assert metric(leader["metricsUrl"], "orch_scheduler_leader") == 1
            with observed(api, {"led"}) as seen:
                os.kill(leader["pid"], signal.SIGKILL)
                after = settled(api, {"led"}, 4, follower)  # once the leader key expired (3 s) and a grace
            assert after == before and not seen.lost() and not lost_events(api, "led")
        finally:
            api.close()


def test_a_scheduler_that_goes_away_evicts_nothing_of_its_agents(tmp_path, busybox_rootfs):
    """One agent of three keeps its session on the scheduler that does not lead, which hangs
    (SIGSTOP: a killed one resets the stream and its agents move before their leases lapse). That node's
    lease lapses with the scheduler's presence; its agent finds the hang by its pings (~4 s)
    and moves to the leader within the grace instead of having its instances replaced. One node
    of three is not "more than half down": only the presence tells the leader it is not the
    node's fault."""
    with orch_up(tmp_path, "--nodes", "3", "--schedulers", "2", cidr_start=214) as info:
        leading = leader_index(info)
        leader, other = (process(info, "scheduler", index=i) for i in (leading, 1 - leading))
        api, restarted = Api({**info, "schedulers": [info["schedulers"][leading]]}), Restarted()  # the survivor
        try:
            manifest = APP % {"name": "kept", "replicas": 6, "root": busybox_rootfs}
            assert orch(info, "apply", "-", stdin=manifest).returncode == 0
            wait_for(lambda: running(api, {"kept"}, 6), 30, "6 Running")
            assert metric(leader["metricsUrl"], "orch_scheduler_leader") == 1
            agent = process(info, "agent", "node-2")
            os.kill(agent["pid"], signal.SIGTERM)  # a planned restart: held, nothing moves
            wait_exit(agent["pid"])
            argv = _scheduler_first(agent["argv"], info["schedulers"][1 - leading])
            restarted.add(restart(agent | {"argv": argv}, tmp_path / "agent.log"))
            wait_for(
                lambda: metric(other["metricsUrl"], "orch_scheduler_agent_sessions") == 1, 60, "node-2 on the follower"
            )
            wait_for(lambda: api.nodes()["node-2"] == "Ready", 60, "node-2 Ready")
            before = snapshot(wait_for(lambda: running(api, {"kept"}, 6), 30, "6 Running"))
            with observed(api, {"kept"}) as seen:
                os.kill(other["pid"], signal.SIGSTOP)
                wait_for(lambda: metric(leader["metricsUrl"], "orch_scheduler_agent_sessions") == 3, 30, "all on s0")
                after = settled(api, {"kept"}, 6, leader)
            assert after == before and not seen.lost() and not lost_events(api, "kept")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(other["pid"], signal.SIGKILL)  # stopped: SIGTERM would wait
            restarted.stop_all()
            api.close()


def leader_index(info: dict) -> int:
    """Which of `orch up`'s two schedulers leads. scheduler-0 starts first and mostly wins, but
    on a loaded machine scheduler-1 may campaign first: the tests must not assume."""

    urls = [process(info, "scheduler", index=i)["metricsUrl"] for i in (0, 1)]

    def the_leader() -> tuple[int, ...] | None:  # a tuple: index 0 must count as found
        found = tuple(i for i, url in enumerate(urls) if metric(url, "orch_scheduler_leader") == 1)
        return found if len(found) == 1 else None

    (index,) = wait_for(the_leader, 30, "one leader")
    return int(index)


def _scheduler_first(argv: list[str], address: str) -> list[str]:
    """An agent's argv with `address` where in its --scheduler list it starts (first_scheduler
    of its node's name): its session goes there."""
    at = argv.index("--scheduler") + 1
    rest = [a for a in argv[at].split(",") if a != address]
    rest.insert(first_scheduler(argv[argv.index("--name") + 1], len(rest) + 1), address)
    return [*argv[:at], ",".join(rest), *argv[at + 1 :]]
