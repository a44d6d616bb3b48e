"""The agent's blocking work runs in bounded pools of its own (issue 12 item 5): probes that hang
hold only the probe pool, a stop's grace period holds no thread at all, so starts go on; and
a probe's timeout is capped whatever the app asks."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import node.probe_loop as probe_loop
import node.probes as probes_mod
from node.images import ImageConfig, PreparedImage
from node.probes import MAX_TIMEOUT, ProbeResult
from node.runtime import ContainerConfig, ContainerState, ContainerStatus, NotFound
from node.worker import InstanceWorker, WorkerDeps
from orch.v1 import types_pb2 as pb

IMAGE = PreparedImage("rootfs:/x", "", (Path("/x"),), ImageConfig(cmd=("sh",)))


class FakeImages:
    def is_present(self, image: str) -> bool:
        return True

    def prepare(self, image: str) -> PreparedImage:
        return IMAGE


class FakeRuntime:
    """Containers that start at once, never end on their own, and ignore SIGTERM."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._never: list[int] = []

    def start(self, config: ContainerConfig, on_netns: Any = None) -> ContainerState:
        self.started.append(config.id)
        return ContainerState(config.id, ContainerStatus.RUNNING, 100, None, False, 1.0, None, "", "")

    def stop(self, id: str, grace: float) -> ContainerState:
        if id not in self.started:
            raise NotFound(id, Path("/nonexistent"))
        time.sleep(grace)  # Runtime.stop waits this long for a PID 1 that ignores SIGTERM
        return ContainerState(id, ContainerStatus.EXITED, 100, 137, False, 1.0, 2.0, "Killed", "")

    def remove(self, id: str) -> None:
        pass

    def kill(self, id: str, sig: int) -> None:
        pass  # ignored, as by a PID 1 without a handler

    def exit_fd(self, id: str) -> int:
        r, w = os.pipe()
        self._never.append(w)  # never written: the container never ends
        return r

    def close(self) -> None:
        for fd in self._never:
            os.close(fd)


def worker(name: str, deps: WorkerDeps, readiness: bool = False, grace_ms: int = 1) -> InstanceWorker:
    spec = pb.AppSpec(image="rootfs:/x", stop_grace_period_ms=grace_ms)
    if readiness:
        spec.readiness.CopyFrom(pb.Readiness(tcp=80, period_ms=10))
    return InstanceWorker(pb.Instance(name=name, app="web", spec=spec), deps)


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_hanging_probes_hold_only_the_probe_pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    release = threading.Event()

    def hanging_probe(*args: object) -> ProbeResult:
        release.wait(10)
        return ProbeResult(True, "late")

    monkeypatch.setattr(probe_loop, "probe", hanging_probe)
    runtime = FakeRuntime()

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
        probe_pool = ThreadPoolExecutor(max_workers=2)
        deps = WorkerDeps(runtime, None, FakeImages(), tmp_path, lambda *_: None, probes=probe_pool)  # type: ignore[arg-type]
        probed = [worker(f"probed-{i}", deps, readiness=True) for i in range(4)]  # twice the probe pool
        for w in probed:
            w.start()
        await until(lambda: len(runtime.started) == 4)
        await asyncio.sleep(0.1)  # the probes now hold every probe thread, and wait in line for more
        late = worker("late", deps)
        late.start()
        await until(lambda: late.status.state == pb.INSTANCE_STATE_RUNNING)
        release.set()
        for w in [*probed, late]:
            w.request_stop()
        await asyncio.gather(*(w.task for w in [*probed, late] if w.task is not None))
        probe_pool.shutdown()

    try:
        asyncio.run(main())
    finally:
        release.set()
        runtime.close()


def test_a_stops_grace_period_holds_no_thread(tmp_path: Path) -> None:
    runtime = FakeRuntime()

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        deps = WorkerDeps(runtime, None, FakeImages(), tmp_path, lambda *_: None)  # type: ignore[arg-type]
        slow = worker("slow", deps, grace_ms=2_500)
        slow.start()
        await until(lambda: slow.status.state == pb.INSTANCE_STATE_RUNNING)
        slow.request_stop()  # its PID 1 ignores SIGTERM: the whole grace period goes by
        await asyncio.sleep(0.1)
        other = worker("other", deps)
        other.start()  # needs the one thread meanwhile
        await until(lambda: other.status.state == pb.INSTANCE_STATE_RUNNING, timeout=2.0)
        assert slow.task is not None and not slow.task.done()  # still in its grace period
        other.request_stop()
        await asyncio.gather(*(w.task for w in (slow, other) if w.task is not None))
        assert slow.status.exit_code == 137

    try:
        asyncio.run(main())
    finally:
        runtime.close()


def test_probe_timeouts_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def fake_tcp(host: str, port: int, timeout: float) -> ProbeResult:
        seen.append(timeout)
        return ProbeResult(True, "open")

    monkeypatch.setattr(probes_mod, "probe_tcp", fake_tcp)
    for asked in (3_600_000, 2_500, 0):
        probes_mod.probe(pb.Readiness(tcp=80, timeout_ms=asked), "10.0.0.2", None, "web-a")  # type: ignore[arg-type]
    assert seen == [MAX_TIMEOUT, 2.5, probes_mod.DEFAULT_TIMEOUT]
