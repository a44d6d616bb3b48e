"""`orch exec` through the scheduler: find the instance's node, then relay the stream both ways
to that node's agent (NodeAgent.Exec), as `orch logs` relays log lines.

Errors (api.py maps them): NotFound (no such instance), InstanceNotRunning, NodeUnreachable
(its node is not ready or its agent cannot be reached), ExecFailed (the agent refused).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from orch.tls import Credentials, aio_channel, node_identity
from orch.v1 import agent_pb2_grpc
from orch.v1 import exec_pb2 as xpb
from orch.v1 import types_pb2 as pb
from scheduler.errors import NotFound, SchedulerError
from scheduler.snapshot import ClusterSnapshot

__all__ = ["ExecFailed", "ExecTarget", "InstanceNotRunning", "NodeUnreachable", "exec_target", "relay_exec"]


class InstanceNotRunning(SchedulerError):
    """The instance exists but runs nowhere now."""


class NodeUnreachable(SchedulerError):
    """The instance's node is not ready, or its agent did not answer."""


class ExecFailed(SchedulerError):
    """The agent refused the exec for another reason (its message says why)."""


@dataclass(frozen=True, slots=True)
class ExecTarget:
    instance: str
    node: str
    address: str  # the agent's API


def exec_target(snap: ClusterSnapshot, name: str) -> ExecTarget:
    if name not in snap.instances:
        raise NotFound("instance", name)
    inst = snap.instances[name].value
    if inst.status.state != pb.INSTANCE_STATE_RUNNING or not inst.node:
        state = pb.InstanceState.Name(inst.status.state).removeprefix("INSTANCE_STATE_").capitalize()
        raise InstanceNotRunning(f'instance "{name}" is not running (state {state})')
    node = snap.nodes.get(inst.node)
    if node is None or not node.value.address:
        raise NodeUnreachable(f'node "{inst.node}" of instance "{name}" has no agent address')
    if not snap.is_ready(inst.node):
        raise NodeUnreachable(f'node "{inst.node}" of instance "{name}" is not ready')
    return ExecTarget(name, inst.node, node.value.address)


async def relay_exec(
    target: ExecTarget, first: xpb.ExecInput, requests: AsyncIterator[xpb.ExecInput], tls: Credentials | None
) -> AsyncIterator[xpb.ExecOutput]:
    """The agent's output for the caller; the caller's input (after `first`) for the agent."""
    async with aio_channel(target.address, tls, peer=node_identity(target.node)) as channel:
        call = agent_pb2_grpc.NodeAgentStub(channel).Exec()
        forward = asyncio.create_task(_forward(first, requests, call))
        try:
            async for out in call:
                yield out
        except grpc.aio.AioRpcError as e:
            raise _translate(e, target) from None
        finally:
            forward.cancel()
            with contextlib.suppress(BaseException):
                await forward
            call.cancel()


Call = grpc.aio.StreamStreamCall[xpb.ExecInput, xpb.ExecOutput]


async def _forward(first: xpb.ExecInput, requests: AsyncIterator[xpb.ExecInput], call: Call) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        await call.write(first)
        async for msg in requests:
            await call.write(msg)
        await call.done_writing()


def _translate(e: grpc.aio.AioRpcError, target: ExecTarget) -> SchedulerError:
    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound("instance", target.instance)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return InstanceNotRunning(details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return NodeUnreachable(f'cannot reach the agent of node "{target.node}" at {target.address}: {details}')
    return ExecFailed(f'agent of node "{target.node}": {code.name}: {details}')
