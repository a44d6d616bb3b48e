"""The store on a real 3-member etcd: when the member it talks to dies, its calls, its watch and
its lease keep-alive stream move to another member (RECIPES §1's traps: the client retries
nothing, blacklists healthy members, and streams stay on their member)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from orch.v1 import types_pb2 as pb
from scheduler.store import Put, Store
from tests.fixtures.etcd import EtcdCluster, start_etcd_cluster
from tests.fixtures.processes import wait_for


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    c = start_etcd_cluster(3)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def store(cluster: EtcdCluster) -> Iterator[Store]:
    s = Store(cluster.endpoints, prefix="/f/")
    yield s
    s.close()


def member_in_use(cluster: EtcdCluster, store: Store) -> int:
    return cluster.endpoints.index(store.endpoint)


def put_app(store: Store, name: str, generation: int = 1) -> None:
    store.commit([Put(store.keys.app(name), pb.App(generation=generation), None)])


@pytest.mark.parametrize("role", ["follower", "leader"])
def test_calls_move_on_when_the_member_in_use_dies(cluster: EtcdCluster, store: Store, role: str) -> None:
    put_app(store, "before")
    victim = member_in_use(cluster, store)
    cluster.make_leader(victim if role == "leader" else (victim + 1) % 3)
    cluster.kill(victim)
    # Not one call fails: each is retried on another member (after a leader's death, once
    # the others elected a new one).
    put_app(store, "after")
    assert store.get(pb.App, store.keys.app("before")) is not None
    assert {"before", "after"} <= set(store.snapshot().apps)
    assert member_in_use(cluster, store) != victim


def test_the_watch_moves_to_a_live_member(cluster: EtcdCluster, store: Store) -> None:
    seen: list[str] = []
    broke = threading.Event()
    rev = store.snapshot().revision
    cancel = store.watch(rev + 1, lambda events, _rev: seen.extend(e.key for e in events), lambda _e: broke.set())
    put_app(store, "w1")
    wait_for(lambda: "apps/w1" in seen, 5, "the first event")
    victim = member_in_use(cluster, store)
    cluster.make_leader((victim + 1) % 3)  # a leader's death aborts watches too, while calls time out
    cluster.kill(victim)
    assert broke.wait(5), "the watch on the dead member was not reported broken"
    cancel()
    cancel = store.watch(rev + 1, lambda events, _rev: seen.extend(e.key for e in events), lambda _e: None)
    put_app(store, "w2")
    wait_for(lambda: "apps/w2" in seen, 5, "events from the new member")
    cancel()


def test_a_watch_on_a_member_that_hangs_is_moved_when_calls_fail_over(cluster: EtcdCluster, store: Store) -> None:
    # A member cut off (here SIGSTOPped) never ends its streams; a call that times out there
    # marks it failed, and the watch on it is reported broken so its owner re-creates it.
    broke = threading.Event()
    store.watch(store.snapshot().revision + 1, lambda _events, _rev: None, lambda _e: broke.set())
    victim = member_in_use(cluster, store)
    cluster.pause(victim)
    try:
        put_app(store, "moved")  # times out on the stopped member, then succeeds on another
        assert member_in_use(cluster, store) != victim
        assert broke.wait(1), "the watch on the hung member was not reported broken"
    finally:
        cluster.resume(victim)


def test_the_keep_alive_stream_moves_to_a_live_member(cluster: EtcdCluster, store: Store) -> None:
    lease, _ = store.grant_lease(5)
    ttls: list[int] = []
    broke = threading.Event()
    stream = store.keep_alive_stream(lambda _id, ttl: ttls.append(ttl), lambda _e: broke.set())
    stream.send(lease)
    wait_for(lambda: ttls, 5, "a keep-alive answer")
    victim = member_in_use(cluster, store)
    cluster.make_leader((victim + 1) % 3)
    cluster.kill(victim)
    assert broke.wait(5)
    stream.close()
    ttls.clear()
    stream = store.keep_alive_stream(lambda _id, ttl: ttls.append(ttl), lambda _e: None)
    stream.send(lease)
    wait_for(lambda: ttls, 10, "a keep-alive answer from another member")
    assert ttls[-1] > 0
    stream.close()
