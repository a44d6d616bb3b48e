"""What the agent serves to schedulers: its instances' logs and usage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from node.runtime.logs import LogLine, read_logs
from orch.tls import SCHEDULER, peer_identity
from orch.v1 import agent_pb2_grpc
from orch.v1 import types_pb2 as pb

_END = object()


async def _only_schedulers(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """With TLS, only a scheduler's certificate may read logs and usage (the CLI goes through it)."""
    identity = peer_identity(context)
    if identity is not None and identity != SCHEDULER:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f'certificate "{identity}" is not a scheduler')


class NodeAgentService(agent_pb2_grpc.NodeAgentServicer):
    def __init__(self, log_dir: Path, is_active: Callable[[str], bool], usage: Callable[[], pb.UsageReport]) -> None:
        self._log_dir = log_dir
        self._is_active = is_active  # follow ends when the instance is gone from this node
        self._usage = usage  # blocking: sleeps for its sampling window

    async def Usage(self, request: pb.UsageRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.UsageReport:
        await _only_schedulers(context)
        return await asyncio.to_thread(self._usage)

    async def Logs(
        self, request: pb.LogsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.LogEntry]:
        await _only_schedulers(context)
        name = request.name
        path = self._log_dir / f"{name}.log"
        if "/" in name or not (path.exists() or self._is_active(name)):
            await context.abort(grpc.StatusCode.NOT_FOUND, f'no logs for instance "{name}" on this node')
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1000)
        loop = asyncio.get_running_loop()
        stop = False

        def produce() -> None:
            lines = read_logs(
                path,
                tail=request.tail if request.tail > 0 else None,
                follow=request.follow,
                since=request.since or None,
                done=lambda: stop or not self._is_active(name),
            )
            try:
                for line in lines:
                    asyncio.run_coroutine_threadsafe(queue.put(line), loop).result()
                    if stop:
                        return
            finally:
                asyncio.run_coroutine_threadsafe(queue.put(_END), loop).result()

        reader = asyncio.create_task(asyncio.to_thread(produce))
        try:
            while (item := await queue.get()) is not _END:
                assert isinstance(item, LogLine)
                yield pb.LogEntry(instance=name, time=item.time, stream=item.stream, text=item.text)
        finally:
            stop = True
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    queue.get_nowait()  # unblock the producer
            reader.cancel()
