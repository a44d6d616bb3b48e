"""An agent's session on a hung scheduler: the kernel of a stopped process still ACKs TCP, so
nothing but HTTP/2 keepalive pings notices; the session moves to the next scheduler and its
node stays Ready there (node/session.py CHANNEL_OPTIONS)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from node.session import KEEPALIVE_MS, Session, first_scheduler
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from tests.fixtures.processes import stop
from tests.integration.conftest import orch, start_scheduler


def test_a_session_leaves_a_hung_scheduler_for_the_next(etcd, tmp_path) -> None:
    s0 = start_scheduler(etcd, tmp_path / "s0.log", "s0")
    s1 = start_scheduler(etcd, tmp_path / "s1.log", "s1")
    try:
        moved_after = asyncio.run(_follow(s0.address, s1.address, s0.proc.pid))
        assert moved_after < 4 * KEEPALIVE_MS / 1000 + 5, moved_after  # not TCP's minutes
        assert "n1" in orch(s1.address, "get", "nodes").stdout
    finally:
        os.kill(s0.proc.pid, signal.SIGCONT)
        stop(s0.proc)
        stop(s1.proc)


async def _follow(first: str, second: str, first_pid: int) -> float:
    """Connects a session to `first`, stops it; how long until the session is on `second`."""
    register = apb.Register(node="n1", capacity=pb.Resources(cpu_millis=1000, memory_bytes=1 << 30, pids=100))

    async def nothing(_: apb.DesiredSet) -> None:
        return None

    # The agent starts at the scheduler its node's name picks (first_scheduler): `first` goes there.
    order = [first, second] if first_scheduler("n1", 2) == 0 else [second, first]
    session = Session(order, lambda lease: register, apb.StatusReport, nothing)
    task = asyncio.create_task(session.run())
    try:
        await asyncio.wait_for(session.connected.wait(), 20)
        assert session.scheduler == first
        os.kill(first_pid, signal.SIGSTOP)
        stopped = time.monotonic()
        deadline = stopped + 60
        while session.scheduler != second or not session.connected.is_set():
            assert time.monotonic() < deadline, "still on the hung scheduler after 60 s"
            await asyncio.sleep(0.05)
        return time.monotonic() - stopped
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
