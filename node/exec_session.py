"""One `orch exec` on the agent: a Runtime.exec process relayed to a gRPC stream.

Everything here is non-blocking on the event loop (no thread per stream): the process's pipes
and the helper's pidfd are watched with add_reader/add_writer. Output is read only as fast as
the caller takes it (a bounded queue), so a slow client slows the command, not the agent.
When the stream ends early (the client went away), the command and all it started are killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable

from node.runtime.exec_client import ExecProcess
from orch.v1 import exec_pb2 as xpb

__all__ = ["relay_exec"]

_CHUNK = 65536


async def relay_exec(proc: ExecProcess, requests: AsyncIterator[xpb.ExecInput]) -> AsyncIterator[xpb.ExecOutput]:
    """Output chunks as they come, then the exit code; stdin and resizes from `requests`."""
    out: asyncio.Queue[xpb.ExecOutput | None] = asyncio.Queue(maxsize=16)
    exited = _Exited(proc.pid)
    streams = [(fd, name) for fd, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr")) if fd is not None]
    pumps = [asyncio.create_task(_pump(fd, name, out, exited)) for fd, name in streams]
    feeder = asyncio.create_task(_feed(proc, requests))
    try:
        for _ in pumps:
            while (item := await out.get()) is not None:
                yield item
        await exited.wait()
        code = proc.wait(0)
        yield xpb.ExecOutput(exit_code=code if code is not None else 128 + 9)
    finally:
        feeder.cancel()
        for task in pumps:
            task.cancel()
        await asyncio.gather(feeder, *pumps, return_exceptions=True)
        exited.close()
        await asyncio.to_thread(proc.close)  # kills what still runs, waits for the helper's sweep


class _Exited:
    """Set when the helper process has exited (its pidfd is readable)."""

    def __init__(self, pid: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = os.pidfd_open(pid)
        self.event = asyncio.Event()
        self._loop.add_reader(self._fd, self.event.set)

    def is_set(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)


async def _readable(fd: int, exited: _Exited) -> bool:
    """Wait until fd is readable (True) or the helper exited (False)."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        waiters = {asyncio.create_task(ready.wait()), asyncio.create_task(exited.wait())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return ready.is_set()
    finally:
        loop.remove_reader(fd)


async def _pump(fd: int, name: str, out: asyncio.Queue[xpb.ExecOutput | None], exited: _Exited) -> None:
    """fd to `out` until EOF; once the helper has exited, only what is already in the pipe (a
    container process that reopened the pipe through /proc could otherwise hold it open)."""
    os.set_blocking(fd, False)
    try:
        while True:
            if not exited.is_set():
                await _readable(fd, exited)
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                if exited.is_set():
                    return
                continue
            if not data:
                return
            await out.put(xpb.ExecOutput(stdout=data) if name == "stdout" else xpb.ExecOutput(stderr=data))
    finally:
        await out.put(None)


async def _feed(proc: ExecProcess, requests: AsyncIterator[xpb.ExecInput]) -> None:
    """The caller's stdin, resizes and stdin EOF to the process; the caller's end closes stdin."""
    try:
        async for msg in requests:
            kind = msg.WhichOneof("msg")
            if kind == "stdin" and proc.stdin is not None:
                if not await _write(proc.stdin, msg.stdin):
                    proc.close_stdin()  # the command closed its stdin: drop the rest
            elif kind == "resize":
                proc.resize(msg.resize.rows, msg.resize.cols)
            elif kind == "stdin_eof":
                proc.close_stdin()
    finally:
        proc.close_stdin()


async def _write(fd: int, data: bytes) -> bool:
    """All of data into the pipe, waiting while it is full; False when its reader is gone."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BlockingIOError:
            await _when(loop.add_writer, loop.remove_writer, fd)
        except BrokenPipeError:
            return False
    return True


async def _when(add: Callable[..., None], remove: Callable[[int], object], fd: int) -> None:
    ready = asyncio.Event()
    add(fd, ready.set)
    try:
        await ready.wait()
    finally:
        with contextlib.suppress(ValueError, OSError):
            remove(fd)
