"""Desired-set generations: etcd revisions, compared per etcd cluster. The agent
ignores an older set; the scheduler resends once its cache caught up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from node.reconcile import Applied, is_stale
from node.session import Session
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.metrics import SchedulerMetrics
from scheduler.sessions import AgentSessionService
from tests.fixtures.session_stream import as_received


def desired(generation: int, cluster: int = 7, *names: str) -> apb.DesiredSet:
    return apb.DesiredSet(
        generation=generation,
        cluster_id=cluster,
        instances=[pb.Instance(name=n, app="web", app_generation=1) for n in names],
        templates={"web/1": pb.AppSpec(name="web", image="rootfs:/x")},
    )


@pytest.mark.parametrize(
    ("generation", "cluster", "applied", "stale"),
    [
        (5, 7, None, False),  # nothing applied yet
        (5, 7, Applied(7, 9), True),  # older, same etcd cluster
        (9, 7, Applied(7, 9), False),  # the same set again
        (12, 7, Applied(7, 9), False),
        (5, 8, Applied(7, 9), False),  # another etcd cluster: its revisions say nothing
    ],
)
def test_is_stale(generation, cluster, applied, stale):
    assert is_stale(desired(generation, cluster), applied) is stale


def test_the_agent_ignores_and_logs_an_older_set(caplog):
    applied: list[int] = []

    async def on_desired(d: apb.DesiredSet) -> None:
        applied.append(d.generation)

    session = Session(["x"], lambda _: apb.Register(), apb.StatusReport, on_desired)

    async def scenario() -> None:
        await session.handle_desired(desired(20, 7, "web-a", "web-b"), "sched-a")
        await session.handle_desired(desired(15, 7, "web-a"), "sched-b")  # sched-b's cache lags
        assert session.observed_generation == 20  # heartbeats keep saying 20
        await session.handle_desired(desired(21, 7, "web-a"), "sched-b")

    with caplog.at_level(logging.WARNING, logger="node.session"):
        asyncio.run(scenario())
    assert applied == [20, 21]
    assert "ignoring desired set 15 from sched-b: older than 20" in caplog.text


class FakeCache:
    def __init__(self, revision: int, instances: list[pb.Instance]) -> None:
        self.revision = revision
        self.cluster_id = 7
        self.instances = instances
        self.secrets: dict[str, Any] = {}
        self._listeners: list[Any] = []

    def subscribe(self, listener: Any) -> Any:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def template_of(self, inst: pb.Instance) -> pb.AppSpec:
        return pb.AppSpec(name=inst.app, image="rootfs:/x")

    def desired_for(self, node: str) -> list[pb.Instance]:
        return list(self.instances)

    def catch_up(self, revision: int) -> None:
        """Events on other nodes' instances: this node's set does not change."""
        self.revision = revision
        for listener in self._listeners:
            listener({"other-node"})


class FakeRegistry:
    lease_ttl = 1

    def register(self, reg: apb.Register) -> tuple[int, float, pb.Node]:
        return 42, 0.0, pb.Node(name=reg.node)  # (lease, end of a restart hold it ended, the record)


class FakeKeeper:
    def mark(self, lease_id: int, on_expired: Any, on_renewed: Any = None) -> None:
        pass

    def forget(self, lease_id: int) -> None:
        pass


def test_the_scheduler_resends_a_set_the_agent_ignored_once_its_cache_caught_up():
    cache = FakeCache(revision=15, instances=[pb.Instance(name="web-a", node="n1")])
    service = AgentSessionService(FakeRegistry(), cache, None, SchedulerMetrics(), FakeKeeper())  # type: ignore[arg-type]
    inbox: asyncio.Queue[apb.AgentMessage] = asyncio.Queue()

    async def requests() -> AsyncIterator[apb.AgentMessage]:
        while True:
            yield await inbox.get()

    def beat(observed: int) -> None:
        inbox.put_nowait(apb.AgentMessage(heartbeat=apb.Heartbeat(observed_generation=observed)))

    async def scenario() -> None:
        inbox.put_nowait(apb.AgentMessage(register=apb.Register(node="n1")))
        stream = as_received(service.Session(requests(), PlaintextContext()))  # type: ignore[arg-type]
        assert (await anext(stream)).WhichOneof("msg") == "registered"
        first = (await anext(stream)).desired
        assert (first.generation, first.cluster_id) == (15, 7)
        beat(20)  # the agent applied 20 from the previous scheduler and ignored our 15
        beat(20)
        await asyncio.sleep(0.05)
        cache.catch_up(18)  # still behind: nothing worth sending
        beat(20)
        nothing = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.1)
        assert not nothing.done()
        cache.catch_up(21)
        beat(20)
        again = (await asyncio.wait_for(nothing, 2)).desired
        assert again.generation == 21 and [i.name for i in again.instances] == ["web-a"]
        beat(21)  # applied: the same body is not sent again
        follow = asyncio.ensure_future(anext(stream))
        cache.catch_up(22)
        await asyncio.sleep(0.1)
        assert not follow.done()
        follow.cancel()  # the stream ends: the session cleans up
        with contextlib.suppress(asyncio.CancelledError):
            await follow

    asyncio.run(scenario())


class PlaintextContext:
    """What a plaintext gRPC connection's context says about the peer: no certificate."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}
