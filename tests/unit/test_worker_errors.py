"""A worker that fails unexpectedly retries with backoff, adopts what the
failed attempt left, and after AGENT_ERROR_LIMIT failures gives the instance
up as Failed/AgentError (which the scheduler replaces elsewhere)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import node.worker as worker_mod
from node.network import NetworkError
from node.runtime import ContainerState, ContainerStatus, NotFound
from node.worker import AGENT_ERROR_LIMIT, InstanceWorker, WorkerDeps
from orch.v1 import types_pb2 as pb


class FakeRuntime:
    def __init__(self, state: ContainerState | None) -> None:
        self._state = state

    def state(self, id: str) -> ContainerState:
        if self._state is None:
            raise NotFound(id, Path("/nonexistent"))
        return self._state


def make_worker(
    monkeypatch, runtime: FakeRuntime, fail_times: int, adopted: ContainerState | None = None, network: object = None
):
    monkeypatch.setattr(worker_mod, "AGENT_ERROR_BACKOFF", (0.01, 0.04))
    reports: list[pb.InstanceStatus] = []
    attempts: list[ContainerState | None] = []
    deps = WorkerDeps(runtime, network, None, Path("/nonexistent"), lambda _, s: reports.append(s))  # type: ignore[arg-type]
    worker = InstanceWorker(pb.Instance(name="web-a", app="web"), deps, adopted)

    async def supervise(state: ContainerState | None) -> None:
        attempts.append(state)
        if len(attempts) <= fail_times:
            raise KeyError("surprise")
        await worker._stop.wait()

    async def teardown() -> None:
        reports.append(pb.InstanceStatus(state=pb.INSTANCE_STATE_STOPPED))

    monkeypatch.setattr(worker, "_supervise", supervise)
    monkeypatch.setattr(worker, "_teardown", teardown)
    return worker, reports, attempts


def reasons(reports: list[pb.InstanceStatus]) -> list[str]:
    return [r.reason for r in reports]


def test_a_failed_worker_retries_and_adopts_the_container_left_running(monkeypatch):
    running = ContainerState("web-a", ContainerStatus.RUNNING, 123, None, False, 1.0, None, "", "")
    worker, reports, attempts = make_worker(monkeypatch, FakeRuntime(running), fail_times=2)

    async def scenario() -> None:
        worker.start()
        await asyncio.sleep(0.3)
        assert attempts == [None, running, running]  # retried, resuming the running container
        assert reasons(reports) == ["AgentErrorBackOff", "AgentErrorBackOff"]
        assert reports[0].state == pb.INSTANCE_STATE_FAILED
        assert "KeyError: 'surprise'; retrying in" in reports[0].message
        worker.request_stop()
        assert worker.task is not None
        await worker.task

    asyncio.run(scenario())
    assert reports[-1].state == pb.INSTANCE_STATE_STOPPED


def test_repeated_failures_give_the_instance_up_for_the_scheduler_to_replace(monkeypatch):
    worker, reports, attempts = make_worker(monkeypatch, FakeRuntime(None), fail_times=100)

    async def scenario() -> None:
        worker.start()
        await asyncio.sleep(0.5)
        assert len(attempts) == AGENT_ERROR_LIMIT  # then no more attempts
        assert reasons(reports) == ["AgentErrorBackOff"] * (AGENT_ERROR_LIMIT - 1) + ["AgentError"]
        final = reports[-1]
        assert final.state == pb.INSTANCE_STATE_FAILED
        assert final.message.startswith(f"gave up after {AGENT_ERROR_LIMIT} attempts: KeyError")
        worker.request_stop()  # the scheduler's replacement is up: this one is removed
        assert worker.task is not None
        await worker.task

    asyncio.run(scenario())
    assert reports[-1].state == pb.INSTANCE_STATE_STOPPED


class FlakyPorts:
    """hostPort rules that fail to publish `fails` times (iptables starved, a port taken)."""

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.calls: list[str] = []

    def publish(self, instance: str, ip: str, mappings: object) -> None:
        self.calls.append(f"publish {instance} {ip}")
        if len(self.calls) <= self.fails:
            raise NetworkError("iptables-restore: timed out")

    def unpublish(self, instance: str) -> None:
        self.calls.append(f"unpublish {instance}")


def test_an_adopted_containers_hostports_are_published_again_until_it_works(monkeypatch):
    """After an agent restart the hostPorts come back even if the first tries fail, while the
    container is supervised meanwhile; nothing is published after the instance's teardown."""
    running = ContainerState("web-a", ContainerStatus.RUNNING, 123, None, False, 1.0, None, "", "")
    ports = FlakyPorts(fails=2)
    network = SimpleNamespace(addresses=lambda: {"web-a": "10.88.0.5"}, host_ports=ports)
    worker, _, attempts = make_worker(monkeypatch, FakeRuntime(running), 0, running, network)

    async def teardown() -> None:
        ports.unpublish("web-a")

    monkeypatch.setattr(worker, "_teardown", teardown)

    async def scenario() -> None:
        worker.start()
        await asyncio.sleep(0.3)
        assert attempts == [running]  # supervised at once, not after the network
        assert ports.calls == ["publish web-a 10.88.0.5"] * 3  # failed twice, then published
        assert worker.ip == "10.88.0.5"
        worker.request_stop()
        assert worker.task is not None
        await worker.task

    asyncio.run(scenario())
    assert ports.calls[-1] == "unpublish web-a"


def test_an_instance_stopped_while_its_hostports_fail_leaves_none_published(monkeypatch):
    running = ContainerState("web-a", ContainerStatus.RUNNING, 123, None, False, 1.0, None, "", "")
    ports = FlakyPorts(fails=100)
    network = SimpleNamespace(addresses=lambda: {"web-a": "10.88.0.5"}, host_ports=ports)
    worker, _, _ = make_worker(monkeypatch, FakeRuntime(running), 0, running, network)

    async def teardown() -> None:
        ports.unpublish("web-a")

    monkeypatch.setattr(worker, "_teardown", teardown)

    async def scenario() -> None:
        worker.start()
        await asyncio.sleep(0.2)
        worker.request_stop()
        assert worker.task is not None
        await worker.task
        tries = len(ports.calls)
        await asyncio.sleep(0.2)
        assert len(ports.calls) == tries  # no more tries once stopped

    asyncio.run(scenario())
    assert ports.calls[-1] == "unpublish web-a" and ports.calls.count("unpublish web-a") == 1
