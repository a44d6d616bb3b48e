"""Leader fencing against a real etcd: a reconcile pass whose leadership is
gone commits nothing, whoever holds the leader key now."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from orch.v1 import types_pb2 as pb
from scheduler.errors import NotLeader
from scheduler.events import EventLog
from scheduler.leader import LeaderElection
from scheduler.reconciler_loop import Reconciler
from scheduler.store import Delete, Fence, Put, Store
from tests.factories import make_app, make_node, make_spec


@pytest.fixture
def store(etcd):
    s = Store([etcd.endpoint], prefix="/f/")
    yield s
    s.close()


def etcdctl(etcd, *args: str) -> dict:
    out = subprocess.run(
        ["etcdctl", "--endpoints", etcd.url, "-w", "json", *args],
        capture_output=True,
        text=True,
        check=True,
        env={"ETCDCTL_API": "3"},
    )
    return json.loads(out.stdout)


def count(etcd, prefix: str) -> int:
    return len(etcdctl(etcd, "get", "--prefix", "--keys-only", prefix).get("kvs", []))


def instance_count(etcd) -> int:
    return count(etcd, "/f/instances/")


def cluster(store: Store, replicas: int) -> None:
    lease, _ = store.grant_lease(30)
    store.commit(
        [
            Put(store.keys.node("n1"), make_node("n1"), 0),
            Put(store.keys.node_lease("n1"), pb.Node(name="n1"), None, lease),
            Put(store.keys.app("web"), make_app(make_spec("web", replicas=replicas)), 0),
        ]
    )


def scale(store: Store, replicas: int) -> None:
    store.update(pb.App, store.keys.app("web"), lambda app: setattr(app.spec, "replicas", replicas))


def lead(store: Store, identity: str) -> Fence:
    election = LeaderElection(store, identity)
    assert election._campaign()
    assert election._fence is not None
    return election._fence


def test_the_fence_is_the_leader_keys_create_revision(store, etcd):
    fence = lead(store, "s1")
    kv = etcdctl(etcd, "get", "/f/leader")["kvs"][0]
    assert fence.create_revision == int(kv["create_revision"])


@pytest.mark.parametrize("taken", [False, True], ids=["leader-key-deleted", "another-leader"])
def test_a_pass_that_lost_leadership_commits_nothing(store, etcd, taken):
    cluster(store, replicas=2)
    fence = lead(store, "s1")
    reconciler = Reconciler(store, EventLog(store))
    assert reconciler.run_once(fence).placed == 2
    assert instance_count(etcd) == 2

    etcdctl(etcd, "del", "/f/leader")  # the lease ran out during a long pass, say
    if taken:
        assert lead(store, "s2").create_revision != fence.create_revision
    scale(store, 5)
    events_before = count(etcd, "/f/events/")
    with pytest.raises(NotLeader, match="s1"):
        reconciler.run_once(fence)
    assert instance_count(etcd) == 2
    assert count(etcd, "/f/events/") == events_before


def test_a_fenced_pass_still_lands_what_applies_and_chunks_under_the_txn_limit(store, etcd):
    cluster(store, replicas=300)  # more writes than one transaction takes, fence included
    fence = lead(store, "s1")
    reconciler = Reconciler(store, EventLog(store))
    result = reconciler.run_once(fence)
    assert (result.placed, result.refused) == (300, 0)
    assert instance_count(etcd) == 300


def test_the_election_notices_a_leader_key_it_no_longer_holds(store, etcd):
    election = LeaderElection(store, "s1")
    assert election._campaign()
    assert election._check() == ""
    etcdctl(etcd, "del", "/f/leader")
    lead(store, "s2")
    assert "leader key" in election._check()


def proposals(etcd) -> float:
    """etcd's committed raft proposals: every write, lease grant and lease revoke is one."""
    with urllib.request.urlopen(f"{etcd.url}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("etcd_server_proposals_committed_total "):
                return float(line.split()[1])
    raise AssertionError("etcd has no etcd_server_proposals_committed_total")


def test_a_follower_writes_nothing_to_etcd_while_another_leads(store, etcd):
    """A follower campaigns every third of the lease TTL; while the leader key is held, each
    campaign is one read (it was a lease grant, a lost put and a revoke: 3 proposals a second)."""
    lead(store, "s1")
    follower = LeaderElection(store, "s2")
    before = proposals(etcd)
    assert not any(follower._campaign() for _ in range(5))
    assert proposals(etcd) == before
    store.commit([Delete(store.keys.leader(), None)])  # the leader's key is gone: s2 takes over
    assert follower._campaign()
