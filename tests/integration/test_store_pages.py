"""Reads in pages at one revision, byte-bounded transactions, compaction and capped events,
against a real etcd."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from orch.v1 import types_pb2 as pb
from scheduler.errors import StoreUnavailable
from scheduler.events import PER_APP, PER_OBJECT, EventLog
from scheduler.store import Put, Store
from scheduler.timeutil import ts

_prefixes = itertools.count()


@pytest.fixture
def store(etcd) -> Iterator[Store]:
    s = Store([etcd.endpoint], prefix=f"/pages{next(_prefixes)}/", page=3)  # a page of 3: every read spans pages
    yield s
    s.close()


def instance(app: str, i: int, node: str = "n1") -> pb.Instance:
    return pb.Instance(name=f"{app}-{i}", app=app, node=node)


def fill(store: Store, apps: int = 2, per_app: int = 7, nodes: int = 4) -> None:
    k = store.keys
    writes = [Put(k.app(f"a{a}"), pb.App(spec=pb.AppSpec(name=f"a{a}")), None) for a in range(apps)]
    writes += [
        Put(k.instance(f"a{a}", f"a{a}-{i}"), instance(f"a{a}", i), None) for a in range(apps) for i in range(per_app)
    ]
    writes += [Put(k.node(f"n{n}"), pb.Node(name=f"n{n}"), None) for n in range(nodes)]
    store.commit(writes)


def test_a_snapshot_in_pages_has_every_key_of_every_kind(store: Store) -> None:
    fill(store)
    lease, _ = store.grant_lease(60)
    store.commit([Put(store.keys.node_lease("n1"), pb.Node(name="n1"), None, lease)])
    EventLog(store).record([pb.Event(kind="App", object="a0", reason="Test")])  # events are not in a snapshot

    snap = store.snapshot()
    assert sorted(snap.apps) == ["a0", "a1"]
    assert len(snap.instances) == 14
    assert sorted(snap.nodes) == ["n0", "n1", "n2", "n3"]
    assert snap.live_nodes == frozenset({"n1"})


def test_every_page_is_read_at_the_first_pages_revision(store: Store) -> None:
    fill(store, apps=1, per_app=9)
    pages = store._pages(store.keys.instances())
    first = next(pages)
    assert len(first.kvs) == 3 and first.more
    # Written after the first page was read: a later page must not show it, nor the new value.
    store.commit([Put(store.keys.instance("a0", "a0-8"), instance("a0", 8, node="moved"), None)])
    store.commit([Put(store.keys.instance("a0", "a0-99"), instance("a0", 99), None)])
    rest = [kv for page in pages for kv in page.kvs]
    names = [kv.key.decode().rsplit("/", 1)[1] for kv in [*first.kvs, *rest]]
    assert names == sorted(f"a0-{i}" for i in range(9))
    last = pb.Instance.FromString(rest[-1].value)
    assert last.name == "a0-8" and last.node == "n1"


def test_listing_one_app_reads_only_its_keys(store: Store) -> None:
    fill(store)
    store.commit([Put(store.keys.instance("a00", "a00-0"), instance("a00", 0), None)])  # a0 is its prefix
    found = store.list_prefix(pb.Instance, store.keys.instances("a0"))
    assert sorted(v.value.name for v in found) == [f"a0-{i}" for i in range(7)]
    assert len(store.list_prefix(pb.Instance, store.keys.instances())) == 15


def test_writes_over_a_mebibyte_are_split_into_transactions_etcd_accepts(store: Store) -> None:
    # 40 apps of 100 KB: 4 MB, far over etcd's 1.5 MiB request limit in one transaction.
    big = "x" * 100_000
    writes = [
        Put(store.keys.app(f"big{i}"), pb.App(spec=pb.AppSpec(name=f"big{i}", labels={"pad": big})), 0)
        for i in range(40)
    ]
    store.commit(writes)
    assert len(store.snapshot().apps) == 40


def test_last_reads_the_newest_events_only(store: Store) -> None:
    log = EventLog(store)
    log.record([pb.Event(time=ts(1000 + i), kind="App", object=f"x{i}", reason="Test") for i in range(10)])
    assert [e.object for e in log.list(limit=4)] == ["x6", "x7", "x8", "x9"]
    assert len(log.list()) == 10


def test_one_objects_events_are_read_from_its_own_range(store: Store) -> None:
    log = EventLog(store)
    log.record([pb.Event(time=ts(1000 + i), kind="App", object=f"x{i % 5}", reason=f"R{i}") for i in range(40)])
    about_x3 = [e.reason for e in log.list(limit=3, of="x3")]
    assert about_x3 == ["R28", "R33", "R38"]  # the newest three of x3's eight, oldest first
    assert len(log.list(limit=100, of="x3")) == 8  # fewer than asked: all
    assert log.list(limit=2, of="nobody") == []
    # The timeline is left alone: a read of one object's events costs its own range, not the hour's.
    store._client.delete_prefix(store.keys.event(""))
    assert len(log.list(limit=100, of="x3")) == 8 and log.list() == []


def test_an_apps_events_with_its_instances_are_the_newest_of_all_of_them(store: Store) -> None:
    log = EventLog(store)
    names = ["web", "web-a1b2c", "web-b2c3d", "web-api", "web-api-c3d4e", "api-d4e5f"]
    kinds = ["App", "Instance", "Instance", "App", "Instance", "Instance"]
    apps = ["web", "web", "web", "web-api", "web-api", "api"]  # as the scheduler makes them (reconcile.event)
    log.record(
        [
            pb.Event(time=ts(1000 + i), kind=kinds[i % 6], object=names[i % 6], reason=f"R{i}", app=apps[i % 6])
            for i in range(36)
        ]
    )
    mine = log.list(limit=8, of="web", with_instances=True)
    assert [e.reason for e in mine] == [f"R{i}" for i in range(36) if i % 6 < 3][-8:]  # not web-api's
    assert {e.object for e in log.list(of="web-api", with_instances=True)} == {"web-api", "web-api-c3d4e"}
    assert [e.object for e in log.list(of="web")] == ["web"] * 6
    # One range read, at its end: the timeline and the objects' own ranges are not looked at.
    store._client.delete_prefix(store.keys.event(""))
    store._client.delete_prefix(store.keys.events_of("web-a1b2c"))
    assert log.list(limit=8, of="web", with_instances=True) == mine


def test_events_are_capped_per_object(store: Store) -> None:
    log = EventLog(store)
    n = PER_OBJECT + 15
    for i in range(n):
        log.record([pb.Event(time=ts(1000 + i), kind="Instance", object="crashy", reason=f"R{i}")])
    log.record([pb.Event(time=ts(5000), kind="Instance", object="calm", reason="Once")])
    events = log.list()
    crashy = [e.reason for e in events if e.object == "crashy"]
    assert crashy == [f"R{i}" for i in range(15, n)]  # the oldest went, the newest stay
    assert [e.reason for e in events if e.object == "calm"] == ["Once"]
    assert [e.reason for e in log.list(of="crashy")] == crashy  # its own range is capped alike
    for i in range(PER_APP + 10):  # an app's range holds its instances' too, capped on its own
        log.record([pb.Event(time=ts(6000 + i), kind="Instance", object=f"busy-{i:05d}", reason=f"B{i}", app="busy")])
    busy = [e.reason for e in log.list(of="busy", with_instances=True)]
    assert busy == [f"B{i}" for i in range(10, PER_APP + 10)]
    # More than a cap's worth about one object in one batch: the oldest are never written (a put
    # and a delete of one key in one transaction would be refused).
    log.record(
        [pb.Event(time=ts(9000 + i), kind="Node", object="flappy", reason=f"F{i}") for i in range(PER_OBJECT + 5)]
    )
    assert [e.reason for e in log.list(of="flappy")] == [f"F{i}" for i in range(5, PER_OBJECT + 5)]


def test_compaction_drops_history_before_the_revision(store: Store, etcd) -> None:
    key = store.keys.app("hist")
    first = store.commit([Put(key, pb.App(generation=1), 0)])
    second = store.commit([Put(key, pb.App(generation=2), None)])
    store.compact(second)
    store.compact(first)  # behind what is compacted already: nothing to do, no error
    with pytest.raises(StoreUnavailable):
        next(store._pages(key, revision=first))  # that history is gone
    assert store.get(pb.App, key).value.generation == 2  # type: ignore[union-attr]


def test_events_of_one_instant_each_get_a_key_of_their_own(store: Store) -> None:
    """A pass tells hundreds of events with one time; with a 3-byte random suffix two of 300
    collided now and then, and one event overwrote the other (test_store's chunk test)."""
    log = EventLog(store)
    many = [pb.Event(time=ts(7000), kind="Instance", object=f"many-{i:05d}", reason="Same") for i in range(20_000)]
    timeline = [w.key for w in log.writes(many) if w.key.startswith(store.keys.event(""))]
    assert len(timeline) == len(set(timeline)) == 20_000
