"""The worker acts on what the probes decide: a liveness or startup probe that fails its
threshold has the container killed and restarted like a crash (restart policy, reason
LivenessFailed/StartupFailed, the exit metric, lastState), and the incarnation's log is kept
as the previous one. The runtime is a fake whose containers end when signalled."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

import node.probe_loop as probe_loop
from node.images import ImageConfig, PreparedImage
from node.probes import ProbeResult
from node.runtime import ContainerConfig, ContainerState, ContainerStatus, NotFound
from node.runtime.logs import previous_log
from node.worker import InstanceWorker, WorkerDeps
from orch.v1 import types_pb2 as pb

IMAGE = PreparedImage("rootfs:/x", "", (Path("/x"),), ImageConfig(cmd=("sh",)))


class FakeImages:
    def is_present(self, image: str) -> bool:
        return True

    def prepare(self, image: str) -> PreparedImage:
        return IMAGE


class SignalledRuntime:
    """Containers that run until signalled, then exit with exit_code (143 for SIGTERM by default)."""

    def __init__(self, log_dir: Path, exit_code: int = 143) -> None:
        self.log_dir = log_dir
        self.exit_code = exit_code
        self.starts = 0
        self.signals: list[int] = []
        self._state: ContainerState | None = None
        self._ends: list[int] = []

    def start(self, config: ContainerConfig, on_netns: Any = None) -> ContainerState:
        self.starts += 1
        with config.log_path.open("a") as f:  # what the shim would write
            f.write(f"2026-01-01T00:00:0{self.starts}.000000000Z stdout F incarnation {self.starts}\n")
        self._state = ContainerState(config.id, ContainerStatus.RUNNING, 100, None, False, time.time(), None, "", "")
        return self._state

    def state(self, id: str) -> ContainerState:
        if self._state is None:
            raise NotFound(id, Path("/nonexistent"))
        return self._state

    def exit_fd(self, id: str) -> int:
        r, w = os.pipe()
        self._ends.append(w)
        return r

    def kill(self, id: str, sig: int) -> None:
        self.signals.append(sig)
        assert self._state is not None
        self._state = ContainerState(
            id, ContainerStatus.EXITED, 100, self.exit_code, False, self._state.started_at, time.time(), "", ""
        )
        for w in self._ends:
            with contextlib.suppress(OSError):  # a waiter that has gone closed its end
                os.write(w, b"x")  # the exit fd becomes readable

    def stop(self, id: str, grace: float) -> ContainerState:
        if self._state is None:
            raise NotFound(id, Path("/nonexistent"))
        if self._state.status is ContainerStatus.RUNNING:
            self.kill(id, signal.SIGKILL)
        return self.state(id)

    def remove(self, id: str) -> None:
        self._state = None

    def close(self) -> None:
        for w in self._ends:
            os.close(w)


def failing_liveness(monkeypatch: pytest.MonkeyPatch, fails: int = 10**6) -> list[str]:
    """Liveness fails the first `fails` times; everything else passes. Returns the kinds probed."""
    probed: list[str] = []

    def fake_probe(r: pb.Readiness, ip: str, runtime: object, id: str) -> ProbeResult:
        kind = "liveness" if r.exec.command == ["live"] else "other"
        probed.append(kind)
        if kind == "liveness" and probed.count("liveness") <= fails:
            return ProbeResult(False, "exec live: exit 1: \\x1b[31mgone")
        return ProbeResult(True, "ok")

    monkeypatch.setattr(probe_loop, "probe", fake_probe)
    return probed


def make(
    tmp_path: Path,
    policy: pb.RestartPolicy.ValueType = pb.RESTART_POLICY_ALWAYS,
    exit_code: int = 143,
    startup: bool = False,
):
    spec = pb.AppSpec(image="rootfs:/x", restart_policy=policy, stop_grace_period_ms=5_000)
    spec.liveness.CopyFrom(pb.Readiness(exec=pb.ExecProbe(command=["live"]), period_ms=10, failure_threshold=3))
    if startup:
        spec.startup.CopyFrom(pb.Readiness(exec=pb.ExecProbe(command=["start"]), period_ms=10, failure_threshold=2))
    runtime = SignalledRuntime(tmp_path, exit_code)
    reports: list[pb.InstanceStatus] = []
    exits: list[tuple[str, str]] = []
    deps = WorkerDeps(
        runtime,  # type: ignore[arg-type]
        None,
        FakeImages(),  # type: ignore[arg-type]
        tmp_path,
        lambda _, s: reports.append(s),
        exited=lambda app, reason: exits.append((app, reason)),
    )
    return InstanceWorker(pb.Instance(name="web-a", app="web", spec=spec), deps), runtime, reports, exits


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def run(worker: InstanceWorker, scenario: Any) -> None:
    async def main() -> None:
        worker.start()
        try:
            await scenario()
        finally:
            worker.request_stop()
            assert worker.task is not None
            await worker.task

    asyncio.run(main())


def test_failed_liveness_restarts_it_like_a_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    failing_liveness(monkeypatch, fails=3)
    worker, runtime, reports, exits = make(tmp_path)

    async def scenario() -> None:
        await until(lambda: runtime.starts == 2 and worker.status.state == pb.INSTANCE_STATE_RUNNING)

    run(worker, scenario)
    assert runtime.signals[0] == signal.SIGTERM  # a stop's signal first, SIGKILL only after the grace period
    assert exits[0] == ("web", "LivenessFailed")  # orch_instance_exits_total{reason="LivenessFailed"}
    died = next(r for r in reports if r.reason == "LivenessFailed")
    assert died.restarts == 1 and died.exit_code == 143
    assert (
        died.message
        == "liveness probe failed 3 times in a row: exec live: exit 1: \\x1b[31mgone; killed (exit code 143)"
    )
    running = [r for r in reports if r.state == pb.INSTANCE_STATE_RUNNING][-1]
    assert running.restarts == 1 and running.last_termination.reason == "LivenessFailed"
    assert running.last_termination.exit_code == 143 and running.last_termination.finished_at.seconds > 0
    # The first incarnation's output is the previous log now; the second writes a new one.
    assert previous_log(tmp_path / "web-a.log").read_text().endswith("incarnation 1\n")
    assert (tmp_path / "web-a.log").read_text().endswith("incarnation 2\n")
    assert "incarnation 1" not in (tmp_path / "web-a.log").read_text()


def test_restart_policy_never_leaves_it_failed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    failing_liveness(monkeypatch)
    worker, runtime, reports, _ = make(tmp_path, policy=pb.RESTART_POLICY_NEVER)

    async def scenario() -> None:
        await until(lambda: worker.status.state == pb.INSTANCE_STATE_FAILED)
        await asyncio.sleep(0.1)

    run(worker, scenario)
    assert runtime.starts == 1
    failed = next(r for r in reports if r.state == pb.INSTANCE_STATE_FAILED)
    assert failed.reason == "LivenessFailed" and failed.restarts == 0
    assert not failed.HasField("last_termination")  # it has not restarted
    assert not previous_log(tmp_path / "web-a.log").exists()


def test_on_failure_restarts_it_even_when_it_exits_0(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A clean exit at SIGTERM is still a failed probe (Kubernetes restarts unless the policy is Never)."""
    failing_liveness(monkeypatch, fails=3)
    worker, runtime, reports, _ = make(tmp_path, policy=pb.RESTART_POLICY_ON_FAILURE, exit_code=0)

    async def scenario() -> None:
        await until(lambda: runtime.starts == 2)

    run(worker, scenario)
    assert any(r.reason == "LivenessFailed" and r.exit_code == 0 for r in reports)


def test_startup_gates_liveness(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """While the startup probe fails, liveness is never run: the restart is StartupFailed."""
    probed: list[str] = []

    def fake_probe(r: pb.Readiness, ip: str, runtime: object, id: str) -> ProbeResult:
        probed.append(r.exec.command[0])
        return ProbeResult(False, f"exec {r.exec.command[0]}: exit 1")

    monkeypatch.setattr(probe_loop, "probe", fake_probe)
    worker, runtime, reports, exits = make(tmp_path, startup=True)

    async def scenario() -> None:
        await until(lambda: runtime.starts == 2)

    run(worker, scenario)
    assert exits[0] == ("web", "StartupFailed")
    assert set(probed) == {"start"}  # liveness never ran: startup never succeeded
    starting = [r for r in reports if r.state == pb.INSTANCE_STATE_RUNNING]
    assert starting and not any(r.ready for r in starting)  # not ready before startup succeeds
