"""What the agent serves to schedulers: its instances' logs and usage, and exec into them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from node.exec_session import relay_exec
from node.runtime import ContainerError, NotFound
from node.runtime.errors import NotRunning
from node.runtime.exec_client import ExecProcess
from node.runtime.logs import LogLine, read_logs
from orch.tls import SCHEDULER, peer_identity
from orch.v1 import agent_pb2_grpc
from orch.v1 import exec_pb2 as xpb
from orch.v1 import types_pb2 as pb

_END = object()


# Runtime.exec(instance, argv, tty=, stdin=, size=): starts the command (blocking, ~0.1 s).
StartExec = Callable[..., ExecProcess]


async def _only_schedulers(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """With TLS, only a scheduler's certificate may read logs and usage or exec (the CLI goes
    through a scheduler, which authorizes the caller)."""
    identity = peer_identity(context)
    if identity is not None and identity != SCHEDULER:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f'certificate "{identity}" is not a scheduler')


class NodeAgentService(agent_pb2_grpc.NodeAgentServicer):
    def __init__(
        self,
        log_dir: Path,
        is_active: Callable[[str], bool],
        usage: Callable[[], pb.UsageReport],
        start_exec: StartExec,
    ) -> None:
        self._log_dir = log_dir
        self._is_active = is_active  # follow ends when the instance is gone from this node
        self._usage = usage  # blocking: sleeps for its sampling window
        self._start_exec = start_exec

    async def Usage(self, request: pb.UsageRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.UsageReport:
        await _only_schedulers(context)
        return await asyncio.to_thread(self._usage)

    async def Exec(
        self, request_iterator: AsyncIterator[xpb.ExecInput], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[xpb.ExecOutput]:
        await _only_schedulers(context)
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("msg") != "start" or not first.start.command:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must name the command")
            return
        start = first.start
        name = start.instance
        if not self._is_active(name):
            await context.abort(grpc.StatusCode.NOT_FOUND, f'no instance "{name}" on this node')
        size = (start.size.rows or 24, start.size.cols or 80)
        try:
            proc = await asyncio.to_thread(
                self._start_exec, name, list(start.command), tty=start.tty, stdin=start.stdin, size=size
            )
        except NotFound:
            await context.abort(grpc.StatusCode.NOT_FOUND, f'no instance "{name}" on this node')
            return
        except NotRunning:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f'instance "{name}" is not running')
            return
        except ContainerError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f'instance "{name}": {e}')
            return
        async for out in relay_exec(proc, request_iterator):
            yield out

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
