"""A worker that fails unexpectedly retries with backoff, adopts what the
failed attempt left, and after AGENT_ERROR_LIMIT failures gives the instance
up as Failed/AgentError (which the scheduler replaces elsewhere)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
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


class Ports:
    """hostPort rules whose publish fails `fails` times (iptables starved, a port taken); while
    `hold` is clear a publish blocks in its thread, as a starved iptables-restore does."""

    def __init__(self, fails: int, error: Exception | None = None) -> None:
        self.fails, self.error = fails, error or NetworkError("iptables-restore: timed out")
        self.calls: list[str] = []
        self.hold = threading.Event()
        self.hold.set()

    def publish(self, instance: str, ip: str, mappings: object) -> None:
        self.calls.append("publish")
        self.hold.wait(10)
        self.calls.append("published" if len(self.calls) > 2 * self.fails else "failed")
        if self.calls[-1] == "failed":
            raise self.error


class ExitPipe(FakeRuntime):
    """A running container whose exit the test makes (a byte on its exit fd)."""

    def __init__(self, running: ContainerState) -> None:
        super().__init__(running)
        self.r, self.w = os.pipe()

    def exit_fd(self, id: str) -> int:
        return os.dup(self.r)

    def exit(self) -> None:
        assert self._state is not None
        self._state = dataclasses.replace(self._state, status=ContainerStatus.EXITED, exit_code=0)
        os.write(self.w, b"x")


def adopted_worker(ports: Ports) -> tuple[InstanceWorker, ExitPipe]:
    running = ContainerState("web-a", ContainerStatus.RUNNING, 123, None, False, 1.0, None, "", "")
    runtime = ExitPipe(running)
    network = SimpleNamespace(addresses=lambda: {"web-a": "10.88.0.5"}, host_ports=ports)
    deps = WorkerDeps(runtime, network, None, Path("/nonexistent"), lambda _, s: None)  # type: ignore[arg-type]
    inst = pb.Instance(name="web-a", app="web")
    inst.spec.ports.add(container_port=80, host_port=8080)
    worker = InstanceWorker(inst, deps, running)
    worker.ip, worker._republish = "10.88.0.5", True  # as _run leaves an adopted running container
    return worker, runtime


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_an_adopted_containers_hostports_are_published_again_until_it_works(monkeypatch):
    """After an agent restart an adopted container's hostPorts come back even if the first tries
    fail; the container is supervised meanwhile (its exit is seen at once)."""
    monkeypatch.setattr(worker_mod, "AGENT_ERROR_BACKOFF", (0.01, 0.04))
    ports = Ports(fails=2)
    worker, runtime = adopted_worker(ports)

    async def scenario() -> None:
        waiting = asyncio.create_task(worker._wait_exit(runtime._state))  # type: ignore[arg-type]
        await until(lambda: ports.calls[-1:] == ["published"], "the third publish")
        assert ports.calls == ["publish", "failed"] * 2 + ["publish", "published"]
        assert not waiting.done()  # supervising all along
        runtime.exit()
        exited = await asyncio.wait_for(waiting, 10)
        assert exited is not None and exited.status is ContainerStatus.EXITED

    asyncio.run(scenario())


def test_no_hostport_is_published_for_an_adopted_container_once_it_exited(monkeypatch):
    """It exits while a publish is in flight: _wait_exit returns only after that publish, so the
    exit's detach (which unpublishes) comes after it, and nothing is published after the exit."""
    monkeypatch.setattr(worker_mod, "AGENT_ERROR_BACKOFF", (0.01, 0.04))
    ports = Ports(fails=100)
    worker, runtime = adopted_worker(ports)

    async def scenario() -> None:
        waiting = asyncio.create_task(worker._wait_exit(runtime._state))  # type: ignore[arg-type]
        await until(lambda: len(ports.calls) >= 4, "a retry")
        ports.hold.clear()
        await until(lambda: ports.calls[-1] == "publish", "a publish in flight")
        runtime.exit()
        await asyncio.sleep(0.1)
        assert not waiting.done()  # the publish in flight ends first
        ports.hold.set()
        await asyncio.wait_for(waiting, 10)
        tries = len(ports.calls)
        await asyncio.sleep(0.2)
        assert len(ports.calls) == tries  # none after the exit

    asyncio.run(scenario())


def test_an_adopted_containers_stop_ends_its_republishing_and_an_odd_error_is_only_logged(monkeypatch, caplog):
    monkeypatch.setattr(worker_mod, "AGENT_ERROR_BACKOFF", (0.01, 0.04))
    ports = Ports(fails=100, error=RuntimeError("surprise"))
    worker, runtime = adopted_worker(ports)

    async def scenario() -> None:
        waiting = asyncio.create_task(worker._wait_exit(runtime._state))  # type: ignore[arg-type]
        await until(lambda: ports.calls[-1:] == ["failed"], "the failed publish")
        worker.request_stop()
        assert await asyncio.wait_for(waiting, 10) is None  # stop requested: on to the teardown

    asyncio.run(scenario())
    assert "publishing its hostPorts: RuntimeError('surprise')" in caplog.text
