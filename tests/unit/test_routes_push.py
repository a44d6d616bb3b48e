"""The scheduler's side of the routes table on an agent's stream (scheduler/sessions.py): a
networked agent gets its subnet in `registered`, then the table before its first desired set,
and the table again whenever it changes; an agent without container networking never gets one;
a refused registration is an error the agent can read, and one Warning event."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.cache import ROUTES
from scheduler.errors import Refused
from scheduler.metrics import SchedulerMetrics
from scheduler.sessions import AgentSessionService
from scheduler.subnets import SUBNETS_EXHAUSTED, SubnetPool
from tests.fixtures.session_stream import as_received
from tests.unit.test_generations import FakeKeeper, PlaintextContext


class FakeCache:
    revision, cluster_id = 3, 7

    def __init__(self) -> None:
        self.routes_version = 1
        self.secrets: dict[str, Any] = {}
        self.table = [apb.NodeRoute(node="m1", subnet="10.88.0.0/24", node_ip="192.0.2.11")]
        self._listeners: list[Any] = []

    def subscribe(self, listener: Any) -> Any:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def template_of(self, inst: pb.Instance) -> pb.AppSpec:
        return pb.AppSpec(name=inst.app, image="rootfs:/x")

    def desired_for(self, node: str) -> list[pb.Instance]:
        return [pb.Instance(name="web-a", node=node)]

    def routes(self) -> apb.Routes:
        return apb.Routes(nodes=self.table)

    def node_joined(self, route: apb.NodeRoute) -> None:
        self.table = [*self.table, route]
        self.routes_version += 1
        for listener in self._listeners:
            listener({ROUTES})


class FakeRegistry:
    lease_ttl = 1

    def __init__(self, refuse: Refused | None = None) -> None:
        self.refuse = refuse
        self.subnets = type("Claims", (), {"pool": SubnetPool.parse("10.88.0.0/16")})()

    def register(self, reg: apb.Register) -> tuple[int, float, pb.Node]:
        if self.refuse is not None:
            raise self.refuse
        subnet = "10.88.0.0/24" if reg.container_network else ""
        return 42, 0.0, pb.Node(name=reg.node, subnet=subnet, node_ip=reg.node_ip)


class Aborted(Exception):
    pass


class Context(PlaintextContext):
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class FakeEvents:
    def __init__(self) -> None:
        self.recorded: list[pb.Event] = []

    def record(self, events: list[pb.Event]) -> None:
        self.recorded += events


def stream_for(service: AgentSessionService, register: apb.Register) -> AsyncIterator[apb.SchedulerMessage]:
    inbox: asyncio.Queue[apb.AgentMessage] = asyncio.Queue()
    inbox.put_nowait(apb.AgentMessage(register=register))

    async def requests() -> AsyncIterator[apb.AgentMessage]:
        while True:
            yield await inbox.get()

    return as_received(service.Session(requests(), Context()))  # type: ignore[arg-type]


def test_a_networked_agent_gets_its_subnet_then_the_table_then_its_desired_set() -> None:
    cache = FakeCache()
    service = AgentSessionService(FakeRegistry(), cache, None, SchedulerMetrics(), FakeKeeper())  # type: ignore[arg-type]

    async def scenario() -> None:
        stream = stream_for(service, apb.Register(node="m2", container_network=True, node_ip="192.0.2.12"))
        registered = (await anext(stream)).registered
        assert (registered.subnet, registered.cluster_cidr) == ("10.88.0.0/24", "10.88.0.0/16")
        first, second = await anext(stream), await anext(stream)
        assert [r.node for r in first.routes.nodes] == ["m1"]
        assert second.WhichOneof("msg") == "desired"
        cache.node_joined(apb.NodeRoute(node="m3", subnet="10.88.2.0/24", node_ip="192.0.2.13"))
        again = await asyncio.wait_for(anext(stream), 2)
        assert [r.node for r in again.routes.nodes] == ["m1", "m3"]
        quiet = asyncio.ensure_future(anext(stream))  # nothing changed: nothing more is sent
        await asyncio.sleep(0.1)
        assert not quiet.done()
        quiet.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await quiet

    asyncio.run(scenario())


def test_an_agent_without_container_networking_gets_no_table() -> None:
    cache = FakeCache()
    service = AgentSessionService(FakeRegistry(), cache, None, SchedulerMetrics(), FakeKeeper())  # type: ignore[arg-type]

    async def scenario() -> None:
        stream = stream_for(service, apb.Register(node="hollow-1"))
        assert (await anext(stream)).registered.subnet == ""
        assert (await anext(stream)).WhichOneof("msg") == "desired"
        cache.node_joined(apb.NodeRoute(node="m3", subnet="10.88.2.0/24", node_ip="192.0.2.13"))
        quiet = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.1)
        assert not quiet.done()
        quiet.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await quiet

    asyncio.run(scenario())


def test_a_refused_registration_is_a_failed_precondition_and_one_event_a_minute() -> None:
    refusal = Refused(SUBNETS_EXHAUSTED, "no /24 left in the cluster CIDR 10.88.0.0/23 for node m3")
    events = FakeEvents()
    service = AgentSessionService(
        FakeRegistry(refusal),  # type: ignore[arg-type]
        FakeCache(),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        SchedulerMetrics(),
        FakeKeeper(),  # type: ignore[arg-type]
        events,  # type: ignore[arg-type]
    )

    async def attempt() -> Aborted:
        with pytest.raises(Aborted) as e:
            await anext(stream_for(service, apb.Register(node="m3", container_network=True)))
        return e.value

    for _ in range(3):  # the agent retries every few seconds
        code, details = asyncio.run(attempt()).args
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert details == "cannot register node m3: no /24 left in the cluster CIDR 10.88.0.0/23 for node m3"
    assert [(e.type, e.reason, e.object) for e in events.recorded] == [("Warning", SUBNETS_EXHAUSTED, "m3")]
