"""The store against a real etcd, with etcdctl as an independent oracle."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from orch.v1 import types_pb2 as pb
from scheduler.errors import Conflict, StoreUnavailable
from scheduler.store import Delete, Put, Store


@pytest.fixture
def store(etcd):
    s = Store([etcd.endpoint], prefix="/t/")
    yield s
    s.close()


def etcdctl_keys(etcd, prefix):
    out = subprocess.run(
        ["etcdctl", "--endpoints", etcd.url, "get", "--prefix", prefix, "-w", "json"],
        capture_output=True,
        text=True,
        check=True,
        env={"ETCDCTL_API": "3"},
    )
    import base64

    return sorted(base64.b64decode(kv["key"]).decode() for kv in json.loads(out.stdout).get("kvs", []))


def test_commit_is_revision_checked(store, etcd):
    key = store.keys.app("web")
    store.commit([Put(key, pb.App(generation=1), 0)])
    with pytest.raises(Conflict):
        store.commit([Put(key, pb.App(generation=2), 0)])  # must not exist: it does
    current = store.get(pb.App, key)
    store.commit([Put(key, pb.App(generation=2), current.mod_revision)])
    with pytest.raises(Conflict):
        store.commit([Put(key, pb.App(generation=3), current.mod_revision)])  # stale read
    assert store.get(pb.App, key).value.generation == 2
    assert etcdctl_keys(etcd, "/t/") == ["/t/apps/web"]


def test_failed_chunk_writes_nothing(store):
    a, b = store.keys.app("a"), store.keys.app("b")
    store.commit([Put(a, pb.App(generation=1), 0)])
    with pytest.raises(Conflict):
        store.commit([Put(b, pb.App(generation=1), 0), Delete(a, 999999)])
    assert store.get(pb.App, b) is None and store.get(pb.App, a) is not None


def test_large_commits_are_chunked_under_the_txn_limit(store):
    writes = [Put(store.keys.instance("x", f"x-{i}"), pb.Instance(name=f"x-{i}", app="x"), 0) for i in range(300)]
    store.commit(writes)
    assert len(store.snapshot().instances) == 300


def test_snapshot_sees_node_leases_and_their_expiry(store):
    lease, granted = store.grant_lease(1)
    assert granted == 1  # etcd started with --election-timeout 500 honours 1 s
    store.commit(
        [Put(store.keys.node("n1"), pb.Node(name="n1"), 0), Put(store.keys.node_lease("n1"), pb.Node(), None, lease)]
    )
    assert store.snapshot().live_nodes == {"n1"}
    deadline = time.monotonic() + 5
    while store.snapshot().live_nodes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.snapshot().live_nodes == frozenset()
    assert "n1" in store.snapshot().nodes  # the node record stays; only liveness went


def test_snapshot_names_each_leases_scheduler_and_the_schedulers_present(store):
    """What the leader's liveness needs (scheduler/presence.py): which scheduler keeps each node's
    lease, which schedulers are present, and when each lease key was last written."""
    node_lease, _ = store.grant_lease(5)
    presence, _ = store.grant_lease(5)
    revision = store.commit(
        [
            Put(store.keys.node("n1"), pb.Node(name="n1"), 0),
            Put(store.keys.node_lease("n1"), pb.Node(name="n1", scheduler="s2"), None, node_lease),
            Put(store.keys.scheduler_presence("s2"), pb.Node(name="s2"), None, presence),
        ]
    )
    snap = store.snapshot()
    assert snap.lease_holders == {"n1": "s2"} and snap.schedulers == {"s2"}
    assert snap.lease_revisions == {"n1": revision} and snap.live_nodes == {"n1"}
    store.revoke_lease(presence)
    assert store.snapshot().schedulers == frozenset()


def test_unreachable_etcd_is_a_clear_error(etcd):
    s = Store(["127.0.0.1:1"], timeout=0.5)
    with pytest.raises(StoreUnavailable, match="etcd unavailable during snapshot"):
        s.snapshot()
    s.close()


def test_commit_partial_applies_what_still_applies(store):
    keys = [store.keys.app(f"a{i}") for i in range(200)]
    store.commit([Put(k, pb.App(generation=1), 0) for k in keys])
    stale = store.get(pb.App, keys[5])
    store.commit([Put(keys[5], pb.App(generation=9), stale.mod_revision)])  # someone else wins keys[5]
    writes = [Put(k, pb.App(generation=2), store.get(pb.App, k).mod_revision) for k in keys]
    writes[5] = Put(keys[5], pb.App(generation=2), stale.mod_revision)
    _, refused = store.commit_partial(writes)
    assert [w.key for w in refused] == [keys[5]]
    assert store.get(pb.App, keys[5]).value.generation == 9
    assert {store.get(pb.App, k).value.generation for i, k in enumerate(keys) if i != 5} == {2}


def test_snapshot_names_the_etcd_cluster_its_revision_belongs_to(store, etcd):
    snap = store.snapshot()
    member = json.loads(
        subprocess.run(
            ["etcdctl", "--endpoints", etcd.url, "endpoint", "status", "-w", "json"],
            capture_output=True,
            text=True,
            check=True,
            env={"ETCDCTL_API": "3"},
        ).stdout
    )[0]
    assert snap.cluster_id == member["Status"]["header"]["cluster_id"] != 0


def test_a_node_may_reuse_only_its_own_lease(store):
    """A session that names another live lease (another node's, the leader's) gets a new one:
    keeping someone else's lease alive would keep a dead node Ready or a dead leader leading."""
    from orch.v1 import agent_pb2 as apb
    from scheduler.sessions import NodeRegistry

    registry = NodeRegistry(store, lease_ttl=5)
    lease_a, _, _ = registry.register(apb.Register(node="node-a"))
    leader_lease, _ = store.grant_lease(5)
    for stolen in (lease_a, leader_lease):
        assert registry.register(apb.Register(node="node-b", lease_id=stolen))[0] not in (lease_a, leader_lease)
    assert registry.register(apb.Register(node="node-a", lease_id=lease_a))[0] == lease_a  # its own: reused


def test_a_node_cannot_erase_another_nodes_status_report(store):
    """Reports are keyed by the reporting node too: node-b naming node-a's instance in the same
    flush window neither lands nor displaces node-a's report."""
    from types import SimpleNamespace

    from orch.v1 import agent_pb2 as apb
    from scheduler.status import StatusWriter

    key = store.keys.instance("web", "web-1")
    store.commit([Put(key, pb.Instance(name="web-1", app="web", node="node-a"), 0)])
    cache = SimpleNamespace(instances={"web-1": store.get(pb.Instance, key)})
    writer = StatusWriter(store, cache)  # type: ignore[arg-type]
    running = pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, pid=42)
    failed = pb.InstanceStatus(state=pb.INSTANCE_STATE_FAILED, reason="Forged")
    writer.report("node-a", [apb.InstanceReport(name="web-1", app="web", status=running)])
    writer.report("node-b", [apb.InstanceReport(name="web-1", app="web", status=failed)])
    batch, writer._pending = writer._pending, {}
    writer._flush(batch)
    assert store.get(pb.Instance, key).value.status == running


def test_a_restart_report_records_an_event_once(store):
    """The agent's report of a restart (its count up, lastState set) becomes one event on the
    instance, after the status is written; the next report of the same restart adds none."""
    from types import SimpleNamespace

    from orch.v1 import agent_pb2 as apb
    from scheduler.events import EventLog
    from scheduler.status import StatusWriter

    key = store.keys.instance("web", "web-1")
    store.commit([Put(key, pb.Instance(name="web-1", app="web", node="node-a"), 0)])
    cache = SimpleNamespace(instances={"web-1": store.get(pb.Instance, key)})
    events = EventLog(store)
    writer = StatusWriter(store, cache, events)  # type: ignore[arg-type]
    last = pb.Termination(reason="LivenessFailed", message="liveness probe failed 3 times in a row: tcp", exit_code=137)
    restarted = pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, restarts=1, last_termination=last)
    for status in (
        restarted,
        pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, restarts=1, last_termination=last, ready=True),
    ):
        writer.report("node-a", [apb.InstanceReport(name="web-1", app="web", status=status)])
        batch, writer._pending = writer._pending, {}
        writer._flush(batch)
        cache.instances["web-1"] = store.get(pb.Instance, key)
    (e,) = events.list()
    assert (e.object, e.reason, e.type) == ("web-1", "LivenessFailed", "Warning")
    assert e.message == "liveness probe failed 3 times in a row: tcp; restart 1"


def test_status_reports_land_in_parallel_chunks_and_a_stale_one_after_a_read(store):
    """300 reports (three transactions in flight together); the cache is behind for one
    instance (it was written meanwhile): that one is read again and written, the rest land."""
    from types import SimpleNamespace

    from orch.v1 import agent_pb2 as apb
    from scheduler.status import StatusWriter

    names = [f"web-{i:03d}" for i in range(300)]
    store.commit([Put(store.keys.instance("web", n), pb.Instance(name=n, app="web", node="node-a"), 0) for n in names])
    cache = SimpleNamespace(instances={n: store.get(pb.Instance, store.keys.instance("web", n)) for n in names})
    stale = store.keys.instance("web", "web-150")
    store.update(pb.Instance, stale, lambda i: setattr(i, "desired", pb.DESIRED_STATE_STOP))
    writer = StatusWriter(store, cache)  # type: ignore[arg-type]
    running = pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, pid=42)
    writer.report("node-a", [apb.InstanceReport(name=n, app="web", status=running) for n in names])
    batch, writer._pending = writer._pending, {}
    writer._flush(batch)
    states = {n: store.get(pb.Instance, store.keys.instance("web", n)).value for n in names}
    assert all(states[n].status == running for n in names if n != "web-150")
    # Being stopped: its Running report reads Terminating (merged() on the fresh record).
    assert states["web-150"].status.state == pb.INSTANCE_STATE_TERMINATING
    assert states["web-150"].desired == pb.DESIRED_STATE_STOP


def test_restart_events_of_chunks_that_landed_are_told_when_another_chunk_fails(store, monkeypatch):
    """etcd fails one of three chunks (injected: a real etcd does not fail one transaction of
    three on cue). The two that landed get their restart events at once, the third when the
    batch is tried again: each restart told once, none lost."""
    from types import SimpleNamespace

    from orch.v1 import agent_pb2 as apb
    from scheduler.errors import StoreUnavailable
    from scheduler.events import EventLog
    from scheduler.status import StatusWriter

    names = [f"web-{i:03d}" for i in range(300)]
    keys = {n: store.keys.instance("web", n) for n in names}
    store.commit([Put(keys[n], pb.Instance(name=n, app="web", node="node-a"), 0) for n in names])
    cache = SimpleNamespace(instances={n: store.get(pb.Instance, keys[n]) for n in names})
    events = EventLog(store)
    writer = StatusWriter(store, cache, events)  # type: ignore[arg-type]
    last = pb.Termination(reason="OOMKilled", exit_code=137)
    restarted = pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, restarts=1, last_termination=last)
    writer.report("node-a", [apb.InstanceReport(name=n, app="web", status=restarted) for n in names])

    real = store._try_chunk
    calls = []

    def second_fails(chunk, fence=None):
        if any(w.key in keys.values() for w in chunk):  # not the events' own writes
            calls.append(chunk)
        if any(w.key == keys["web-150"] for w in chunk):
            return StoreUnavailable("commit", "injected")
        return real(chunk, fence)

    monkeypatch.setattr(store, "_try_chunk", second_fails)
    batch, writer._pending = writer._pending, {}
    with pytest.raises(StoreUnavailable):
        writer._flush(batch)
    assert len(calls) == 3
    told = {e.object for e in events.list()}
    failed = {w.value.name for chunk in calls for w in chunk if any(x.key == keys["web-150"] for x in chunk)}
    assert told == set(names) - failed and "web-150" in failed

    monkeypatch.setattr(store, "_try_chunk", real)
    cache.instances = {n: store.get(pb.Instance, keys[n]) for n in names}  # what the watch brings
    writer._flush(batch)  # run() tries the batch again
    assert sorted(e.object for e in events.list()) == names  # each restart once
