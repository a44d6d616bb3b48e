"""What the agent serves to schedulers: its instances' logs and usage, and exec into them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from node.exec_session import relay_exec
from node.runtime import ContainerError, NotFound
from node.runtime.errors import NotRunning
from node.runtime.exec_client import ExecProcess
from node.runtime.logs import LogLine, log_file, previous_log, read_logs
from orch.tls import SCHEDULER, peer_identity
from orch.v1 import agent_pb2_grpc
from orch.v1 import exec_pb2 as xpb
from orch.v1 import types_pb2 as pb

_END = object()
MAX_LOG_STREAMS = 16  # concurrent `orch logs` readers per node; each holds a thread while it follows


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
        max_log_streams: int = MAX_LOG_STREAMS,
    ) -> None:
        self._log_dir = log_dir
        self._is_active = is_active  # follow ends when the instance is gone from this node
        self._usage = usage  # blocking: sleeps for its sampling window
        self._start_exec = start_exec
        # Readers (a viewer may open many) block a thread each: on pools of their own, bounded,
        # so they can never take the threads that start, stop and probe containers.
        self._max_log_streams = max_log_streams
        self._log_streams = 0
        self._log_pool = ThreadPoolExecutor(max_workers=max_log_streams, thread_name_prefix="orch-logs")
        self._usage_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="orch-usage")

    def close(self) -> None:
        """Wait for the log readers to end (each sees its stream gone within a poll)."""
        self._log_pool.shutdown(wait=True)
        self._usage_pool.shutdown(wait=True)

    async def Usage(self, request: pb.UsageRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.UsageReport:
        await _only_schedulers(context)
        return await asyncio.get_running_loop().run_in_executor(self._usage_pool, self._usage)

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
        path = log_file(self._log_dir, name)
        if "/" in name or not (path.exists() or self._is_active(name)):
            await context.abort(grpc.StatusCode.NOT_FOUND, f'no logs for instance "{name}" on this node')
        if request.previous:
            path = previous_log(path)
            if not path.exists():
                await context.abort(grpc.StatusCode.NOT_FOUND, f'instance "{name}" has not restarted on this node')
        if self._log_streams >= self._max_log_streams:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this node already serves {self._max_log_streams} log streams; try again when one ends",
            )
        self._log_streams += 1
        try:
            async for entry in self._read_logs(request, path):
                yield entry
        finally:
            self._log_streams -= 1

    async def _read_logs(self, request: pb.LogsRequest, path: Path) -> AsyncIterator[pb.LogEntry]:
        name = request.name
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1000)
        loop = asyncio.get_running_loop()
        stop = False

        def produce() -> None:
            lines = read_logs(
                path,
                tail=request.tail if request.tail > 0 else None,
                follow=request.follow and not request.previous,  # the previous one has ended
                since=request.since or None,
                done=lambda: stop or not self._is_active(name),
            )
            try:
                for line in lines:
                    if not put(line) or stop:
                        return
            finally:
                put(_END)

        def put(item: object) -> bool:
            """Hand item to the stream (waiting while its queue is full); False once it is gone."""
            while not stop:
                coro = queue.put(item)
                try:
                    future = asyncio.run_coroutine_threadsafe(coro, loop)
                except RuntimeError:  # the loop has closed (the agent is exiting)
                    coro.close()
                    return False
                try:
                    future.result(timeout=1)
                    return True
                except TimeoutError:
                    if not future.cancel():  # it went in just now
                        return True
            return False

        reader = loop.run_in_executor(self._log_pool, produce)
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
