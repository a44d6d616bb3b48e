"""The dashboard reads the cluster from the scheduler's cache (a consistent read on its loop),
not from etcd, and keeps the hydrated copies of records that did not change between refreshes
(scheduler/dashboard.py cached_reader)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from scheduler.dashboard import cached_reader
from scheduler.snapshot import ClusterSnapshot
from tests.factories import make_app, make_instance, make_node, make_snapshot, make_spec


class FakeCache:
    """ClusterCache.current: the records as stored, or None when the watch lags."""

    def __init__(self, snap: ClusterSnapshot | None) -> None:
        self.snap = snap
        self.reads = 0

    async def current(self) -> ClusterSnapshot | None:
        self.reads += 1
        return self.snap


class EtcdStore:
    def __init__(self) -> None:
        self.reads = 0

    def snapshot(self) -> ClusterSnapshot:
        self.reads += 1
        return make_snapshot()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """The scheduler's loop, running in a thread of its own as it does beside the dashboard's."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def test_the_dashboard_reads_the_cache_and_reuses_the_copies_of_unchanged_records(loop) -> None:
    app = make_app(make_spec(replicas=2))
    records = make_snapshot([app], [make_node("n1")], [make_instance(app, f"web-{i}", "n1") for i in range(2)])
    cache, store = FakeCache(records), EtcdStore()
    read = cached_reader(store, cache, loop)  # type: ignore[arg-type]
    first, second = read(), read()
    assert (cache.reads, store.reads) == (2, 0)  # not etcd
    assert sorted(first.instances) == ["web-0", "web-1"]
    assert all(first.instances[n] is second.instances[n] for n in first.instances)  # not copied again
    cache.snap = None  # the watch lags: etcd, as the API's reads do
    read()
    assert store.reads == 1


def test_without_a_cache_the_dashboard_reads_etcd(loop) -> None:
    store = EtcdStore()
    read = cached_reader(store, None, loop)  # type: ignore[arg-type]
    assert read().instances == {} and store.reads == 1
