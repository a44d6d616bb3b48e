"""The agent's log readers cannot starve the threads that run containers (a viewer may open many)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest

from node.api import NodeAgentService
from orch.v1 import agent_pb2_grpc
from orch.v1 import types_pb2 as pb

LINE = "2026-01-01T00:00:00.000000000Z stdout F hello\n"


def _no_exec(*args: object, **kw: object) -> NoReturn:
    raise AssertionError("not used")


async def _follow(stub: Any, started: asyncio.Event) -> grpc.StatusCode | None:
    call = stub.Logs(pb.LogsRequest(name="web-1", follow=True))
    try:
        async for _ in call:
            started.set()
    except grpc.aio.AioRpcError as e:
        started.set()
        return e.code()
    return None


def test_log_followers_are_bounded_and_leave_the_runtime_threads_alone(tmp_path: Path) -> None:
    (tmp_path / "web-1.log").write_text(LINE)

    async def main() -> None:
        # The agent's runtime work (start, stop, probes) runs on the loop's default pool: a small one here.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
        cap = 4  # more followers than the default pool has threads
        service = NodeAgentService(tmp_path, lambda name: True, pb.UsageReport, _no_exec, max_log_streams=cap)
        server = grpc.aio.server()
        agent_pb2_grpc.add_NodeAgentServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub: Any = agent_pb2_grpc.NodeAgentStub(channel)  # an aio channel: the stubs type sync calls
                events = [asyncio.Event() for _ in range(cap)]
                followers = [asyncio.create_task(_follow(stub, e)) for e in events]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 10)
                # Every follower holds a thread now; runtime work still gets one at once.
                assert await asyncio.wait_for(asyncio.to_thread(lambda: "ran"), 5) == "ran"
                assert await _follow(stub, asyncio.Event()) == grpc.StatusCode.RESOURCE_EXHAUSTED
                for task in followers:
                    task.cancel()
                await asyncio.gather(*followers, return_exceptions=True)
        finally:
            await server.stop(0)
            await asyncio.to_thread(service.close)

    asyncio.run(main())


@pytest.mark.parametrize("cap", [1])
def test_a_freed_stream_can_be_taken_again(tmp_path: Path, cap: int) -> None:
    (tmp_path / "web-1.log").write_text(LINE)

    async def main() -> None:
        service = NodeAgentService(tmp_path, lambda name: True, pb.UsageReport, _no_exec, max_log_streams=cap)
        server = grpc.aio.server()
        agent_pb2_grpc.add_NodeAgentServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub: Any = agent_pb2_grpc.NodeAgentStub(channel)  # an aio channel: the stubs type sync calls
                for _ in range(3):  # without follow each stream ends and gives its place back
                    lines = [e.text async for e in stub.Logs(pb.LogsRequest(name="web-1"))]
                    assert lines == ["hello"]
        finally:
            await server.stop(0)
            await asyncio.to_thread(service.close)

    asyncio.run(main())
