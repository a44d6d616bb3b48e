"""`orch logs --previous` through the scheduler's log proxy to a real agent API: the previous
incarnation's lines, or a clear error for an instance (or an app) that never restarted."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

import grpc
import pytest

from node.api import NodeAgentService
from node.runtime.logs import keep_previous
from orch.v1 import agent_pb2_grpc
from orch.v1 import types_pb2 as pb
from scheduler.logs import LogSource, LogsUnavailable, NoPreviousLogs, stream_logs


def _no_exec(*args: object, **kw: object) -> NoReturn:
    raise AssertionError("not used")


def line(text: str) -> str:
    return f"2026-01-01T00:00:00.000000000Z stdout F {text}\n"


def with_agent(log_dir: Path, scenario: Callable[[str], Awaitable[None]]) -> None:
    async def main() -> None:
        service = NodeAgentService(log_dir, lambda name: True, pb.UsageReport, _no_exec)
        server = grpc.aio.server()
        agent_pb2_grpc.add_NodeAgentServicer_to_server(service, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await scenario(f"127.0.0.1:{port}")
        finally:
            await server.stop(0)
            await asyncio.to_thread(service.close)

    asyncio.run(main())


async def texts(sources: list[LogSource], **request: object) -> list[str]:
    return [e.text async for e in stream_logs(sources, pb.LogsRequest(**request))]  # type: ignore[arg-type]


def test_previous_shows_the_last_incarnation_only(tmp_path: Path) -> None:
    log = tmp_path / "web-a.log"
    log.write_text(line("first"))
    keep_previous(log)
    log.write_text(line("second"))
    keep_previous(log)
    log.write_text(line("third"))
    (tmp_path / "web-b.log").write_text(line("never restarted"))

    async def scenario(address: str) -> None:
        a, b = LogSource("web-a", "n1", address), LogSource("web-b", "n1", address)
        assert await texts([a], name="web-a") == ["third"]
        assert await texts([a], name="web-a", previous=True) == ["second"]
        assert await texts([a], name="web-a", previous=True, follow=True) == ["second"]  # it has ended
        with pytest.raises(NoPreviousLogs, match='instance "web-b" has not restarted'):
            await texts([b], name="web-b", previous=True)
        assert await texts([a, b], name="web", previous=True) == ["second"]  # an app: those that restarted
        with pytest.raises(LogsUnavailable, match=r"no instance has restarted.*\(web-b, web-b\)"):
            await texts([b, b], name="web", previous=True)

    with_agent(tmp_path, scenario)
