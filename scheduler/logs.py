"""`orch logs` through the scheduler: find the instances, then proxy each
agent's log stream (merged, for an app) back to the caller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from orch.tls import Credentials, aio_channel, node_identity
from orch.v1 import agent_pb2_grpc
from orch.v1 import types_pb2 as pb
from scheduler.errors import NotFound, SchedulerError
from scheduler.snapshot import ClusterSnapshot


class LogsUnavailable(SchedulerError):
    """The node holding the logs cannot be asked for them."""


class NoPreviousLogs(LogsUnavailable):
    """`orch logs --previous` of an instance that has not restarted (on its node)."""

    def __init__(self, instance: str) -> None:
        super().__init__(f'instance "{instance}" has not restarted: there is no previous incarnation to show')
        self.instance = instance


@dataclass(frozen=True, slots=True)
class LogSource:
    instance: str
    node: str  # whose agent must answer (its certificate is checked)
    address: str  # the agent's API


def log_sources(snap: ClusterSnapshot, name: str) -> list[LogSource]:
    """An instance by name, or every placed instance of an app."""
    if name in snap.instances:
        targets = [snap.instances[name].value]
    elif name in snap.app_names():
        targets = [v.value for v in snap.instances_of(name) if v.value.node]
    else:
        raise NotFound("instance or app", name)
    sources = []
    for inst in sorted(targets, key=lambda i: i.name):
        if not inst.node:
            raise LogsUnavailable(f'instance "{inst.name}" is not placed on a node yet: {inst.status.message}')
        node = snap.nodes.get(inst.node)
        if node is None or not node.value.address:
            raise LogsUnavailable(f'node "{inst.node}" of instance "{inst.name}" has no agent address')
        if not snap.is_ready(inst.node) and len(targets) == 1:
            raise LogsUnavailable(f'node "{inst.node}" is not ready; the logs of "{inst.name}" are on it')
        sources.append(LogSource(inst.name, inst.node, node.value.address))
    return sources


async def _pump(
    source: LogSource,
    request: pb.LogsRequest,
    out: asyncio.Queue[pb.LogEntry | Exception | None],
    tls: Credentials | None,
) -> None:
    req = pb.LogsRequest()
    req.CopyFrom(request)
    req.name = source.instance
    try:
        async with aio_channel(source.address, tls, peer=node_identity(source.node)) as channel:
            async for entry in agent_pb2_grpc.NodeAgentStub(channel).Logs(req):
                await out.put(entry)
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND and request.previous:
            await out.put(NoPreviousLogs(source.instance))
        elif e.code() != grpc.StatusCode.NOT_FOUND:
            await out.put(LogsUnavailable(f"{source.instance}: agent at {source.address}: {e.details()}"))
    finally:
        await out.put(None)


async def stream_logs(
    sources: list[LogSource], request: pb.LogsRequest, tls: Credentials | None = None
) -> AsyncIterator[pb.LogEntry]:
    out: asyncio.Queue[pb.LogEntry | Exception | None] = asyncio.Queue(maxsize=1000)
    pumps = [asyncio.create_task(_pump(s, request, out, tls)) for s in sources]
    open_streams = len(pumps)
    never_restarted = []
    try:
        while open_streams:
            item = await out.get()
            if item is None:
                open_streams -= 1
            elif isinstance(item, NoPreviousLogs) and len(sources) > 1:
                never_restarted.append(item.instance)
            elif isinstance(item, Exception):
                if len(sources) == 1:
                    raise item
            else:
                yield item
        if sources and len(never_restarted) == len(sources):  # an app none of whose instances restarted
            raise LogsUnavailable(
                f"no instance has restarted: there is no previous incarnation to show ({', '.join(never_restarted)})"
            )
    finally:
        for p in pumps:
            p.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*pumps, return_exceptions=True)
