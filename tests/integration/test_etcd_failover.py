"""Losing one of three etcd members (issue 10 item 7): two scheduler processes on a
3-member etcd on loopback, hollow agents on the first. kill -9 the etcd leader,
or a follower, while Apply calls stream in or while a node drains: no call
fails, no node goes NotReady, no instance is Lost, nothing moves but what the
drain moves. A member that hangs (SIGSTOP: a partition) moves the watch along with the
lease keep-alives. The member killed is always the one the first scheduler's etcd
client (and so its watch and lease keep-alive stream) uses, made leader or
follower first with `etcdctl move-leader`: its streams must re-open on
another member."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from orch.v1 import api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb
from tests.fixtures.etcd import EtcdCluster, Member, start_etcd_cluster
from tests.fixtures.fake_agent import FakeAgent
from tests.fixtures.processes import stop, wait_for
from tests.integration.conftest import SchedulerProc, orch, start_scheduler

NODES = ("n0", "n1", "n2")


@pytest.fixture
def etcd_cluster(tmp_path) -> Iterator[EtcdCluster]:
    cluster = start_etcd_cluster()
    try:
        yield cluster
    finally:
        # The members' logs outlive the cluster in the test's directory: a rare failure (etcd with
        # no leader for 8 s after one follower of three was killed, make test on ce4021f) can
        # then be read from its terms and votes.
        for m in cluster.members:
            if m.log.exists():
                shutil.copyfile(m.log, tmp_path / f"etcd-{m.name}.log")
        cluster.stop()


@dataclass
class Setup:
    etcd: EtcdCluster
    schedulers: list[SchedulerProc]
    agents: list[FakeAgent]
    stub: api_pb2_grpc.OrchStub


@pytest.fixture
def setup(etcd_cluster, tmp_path) -> Iterator[Setup]:
    endpoints = ",".join(etcd_cluster.endpoints)
    schedulers = [start_scheduler(endpoints, tmp_path / "scheduler-0.log", "s0")]
    time.sleep(0.3)  # s0 leads
    schedulers.append(start_scheduler(endpoints, tmp_path / "scheduler-1.log", "s1"))
    agents = [FakeAgent(schedulers[0].address, n) for n in NODES]
    channel = grpc.insecure_channel(schedulers[0].address)
    try:
        assert all(a.registered.wait(10) for a in agents)
        yield Setup(etcd_cluster, schedulers, agents, api_pb2_grpc.OrchStub(channel))
    finally:
        channel.close()
        for a in agents:
            a.kill()
        for s in schedulers:
            stop(s.proc)


def member_in_use(etcd: EtcdCluster, pid: int) -> Member:
    """The member the process talks to now: of its established connections to client ports
    (gRPC's sockets are IPv6 ones with IPv4-mapped addresses), the one it sent on last. A
    client that failed over before (a slow machine: seen in the emulated VM) keeps the
    connection to its former member open, idle; lease keep-alives go out every 0.25 s."""
    out = subprocess.run(["ss", "-tnpiH", "state", "established"], capture_output=True, text=True, check=True).stdout
    last_sent: dict[int, int] = {}  # client port -> ms since the process last sent on it
    port = None
    for line in out.splitlines():
        if not line[:1].isspace():  # a connection; its details follow on an indented line
            found = re.search(r"127\.0\.0\.1\]?:(\d+)\s+users:", line) if f"pid={pid}," in line else None
            port = int(found.group(1)) if found else None
        elif port is not None:
            sent = re.search(r"lastsnd:(\d+)", line)
            last_sent[port] = min(last_sent.get(port, 1 << 62), int(sent.group(1)) if sent else 1 << 62)
    used = {m.client_port: m for m in etcd.members if m.client_port in last_sent}
    assert used, f"scheduler {pid} talks to no etcd member"
    return used[min(used, key=lambda p: last_sent[p])]


def victim(s: Setup, role: str) -> Member:
    """The member s0 uses, made the etcd leader (role "leader") or a follower first."""
    member = member_in_use(s.etcd, s.schedulers[0].proc.pid)
    if role == "leader":
        s.etcd.move_leader(member)
    elif s.etcd.leader() is member:
        s.etcd.move_leader(next(m for m in s.etcd.members if m is not member))
    return member


@dataclass
class Watch:
    """What happened while a member died: node states seen, calls that failed."""

    node_states: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def apply(stub: api_pb2_grpc.OrchStub, name: str, replicas: int, env: str = "") -> None:
    spec = pb.AppSpec(name=name, replicas=replicas, image="rootfs:/x", command=["sleep", "1000"])
    spec.resources.cpu_millis = 100
    if env:
        spec.env["ROUND"] = env
    stub.Apply(api_pb2.ApplyRequest(apps=[spec]), timeout=10)


def placement(stub: api_pb2_grpc.OrchStub, app: str) -> dict[str, str]:
    resp = stub.ListInstances(api_pb2.ListInstancesRequest(app=app), timeout=10)
    return {i.name: i.node for i in resp.instances if i.desired != pb.DESIRED_STATE_STOP}


def settled(stub: api_pb2_grpc.OrchStub, app: str, count: int) -> dict[str, str]:
    def ok() -> dict[str, str] | None:
        resp = stub.ListInstances(api_pb2.ListInstancesRequest(app=app), timeout=10)
        run = [i for i in resp.instances if i.status.state == pb.INSTANCE_STATE_RUNNING]
        return {i.name: i.node for i in run} if len(run) == count == len(resp.instances) else None

    return dict(wait_for(ok, 20, f"{count} {app} Running"))


def watched(s: Setup, stop_event: threading.Event, watch: Watch, churn: bool) -> threading.Thread:
    """Polls node states (and, with churn, applies a new generation of app "churn" each round)."""

    def run() -> None:
        round_ = 0
        while not stop_event.is_set():
            started = time.monotonic()
            try:
                if churn:
                    round_ += 1
                    apply(s.stub, "churn", 1 + round_ % 3, env=str(round_))
                nodes = s.stub.ListNodes(api_pb2.ListNodesRequest(), timeout=10).nodes
                watch.node_states |= {api_pb2.NodeState.Name(n.state) for n in nodes}
            except grpc.RpcError as e:
                watch.failures.append(f"{e.code().name}: {e.details()}")
            watch.latencies.append(time.monotonic() - started)
            stop_event.wait(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def lost_events(s: Setup) -> list[str]:
    events = s.stub.ListEvents(api_pb2.ListEventsRequest(), timeout=10).events
    return [e.object for e in events if e.reason == "InstanceLost"]


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_an_etcd_member_killed_during_apply_fails_nothing(setup, role, record_property):
    s = setup
    apply(s.stub, "base", 6)
    before = settled(s.stub, "base", 6)
    member = victim(s, role)
    watch, done = Watch(), threading.Event()
    thread = watched(s, done, watch, churn=True)
    time.sleep(1)
    member.kill()
    killed_at = len(watch.latencies)
    time.sleep(4)  # several elections' worth
    # And 10 rounds since the kill however slow the machine: in the emulated VM (make test-v2) a
    # round took 0.3-2.3 s, and 4 s held only 4-7 of them.
    wait_for(lambda: len(watch.latencies) >= killed_at + 10, 60, "10 rounds since the kill")
    done.set()
    thread.join()
    record_property("longest_call_s", round(max(watch.latencies), 2))
    assert not watch.failures
    assert watch.node_states == {"NODE_STATE_READY"}
    assert placement(s.stub, "base") == before  # nothing moved
    assert not lost_events(s)
    apply(s.stub, "after", 3)  # and the schedulers still work on two members
    settled(s.stub, "after", 3)
    assert all(sched.proc.poll() is None for sched in s.schedulers)


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_an_etcd_member_killed_during_a_drain_fails_nothing(setup, role, record_property):
    s = setup
    apply(s.stub, "base", 6)
    before = settled(s.stub, "base", 6)
    member = victim(s, role)
    watch, done = Watch(), threading.Event()
    thread = watched(s, done, watch, churn=False)
    result: list[subprocess.CompletedProcess[str]] = []
    draining = threading.Thread(target=lambda: result.append(orch(s.schedulers[0].address, "drain", "n0")))
    draining.start()
    time.sleep(0.3)  # the drain is under way
    member.kill()
    draining.join(timeout=60)
    time.sleep(1)
    done.set()
    thread.join()
    record_property("longest_call_s", round(max(watch.latencies), 2))
    [r] = result
    assert r.returncode == 0 and "node/n0 drained" in r.stdout, r.stderr
    assert not watch.failures
    assert watch.node_states == {"NODE_STATE_READY"}
    after = settled(s.stub, "base", 6)
    assert "n0" not in after.values()
    kept = {name: node for name, node in before.items() if node != "n0"}
    assert {name: after[name] for name in kept} == kept  # only the drained node's instances moved
    assert not lost_events(s)


def test_a_member_that_hangs_moves_the_watch_too(setup):
    """A member cut off by the network (here: SIGSTOPped, so its TCP connections stay up and
    say nothing) never ends the streams on it. The lease keep-alives going unanswered move
    the keep-alive stream, and must move the cache's watch with it: otherwise the scheduler
    places instances that its agents never hear of (their desired sets come from the cache)."""
    s = setup
    apply(s.stub, "base", 3)
    settled(s.stub, "base", 3)
    member = victim(s, "follower")
    assert member.proc is not None
    os.kill(member.proc.pid, signal.SIGSTOP)
    try:
        apply(s.stub, "later", 3)
        settled(s.stub, "later", 3)  # the agents got desired sets from an up-to-date cache
    finally:
        os.kill(member.proc.pid, signal.SIGCONT)
