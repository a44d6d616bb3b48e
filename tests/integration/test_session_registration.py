"""A registration whose hook fails (the node's network could not be set up) ends the session,
not the agent: it registers again after the backoff and goes on once the hook succeeds
(node/session.py RegistrationFailed)."""

from __future__ import annotations

import asyncio

from node.session import RegistrationFailed, Session
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from tests.fixtures.processes import stop
from tests.integration.conftest import orch, start_scheduler


def test_a_failed_registration_hook_registers_again_instead_of_ending_the_agent(etcd, tmp_path) -> None:
    scheduler = start_scheduler(etcd, tmp_path / "s0.log", "s0")
    try:
        hooked = asyncio.run(_register_until_the_hook_succeeds(scheduler.address))
        assert hooked == ["failed", "failed", "set up"]
        assert "n1" in orch(scheduler.address, "get", "nodes").stdout
    finally:
        stop(scheduler.proc)


async def _register_until_the_hook_succeeds(address: str) -> list[str]:
    register = apb.Register(node="n1", capacity=pb.Resources(cpu_millis=1000, memory_bytes=1 << 30, pids=100))
    hooked: list[str] = []
    applied: list[int] = []

    async def on_registered(_: apb.Registered) -> None:
        if len(hooked) < 2:
            hooked.append("failed")
            raise RegistrationFailed("the network of subnet 10.88.1.0/24 cannot be set up: bridge busy")
        hooked.append("set up")

    async def on_desired(desired: apb.DesiredSet) -> None:
        applied.append(len(hooked))

    session = Session([address], lambda lease: register, apb.StatusReport, on_desired, on_registered=on_registered)
    task = asyncio.create_task(session.run())
    try:
        async with asyncio.timeout(30):
            while hooked != ["failed", "failed", "set up"] or not session.connected.is_set():
                assert not task.done(), task  # the session lives on through the failures
                await asyncio.sleep(0.02)
            while not applied:  # the first desired set, once the hook succeeded
                await asyncio.sleep(0.02)
        assert set(applied) == {3}, applied  # no desired set applied by a session whose hook failed
        return hooked
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
