"""Unit: the scheduler's endpoints feed sends each change once, and agents rebuild the whole view.

A ClusterCache is fed watch events by hand (apps, generations, instances going Running, ready,
away); the feed's whole view must always equal endpoints_of() recomputed from scratch, and
agents that catch up at random moments, applying whole views and updates to an EndpointsView,
must always hold exactly that view. Updates carry only what changed.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from node.endpoints_view import EndpointsView
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler import endpoints
from scheduler.cache import Changes, ClusterCache
from scheduler.endpoints import EndpointsFeed, endpoints_of
from scheduler.store import WatchEvent

CIDR = "10.96.0.0/16"


class World:
    """The cache, the feed, and a revision counter for the watch events."""

    def __init__(self) -> None:
        self.cache = ClusterCache(store=None)  # type: ignore[arg-type]
        self.feed = EndpointsFeed(self.cache, CIDR)  # no event loop: recomputed at each batch
        self.revision = 1

    def apply(self, *events: tuple[str, bytes | None]) -> None:
        self.revision += 1
        self.cache._apply([WatchEvent(k, v, self.revision) for k, v in events], self.revision)

    def app(self, name: str, generation: int = 1, port: int = 0, vip: str = "") -> tuple[str, bytes]:
        spec = pb.AppSpec(name=name, replicas=1, image="rootfs:/x")
        if port:
            spec.service.port = port
        return f"apps/{name}", pb.App(spec=spec, generation=generation, service_ip=vip).SerializeToString()

    def generation(self, app: str, n: int, probed: bool) -> tuple[str, bytes]:
        template = pb.AppSpec(image="rootfs:/x")
        if probed:
            template.readiness.tcp = 80
        return f"generations/{app}/{n}", pb.AppGeneration(template=template, generation=n).SerializeToString()

    def instance(self, app: str, name: str, generation: int = 1, ip: str = "", ready: bool = True) -> tuple[str, bytes]:
        inst = pb.Instance(name=name, app=app, app_generation=generation, node="n1", desired=pb.DESIRED_STATE_RUN)
        inst.status.state = pb.INSTANCE_STATE_RUNNING if ip else pb.INSTANCE_STATE_SCHEDULED
        inst.status.ip, inst.status.ready = ip, ready
        return f"instances/{app}/{name}", inst.SerializeToString()

    def recomputed(self) -> apb.Endpoints:
        apps = {n: v.value for n, v in self.cache.apps.items()}
        return endpoints_of(apps, (v.value for v in self.cache.instances.values()), CIDR, self.cache.template_of)


class Agent:
    def __init__(self) -> None:
        self.view = EndpointsView()
        self.sent = -1  # the feed's version last received, as a session keeps it
        self.received: list[apb.Endpoints] = []

    def catch_up(self, feed: EndpointsFeed) -> apb.Endpoints:
        if feed.version != self.sent:
            msg = apb.Endpoints.FromString(feed.since(self.sent).SerializeToString())  # as on the wire
            self.sent = feed.version
            self.received.append(msg)
            self.view.apply(msg)
        return self.view.whole()


def test_an_instance_that_changes_costs_a_caught_up_agent_one_endpoint() -> None:
    w = World()
    w.apply(w.app("web", port=80, vip="10.96.0.10"), w.generation("web", 1, probed=False))
    w.apply(*(w.instance("web", f"web-{i:03d}", ip=f"10.88.0.{i + 2}") for i in range(200)))
    agent = Agent()
    assert agent.catch_up(w.feed) == w.recomputed() and len(w.feed.message.apps[0].endpoints) == 200
    assert not agent.received[-1].update  # the first message of a session is whole

    caught_up = w.feed.version
    w.apply(w.instance("web", "web-007", ip="10.88.0.99"))  # moved: a new address
    wire = w.feed.wire_since(caught_up)  # what every caught-up session sends: one copy for all
    assert wire is w.feed.wire_since(caught_up)
    assert apb.SchedulerMessage.FromString(wire).endpoints == w.feed.since(caught_up)
    assert agent.catch_up(w.feed) == w.recomputed()
    [entry] = agent.received[-1].apps
    assert agent.received[-1].update and [e.instance for e in entry.endpoints] == ["web-007"]
    assert (entry.service_ip, entry.service.port) == ("10.96.0.10", 80)  # the app's own fields come along

    w.apply(("instances/web/web-008", None))
    assert agent.catch_up(w.feed) == w.recomputed()
    assert list(agent.received[-1].apps[0].removed) == ["web-008"] and not agent.received[-1].apps[0].endpoints

    before = w.feed.version
    w.apply(w.instance("web", "web-009", ip="10.88.0.11"))  # rewritten as it was: no endpoint moved
    assert w.feed.version == before


def test_apps_deleted_and_created_again_and_new_templates_reach_every_agent() -> None:
    w = World()
    agents = [Agent() for _ in range(3)]
    w.apply(w.app("db"), w.generation("db", 1, probed=True), w.instance("db", "db-a", ip="10.88.1.2", ready=False))
    for a in agents[:2]:
        assert a.catch_up(w.feed) == w.recomputed()
    assert not w.feed.message.apps[0].endpoints[0].ready  # probed, not yet ready
    # Deleted with its instance, then created again with another instance of the same name.
    w.apply(("instances/db/db-a", None), ("apps/db", None))
    assert agents[0].catch_up(w.feed) == w.recomputed() and list(agents[0].received[-1].removed_apps) == ["db"]
    w.apply(w.app("db", generation=2), w.generation("db", 2, probed=False), w.instance("db", "db-b", 2, "10.88.1.3"))
    for a in agents:  # agents[1] saw the first db and missed its deletion; agents[2] saw nothing yet
        assert a.catch_up(w.feed) == w.recomputed()
    assert [e.instance for e in w.feed.message.apps[0].endpoints] == ["db-b"]
    # A generation record appearing for instances that had none: they serve from then on.
    w.apply(w.app("cache", generation=3), w.instance("cache", "cache-a", 1, "10.88.2.2"))
    assert not w.feed.message.apps[0].endpoints  # "cache" sorts first; generation 1's template unknown
    w.apply(w.generation("cache", 1, probed=False))
    for a in agents:
        assert a.catch_up(w.feed) == w.recomputed()
    assert [e.instance for e in w.feed.message.apps[0].endpoints] == ["cache-a"]


@pytest.mark.parametrize("seed", range(8))
def test_random_histories_leave_every_agent_with_the_recomputed_view(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoints, "LOG_KEPT", 30)  # trimmed often: slow agents get whole views
    rng = random.Random(seed)
    w = World()
    w.feed._scheduled = True  # held: batches fold into refreshes at random moments, as the throttle does
    agents = [Agent() for _ in range(4)]
    sleeper = Agent()  # one whole view at the start, then nothing until the log has moved on
    assert sleeper.catch_up(w.feed) == w.recomputed()
    names = [f"{app}-{i}" for app in ("a", "b", "c") for i in range(12)]
    for _ in range(300):
        batch: list[tuple[str, bytes | None]] = []
        for _ in range(rng.randint(1, 4)):
            app = rng.choice("abc")
            roll = rng.random()
            if roll < 0.1:
                batch.append(w.app(app, rng.randint(1, 2), rng.choice([0, 80]), rng.choice(["", "10.96.0.5"])))
            elif roll < 0.15:
                batch.append((f"apps/{app}", None))
            elif roll < 0.2:
                batch.append(w.generation(app, rng.randint(1, 2), rng.random() < 0.5))
            elif roll < 0.23:  # a generation forgotten (no instance runs it) or the app's delete
                batch.append((f"generations/{app}/{rng.randint(1, 2)}", None))
            else:
                name = rng.choice([n for n in names if n.startswith(app)])
                if rng.random() < 0.2:
                    batch.append((f"instances/{app}/{name}", None))
                else:
                    ip = rng.choice(["", "10.88.0.2", "10.88.0.3"])
                    batch.append(w.instance(app, name, rng.randint(1, 2), ip, rng.random() < 0.7))
        w.apply(*batch)
        if rng.random() < 0.05:  # the cache reloaded after a broken watch: everything may have changed
            w.feed._changed(Changes(everything=True))
        if rng.random() < 0.5:
            w.feed.refresh()
            w.feed._scheduled = True
            assert w.feed.message == w.recomputed()
        for a in agents:
            if rng.random() < 0.3:
                assert a.catch_up(w.feed) == w.feed.message
    w.feed.refresh()
    for a in [*agents, sleeper]:
        assert a.catch_up(w.feed) == w.recomputed()
    assert all(sum(m.update for m in a.received) > len(a.received) / 2 for a in agents)
    assert [m.update for m in sleeper.received] == [False, False]  # too far behind the log: whole again


def test_many_sessions_get_fewer_updates_each_carrying_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 100 sessions and 200 messages a second allowed, one update every 0.5 s: the
    first of six readiness flips 50 ms apart goes at once and the other five together 0.5 s
    later (the pacing that bounds fan-out at 5,000 agents); with 2 sessions, every 50 ms."""
    import asyncio

    monkeypatch.setattr(endpoints, "FANOUT_PER_S", 200)

    async def main(sessions: int) -> tuple[float, int]:
        w = World()
        w.apply(w.app("web"), w.generation("web", 1, probed=True))
        w.apply(*(w.instance("web", f"web-{i}", ip=f"10.0.0.{i + 2}") for i in range(6)))
        await asyncio.sleep(0.6)  # the start's recomputation has run
        for _ in range(sessions):
            w.feed.subscribe(lambda: None)
        before = w.feed.version
        for i in range(6):  # a flip every 50 ms
            w.apply(w.instance("web", f"web-{i}", ip=f"10.0.0.{i + 2}", ready=False))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)
        return w.feed.interval(), w.feed.version - before

    assert asyncio.run(main(100)) == (0.5, 2)
    interval, updates = asyncio.run(main(2))
    assert interval == endpoints.MIN_INTERVAL and updates >= 4


def test_sessions_are_woken_a_chunk_at_a_time() -> None:
    """250 sessions, 100 per 50 ms: an update never goes out 250 times in one instant."""
    import asyncio

    woken: list[tuple[int, float]] = []

    def listener(i: int) -> Callable[[], None]:
        return lambda: woken.append((i, asyncio.get_running_loop().time()))

    async def main() -> None:
        w = World()
        w.apply(w.app("web"), w.generation("web", 1, probed=True))
        await asyncio.sleep(0.1)  # that change is out (to nobody yet)
        for i in range(250):
            w.feed.subscribe(listener(i))
        await asyncio.sleep(0.3)  # past the interval: the next change goes at once
        w.apply(w.instance("web", "web-0", ip="10.0.0.2"))
        await asyncio.sleep(0.5)

    asyncio.run(main())
    assert sorted(i for i, _ in woken) == list(range(250))  # each once
    chunks: list[list[float]] = []  # wake times, split where MIN_INTERVAL passed between two
    for _, t in woken:
        if chunks and t - chunks[-1][-1] < endpoints.MIN_INTERVAL / 2:
            chunks[-1].append(t)
        else:
            chunks.append([t])
    assert [len(c) for c in chunks] == [100, 100, 50]
    assert all(b[0] - a[-1] >= endpoints.MIN_INTERVAL * 0.99 for a, b in itertools.pairwise(chunks))
