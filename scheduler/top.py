"""`orch top` through the scheduler: ask every ready node's agent for its usage
at once, and add it up per node (as metrics-server does for `kubectl top`)."""

from __future__ import annotations

import asyncio

import grpc

from orch.tls import Credentials, aio_channel, node_identity
from orch.v1 import agent_pb2_grpc
from orch.v1 import api_pb2 as api
from orch.v1 import types_pb2 as pb
from scheduler.errors import NotFound
from scheduler.snapshot import ClusterSnapshot

__all__ = ["top"]

AGENT_TIMEOUT = 5.0  # s; the agent itself samples for 0.5 s


async def _ask(node: str, address: str, tls: Credentials | None) -> pb.UsageReport:
    async with aio_channel(address, tls, peer=node_identity(node)) as channel:
        return await agent_pb2_grpc.NodeAgentStub(channel).Usage(pb.UsageRequest(), timeout=AGENT_TIMEOUT)


async def _node_usage(
    snap: ClusterSnapshot, name: str, tls: Credentials | None
) -> tuple[api.NodeUsage, list[pb.InstanceUsage]]:
    node = snap.nodes[name].value
    usage = api.NodeUsage(node=name, allocatable=node.allocatable)
    if not snap.is_ready(name):
        usage.error = "node is NotReady"
        return usage, []
    if not node.address:
        usage.error = "the agent has no API address"
        return usage, []
    try:
        report = await _ask(name, node.address, tls)
    except grpc.aio.AioRpcError as e:
        usage.error = f"agent at {node.address}: {e.code().name}: {e.details()}"
        return usage, []
    for inst in report.instances:
        usage.cpu_millis += inst.cpu_millis
        usage.memory_working_set_bytes += inst.memory_working_set_bytes
    usage.instances = len(report.instances)
    return usage, list(report.instances)


async def top(snap: ClusterSnapshot, request: api.TopRequest, tls: Credentials | None = None) -> api.TopResponse:
    """Node totals count every instance on the node; `request.app` filters only the instance list."""
    if request.node and request.node not in snap.nodes:
        raise NotFound("node", request.node)
    if request.app and request.app not in snap.app_names():
        raise NotFound("app", request.app)
    names = [request.node] if request.node else sorted(snap.nodes)
    results = await asyncio.gather(*(_node_usage(snap, name, tls) for name in names))
    response = api.TopResponse()
    for usage, instances in results:
        response.nodes.append(usage)
        response.instances.extend(i for i in instances if not request.app or i.app == request.app)
    return response
