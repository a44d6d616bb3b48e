"""The agent applies desired sets without waiting for stops (no root: the
workers' container work is replaced by a timed fake)."""

from __future__ import annotations

import asyncio
import time

from node.agent import Agent, AgentConfig
from node.worker import InstanceWorker
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb

GRACE = 0.6  # how long the fake takes to stop a container


def desired(*names: str) -> apb.DesiredSet:
    return apb.DesiredSet(instances=[pb.Instance(name=n, app="web") for n in names])


def fake_run(log: list[tuple[str, str]]):
    async def _run(self: InstanceWorker) -> None:
        log.append(("start", self.instance.name))
        try:
            await self._stop.wait()
            await asyncio.sleep(GRACE)  # a stop grace period plus the shim wait
        finally:
            log.append(("stopped", self.instance.name))

    return _run


def make_agent(tmp_path, monkeypatch) -> tuple[Agent, list[tuple[str, str]]]:
    log: list[tuple[str, str]] = []
    monkeypatch.setattr(InstanceWorker, "_run", fake_run(log))
    agent = Agent(AgentConfig(name="n1", state_dir=tmp_path))
    agent._swept = True  # no runtime sweep in a unit test
    return agent, log


def test_a_slow_stop_does_not_delay_the_next_desired_set(tmp_path, monkeypatch):
    agent, log = make_agent(tmp_path, monkeypatch)

    async def scenario() -> None:
        await agent.apply_desired(desired("web-a"))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await agent.apply_desired(desired())  # removes web-a: a stop that takes GRACE
        await agent.apply_desired(desired("web-b"))
        assert time.monotonic() - started < GRACE / 3
        await asyncio.sleep(0.05)
        assert ("start", "web-b") in log and ("stopped", "web-a") not in log
        assert set(agent.workers) == {"web-b"} and set(agent.stopping) == {"web-a"}
        # Still on the host while stopping: the scheduler must not count it as gone.
        assert {r.name for r in agent._full_report().instances} == {"web-a", "web-b"}
        await agent.wait_stopping()
        assert ("stopped", "web-a") in log and not agent.stopping

    asyncio.run(scenario())


def test_an_instance_back_while_stopping_starts_after_its_old_worker_finished(tmp_path, monkeypatch):
    agent, log = make_agent(tmp_path, monkeypatch)

    async def scenario() -> None:
        await agent.apply_desired(desired("web-a"))
        await asyncio.sleep(0.05)
        await agent.apply_desired(desired())
        await agent.apply_desired(desired("web-a"))  # e.g. an older set from a lagging scheduler
        await asyncio.sleep(0.05)
        assert log == [("start", "web-a")]  # not twice at once
        await agent.wait_stopping()
        await asyncio.sleep(0.05)
        assert log == [("start", "web-a"), ("stopped", "web-a"), ("start", "web-a")]
        assert set(agent.workers) == {"web-a"}
        agent.workers["web-a"].request_stop()
        task = agent.workers["web-a"].task
        assert task is not None
        await task

    asyncio.run(scenario())


def test_image_gc_survives_any_error(tmp_path, monkeypatch, caplog):
    """One failed round (RecursionError was one, from a deep layer) must not end the GC task:
    it dies silently otherwise, and the disk fills up. Injected: the store no longer fails so."""
    agent = Agent(AgentConfig(name="n1", state_dir=tmp_path, image_gc_interval=0.01))
    rounds: list[int] = []

    def disk_usage():
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RecursionError("maximum recursion depth exceeded")
        return agent.images.__class__.disk_usage(agent.images)

    monkeypatch.setattr(agent.images, "disk_usage", disk_usage)

    async def scenario() -> None:
        task = asyncio.create_task(agent.collect_images())
        while len(rounds) < 3:
            assert not task.done()
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert "image gc failed: maximum recursion depth exceeded" in caplog.text
