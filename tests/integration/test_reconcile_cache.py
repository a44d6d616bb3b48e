"""Reconcile passes over the watch-fed cache, against a real etcd: the cache holds what a
snapshot read from etcd holds, and a pass uses it only once it has seen etcd's current
revision. The watch's lag and hang are made by holding its batches back (a fault a
loopback etcd does not make on its own)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from orch.v1 import types_pb2 as pb
from scheduler.cache import ClusterCache
from scheduler.events import EventLog
from scheduler.leader import LeaderElection
from scheduler.reconciler_loop import Reconciler
from scheduler.store import Delete, Fence, Put, Store, WatchEvent
from tests.factories import make_app, make_node, make_spec


@pytest.fixture
def store(etcd):
    s = Store([etcd.endpoint], prefix="/c/")
    yield s
    s.close()


def lead(store: Store) -> Fence:
    election = LeaderElection(store, "s1", ttl=60)  # outlives the test: nobody renews it
    assert election._campaign() and election._fence is not None
    return election._fence


def add_node(store: Store, name: str, scheduler: str = "s1") -> int:
    """A node and its live lease, kept by `scheduler`; returns the lease's id."""
    lease, _ = store.grant_lease(60)
    store.commit(
        [
            Put(store.keys.node(name), make_node(name), None),
            Put(store.keys.node_lease(name), pb.Node(name=name, scheduler=scheduler), None, lease),
        ]
    )
    return lease


def add_app(store: Store, replicas: int, generation: int = 1) -> None:
    spec = make_spec("web", replicas=replicas, command=["sleep", "1000"])
    template = pb.AppGeneration(template=spec)
    store.commit(
        [
            Put(store.keys.app("web"), make_app(spec, generation), None),
            Put(store.keys.generation("web", generation), template, None),
        ]
    )


class Valve:
    """Between the watch and the cache: open, batches pass at once; `delay` holds each back
    that long (a lagging watch); closed, they are dropped (a watch that hangs)."""

    def __init__(self, cache: ClusterCache) -> None:
        self.delay = 0.0
        self.closed = False
        self._apply = cache._apply
        cache._from_thread = self._from_thread  # type: ignore[method-assign]
        self._cache = cache

    def _from_thread(self, events, revision) -> None:
        if self.closed:
            return
        loop = self._cache._loop
        assert loop is not None
        loop.call_soon_threadsafe(loop.call_later, self.delay, self._apply, events, revision)


@contextlib.asynccontextmanager
async def running_cache(store: Store) -> AsyncIterator[tuple[ClusterCache, Valve]]:
    cache = ClusterCache(store)
    valve = Valve(cache)
    task = asyncio.create_task(cache.run())
    try:
        while not cache.seen:
            await asyncio.sleep(0.01)
        yield cache, valve
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if cache._cancel is not None:
            cache._cancel()


@contextlib.asynccontextmanager
async def leading(reconciler: Reconciler, fence: Fence) -> AsyncIterator[None]:
    """The reconciler's loop, leading with `fence`, for the block."""
    task = asyncio.create_task(reconciler.run(lambda: fence))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def comparable(snap) -> dict:
    return {
        "apps": snap.apps,
        "instances": snap.instances,
        "nodes": snap.nodes,
        "live_nodes": snap.live_nodes,
        "lease_revisions": snap.lease_revisions,
        "lease_holders": snap.lease_holders,
        "schedulers": snap.schedulers,
        "generations": snap.generations,
    }


def test_the_cache_holds_what_a_snapshot_of_etcd_holds(store):
    async def main() -> None:
        for n in ("n1", "n2", "n3"):
            add_node(store, n)
        add_app(store, replicas=4)
        fence = lead(store)
        Reconciler(store, EventLog(store)).run_once(fence)  # instances, placed
        async with running_cache(store) as (cache, _):
            # Changes the watch brings: a lease gone, a holder changed, a presence key, an app
            # and template changed, an instance gone, a node record rewritten.
            store.commit([Delete(store.keys.node_lease("n3"), None)])
            add_node(store, "n2", scheduler="s2")
            lease, _ = store.grant_lease(60)
            store.commit([Put(store.keys.scheduler_presence("s2"), pb.Node(), None, lease)])
            add_app(store, replicas=3, generation=2)
            victim = sorted(cache.instances)[0]
            app = cache.instances[victim].value.app
            store.commit([Delete(store.keys.instance(app, victim), None)])
            assert await cache.reached(store.revision(), 5)

            etcd_snap = store.snapshot(hydrate=False)
            cached = cache.snapshot()
            assert comparable(cached) == comparable(etcd_snap)
            assert cached.revision == etcd_snap.revision
            assert cached.lease_holders["n2"] == "s2" and "n3" not in cached.live_nodes
            assert "s2" in cached.schedulers and cached.generations["web"].keys() == {1, 2}

            # Hydrated, it is what a hydrated snapshot holds; unchanged records are reused.
            memo: dict = {}
            hydrated = cached.hydrated(memo)
            assert hydrated.instances == store.snapshot().instances
            assert all(v.value.spec.command == ["sleep", "1000"] for v in hydrated.instances.values())
            again = cache.snapshot().hydrated(memo)
            assert all(again.instances[n] is hydrated.instances[n] for n in hydrated.instances)
            add_app(store, replicas=5, generation=2)  # the app changed: its instances are hydrated anew
            assert await cache.reached(store.revision(), 5)
            third = cache.snapshot().hydrated(memo)
            assert all(third.instances[n] is not hydrated.instances[n] for n in hydrated.instances)
            assert all(v.value.spec.replicas == 5 for v in third.instances.values())

    asyncio.run(main())


def web_instances(store: Store) -> int:
    return sum(v.value.app == "web" for v in store.snapshot(hydrate=False).instances.values())


async def settle(store: Store, reconciler: Reconciler, want: int, seconds: float = 5.0) -> int:
    """The number of web's instances once passes stopped changing it (or time ran out)."""
    deadline = asyncio.get_running_loop().time() + seconds
    last, since = -1, 0.0
    while asyncio.get_running_loop().time() < deadline:
        reconciler.trigger.set()
        await asyncio.sleep(0.1)
        n = await asyncio.to_thread(web_instances, store)
        if n != last:
            last, since = n, asyncio.get_running_loop().time()
        elif n == want and asyncio.get_running_loop().time() - since > 1.5:
            break
    return last


def test_passes_over_a_lagging_cache_create_each_replica_once(store):
    """Without the revision check, the pass after the one that created the replicas reads a
    cache that has not seen them yet, and creates them again."""

    async def main() -> None:
        for n in ("n1", "n2", "n3"):
            add_node(store, n)
        fence = lead(store)
        async with running_cache(store) as (cache, valve):
            valve.delay = 0.3  # each watch batch reaches the cache 0.3 s late
            reconciler = Reconciler(store, EventLog(store), cache=cache)
            async with leading(reconciler, fence):
                await asyncio.sleep(0.5)  # the first pass reads etcd itself
                add_app(store, replicas=20)
                assert await settle(store, reconciler, 20) == 20
                store.update(pb.App, store.keys.app("web"), lambda a: setattr(a.spec, "replicas", 40))
                assert await settle(store, reconciler, 40) == 40

    asyncio.run(main())


def test_a_watch_that_hangs_does_not_hide_a_lapsed_lease(store):
    """The cache still holds n2's lease; etcd does not. Without the revision check the pass
    trusts the cache and n2's instances are never replaced."""

    async def main() -> None:
        for n in ("n1", "n2", "n3"):
            add_node(store, n)
        add_app(store, replicas=3)
        fence = lead(store)
        async with running_cache(store) as (cache, valve):
            reconciler = Reconciler(store, EventLog(store), cache=cache, lease_ttl=1, identity="s1")
            async with leading(reconciler, fence):
                assert await settle(store, reconciler, 3) == 3
                on_n2 = {v.value.name for v in store.snapshot().instances.values() if v.value.node == "n2"}
                assert on_n2
                await asyncio.sleep(reconciler.grace + 0.5)  # past the grace after taking the lead
                valve.closed = True  # the watch hangs: nothing more reaches the cache
                store.commit([Delete(store.keys.node_lease("n2"), None)])

                def lost() -> set[str]:
                    snap = store.snapshot()
                    return {n for n in on_n2 if snap.instances[n].value.status.state == pb.INSTANCE_STATE_LOST}

                deadline = asyncio.get_running_loop().time() + 5
                while asyncio.get_running_loop().time() < deadline and lost() != on_n2:
                    reconciler.trigger.set()
                    await asyncio.sleep(0.2)
                assert lost() == on_n2

    asyncio.run(main())


def test_api_reads_from_a_lagging_cache_see_every_write_made_before_them(store):
    """`orch get app` right after `orch scale` shows the new replicas, though the watch brings
    changes 0.3 s late: the API reads the cache only once it holds etcd's current revision."""
    from scheduler.api import OrchService

    async def main() -> None:
        add_node(store, "n1")
        add_app(store, replicas=3)
        async with running_cache(store) as (cache, valve):
            service = OrchService(store, EventLog(store), cache=cache)
            valve.delay = 0.3
            for replicas in (4, 5, 6):
                store.update(pb.App, store.keys.app("web"), lambda a, n=replicas: setattr(a.spec, "replicas", n))
                snap = await service._read(None, "web")  # type: ignore[arg-type]
                assert snap.apps["web"].value.spec.replicas == replicas

    asyncio.run(main())


def test_a_write_seen_while_reading_the_revision_is_not_etcd_going_back_in_history(store):
    """A write lands and its watch event reaches the cache while the quorum read of the
    revision is in flight, so the cache has seen more than that answer says. Comparing the
    answer with `seen` after the read took that for a restored etcd: a full reload, on every
    pass that raced a write (one pass in each 5,000-node bench run)."""

    async def main() -> None:
        add_node(store, "n1")
        async with running_cache(store) as (cache, _):
            read_revision = store.revision

            def revision_then_a_write() -> int:
                answer = read_revision()
                store.commit([Put(store.keys.node("n2"), make_node("n2"), None)])
                deadline = time.monotonic() + 5
                while cache.seen <= answer and time.monotonic() < deadline:
                    time.sleep(0.01)  # until the watch brought the write past the answer
                assert cache.seen > answer
                return answer

            cache._store.revision = revision_then_a_write  # type: ignore[method-assign]
            snap = await cache.current()
            assert snap is not None and not cache._broken.is_set()

    asyncio.run(main())


def test_a_rollout_status_write_hydrates_no_instance_again(store):
    """Every pass of a rollout writes the app's status (how many are ready) and so its record's
    revision: the instances' hydrated copies are kept all the same, as nothing hydration reads
    changed. A scale changes the spec: then they are made again."""

    async def main() -> None:
        for n in ("n1", "n2"):
            add_node(store, n)
        add_app(store, replicas=4)
        Reconciler(store, EventLog(store)).run_once(lead(store))
        async with running_cache(store) as (cache, _):
            memo: dict = {}
            first = cache.snapshot().hydrated(memo)
            store.update(pb.App, store.keys.app("web"), lambda a: setattr(a.rollout, "ready", 3))
            assert await cache.reached(store.revision(), 5)
            again = cache.snapshot().hydrated(memo)
            assert again.apps["web"].value.rollout.ready == 3
            assert all(again.instances[n] is first.instances[n] for n in first.instances)
            store.update(pb.App, store.keys.app("web"), lambda a: setattr(a.spec, "replicas", 5))
            assert await cache.reached(store.revision(), 5)
            third = cache.snapshot().hydrated(memo)
            assert all(third.instances[n] is not first.instances[n] for n in first.instances)
            assert all(v.value.spec.replicas == 5 for v in third.instances.values())

    asyncio.run(main())


async def break_watches(store: Store) -> None:
    """What Store.abandon does to a member that stopped answering: its watches end. Waits for the
    cache's watch first (running_cache returns once the cache has loaded, maybe before)."""
    deadline = time.monotonic() + 5
    while not store._watches and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    watches = list(store._watches.values())
    assert watches, "the cache has no watch to break"
    for _, fail in watches:
        fail(ConnectionError("etcd member stopped answering"))


def counting_reads(store: Store) -> list:
    """The whole reads (snapshots) the cache makes from now on."""
    reads: list = []
    snapshot = store.snapshot

    def counted(*args):
        reads.append(args)
        return snapshot(*args)

    store.snapshot = counted  # type: ignore[method-assign]
    return reads


def test_a_broken_watch_takes_up_where_it_was_without_reading_everything_again(store):
    """A watch on a member left for another (or etcd away a while) resumes from the last
    revision the cache saw: etcd kept every change since. A whole read instead cost seconds at
    50,000 instances, and on a starved machine it delayed the keep-alives that broke the watch."""

    async def main() -> None:
        add_node(store, "n1")
        async with running_cache(store) as (cache, _):
            reads = counting_reads(store)
            for n in ("n2", "n3"):
                await break_watches(store)
                store.commit([Put(store.keys.node(n), make_node(n), None)])  # while nobody watches
                assert await cache.reached(store.revision(), 5)
                assert n in cache.nodes
            assert reads == []
            assert cache.snapshot().nodes.keys() == store.snapshot(False).nodes.keys()

    asyncio.run(main())


def test_history_compacted_while_the_watch_was_broken_is_read_again_whole(store):
    """etcd no longer keeps the revisions after the cache's last one: the cache reads
    everything again, then follows from there."""

    async def main() -> None:
        add_node(store, "n1")
        async with running_cache(store) as (cache, _):
            reads = counting_reads(store)
            watch = store.watch
            resume = asyncio.Event()
            loop = asyncio.get_running_loop()

            def held_watch(*args):  # the cache's next watch waits until the history is gone
                asyncio.run_coroutine_threadsafe(resume.wait(), loop).result(10)
                return watch(*args)

            await break_watches(store)
            store.watch = held_watch
            store.commit([Put(store.keys.node("n2"), make_node("n2"), None)])
            store.commit([Delete(store.keys.node("n1"), None)])
            store.compact(store.revision())
            resume.set()
            assert await cache.reached(store.revision(), 5)
            assert len(reads) == 1
            assert set(cache.nodes) == {"n2"}
            store.commit([Put(store.keys.node("n3"), make_node("n3"), None)])  # followed again
            assert await cache.reached(store.revision(), 5)
            assert set(cache.nodes) == {"n2", "n3"}

    asyncio.run(main())


def test_etcd_behind_the_cache_when_its_watch_broke_is_read_again_whole(store):
    """etcd restored from a backup while the watch was broken: a watch from the cache's revision
    would wait for etcd to get there and build on a history that is gone. The cache asks etcd's
    revision before it resumes. (A restore is made by answering an older revision once.)"""

    async def main() -> None:
        add_node(store, "n1")
        async with running_cache(store) as (cache, _):
            reads = counting_reads(store)
            revision = store.revision
            answers = [cache.seen - 1]
            store.revision = lambda: answers.pop() if answers else revision()
            await break_watches(store)
            deadline = time.monotonic() + 5
            while not reads and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert len(reads) == 1 and answers == []

    asyncio.run(main())


def test_a_late_batch_of_a_watch_given_up_changes_nothing(store):
    """A batch of a watch that was given up can come after its successor's: what the cache has
    seen is applied already (here: a node's deletion that a later write undid)."""

    async def main() -> None:
        add_node(store, "n1")
        async with running_cache(store) as (cache, _):
            store.commit([Delete(store.keys.node("n1"), None)])
            gone = store.revision()
            store.commit([Put(store.keys.node("n1"), make_node("n1"), None)])
            assert await cache.reached(store.revision(), 5) and "n1" in cache.nodes
            cache._apply([WatchEvent(key="nodes/n1", value=None, mod_revision=gone)], gone)
            assert "n1" in cache.nodes

    asyncio.run(main())
