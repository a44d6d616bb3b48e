"""Drain, rollouts, crash loops and scheduler failover, on real etcd with hollow agents."""

from __future__ import annotations

import signal
import threading
import time

from orch.v1 import types_pb2 as pb
from tests.fixtures.fake_agent import FakeAgent
from tests.fixtures.processes import wait_for
from tests.integration.conftest import instances, orch

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: web}
spec:
  replicas: %(replicas)d
  image: rootfs:/x
  command: [sleep, "%(sleep)s"]
  resources: {cpu: 500m}
  update: {maxSurge: 1, maxUnavailable: 0}
"""


def app(replicas=4, sleep="1000"):
    return APP % {"replicas": replicas, "sleep": sleep}


def running(address, node=None):
    return [
        i for i in instances(address) if i["state"] == "Running" and i["desired"] == "Run" and node in (None, i["node"])
    ]


class ReadyWatcher:
    """Samples the ready count while something happens, to check a floor is never crossed."""

    def __init__(self, address):
        self.address, self.samples, self._stop = address, [], threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(len([i for i in instances(self.address) if i["ready"] and i["desired"] == "Run"]))
            time.sleep(0.05)

    def stop(self):
        self._stop.set()
        self._t.join()
        return self.samples


def test_drain_moves_instances_replacement_first(schedulers):
    addr = schedulers[0].address
    agents = [FakeAgent(addr, f"d{i}") for i in range(3)]
    try:
        assert all(a.registered.wait(10) for a in agents)
        assert orch(addr, "apply", "-", stdin=app(4)).returncode == 0
        wait_for(lambda: len(running(addr)) == 4, what="4 running")
        watcher = ReadyWatcher(addr)
        r = orch(addr, "drain", "d0", "--timeout", "30s")
        samples = watcher.stop()
        assert r.returncode == 0, r.stderr
        assert "node/d0 drained" in r.stdout
        assert not agents[0].desired
        assert len(running(addr)) == 4 and not running(addr, "d0")
        assert min(samples) >= 4, samples  # maxUnavailable 0: never below replicas ready
        nodes = {n["name"]: n for n in __import__("json").loads(orch(addr, "get", "nodes", "-o", "json").stdout)}
        assert nodes["d0"]["schedulable"] is False
        assert orch(addr, "uncordon", "d0").returncode == 0
    finally:
        for a in agents:
            a.kill()


def test_drain_says_what_blocks_it_and_stops_at_the_timeout(schedulers):
    addr = schedulers[0].address
    agents = [FakeAgent(addr, "big", cpu=4000), FakeAgent(addr, "tiny", cpu=100)]
    try:
        assert all(a.registered.wait(10) for a in agents)
        assert orch(addr, "apply", "-", stdin=app(2)).returncode == 0
        wait_for(lambda: len(running(addr)) == 2, what="2 running")
        started = time.monotonic()
        r = orch(addr, "drain", "big", "--timeout", "3s")
        assert r.returncode == 1
        assert "insufficient cpu" in r.stderr and "drain timed out after 3s" in r.stderr
        assert time.monotonic() - started < 20
        wait_for(lambda: not agents[0].desired, what="forced stop")
    finally:
        for a in agents:
            a.kill()


def test_rollout_replaces_every_instance_without_losing_ready_ones(schedulers):
    addr = schedulers[0].address
    agents = [FakeAgent(addr, f"r{i}") for i in range(2)]
    try:
        assert all(a.registered.wait(10) for a in agents)
        assert orch(addr, "apply", "-", stdin=app(3)).returncode == 0
        wait_for(lambda: len(running(addr)) == 3, what="3 running")
        before = {i["name"] for i in running(addr)}
        watcher = ReadyWatcher(addr)
        assert "configured" in orch(addr, "apply", "-", stdin=app(3, sleep="2000")).stdout

        def rolled():
            live = running(addr)
            return (
                len(live) == 3 and all(i["generation"] == 2 for i in live) and not (before & {i["name"] for i in live})
            )

        wait_for(rolled, timeout=20, what="rollout to generation 2")
        samples = watcher.stop()
        assert min(samples) >= 3, samples
        assert max(samples) <= 4, samples  # replicas + maxSurge
    finally:
        for a in agents:
            a.kill()


def test_crash_looping_instance_moves_to_another_node(schedulers):
    addr = schedulers[0].address
    crashing = pb.InstanceStatus(state=pb.INSTANCE_STATE_FAILED, reason="CrashLoopBackOff", restarts=6)
    bad = FakeAgent(addr, "bad", status_for=lambda _: crashing)
    try:
        assert bad.registered.wait(10)
        assert orch(addr, "apply", "-", stdin=app(1)).returncode == 0
        wait_for(lambda: bad.desired, what="placed on the only node")
        good = FakeAgent(addr, "good")
        try:
            assert good.registered.wait(10)
            # The crash loop is only acted on when the instance reports again.
            inst = next(iter(bad.desired.values()))
            bad.report(inst, crashing)
            wait_for(lambda: running(addr, "good"), what="moved to the good node")
            wait_for(lambda: not bad.desired, what="stopped on the bad node")
            events = orch(addr, "events").stdout
            assert "CrashLoop" in events or "Stopping" in events
        finally:
            good.kill()
    finally:
        bad.kill()


def test_follower_takes_over_when_the_leader_dies(schedulers):
    leader, follower = schedulers
    both = f"{leader.address},{follower.address}"
    agents = [FakeAgent(follower.address, f"f{i}") for i in range(2)]
    try:
        assert all(a.registered.wait(10) for a in agents)
        assert orch(both, "apply", "-", stdin=app(2)).returncode == 0
        wait_for(lambda: len(running(follower.address)) == 2, what="placed by the leader")
        leader.proc.send_signal(signal.SIGKILL)
        leader.proc.wait()
        # The CLI fails over to the follower, which becomes leader once the leader key's lease
        # (3 s) ends. How fast is measured in bench/, not asserted here.
        assert orch(both, "scale", "web", "4").returncode == 0
        wait_for(lambda: len(running(follower.address)) == 4, timeout=30, what="placement after failover")
        assert len([i for i in instances(follower.address) if i["desired"] == "Run"]) == 4  # never placed twice
    finally:
        for a in agents:
            a.kill()
