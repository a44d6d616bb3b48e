"""node/probe_state.py: the probe state machine, pure (thresholds, initial delays, startup gating)."""

from __future__ import annotations

import pytest

from node.probe_state import (
    Kind,
    ProbeState,
    Restart,
    Settings,
    due,
    initial_state,
    observe,
    settings_of,
    wake_at,
)
from orch.v1 import types_pb2 as pb
from orch.validation import normalize_app_spec

START = 100.0


def liveness(threshold: int = 3, period: float = 10.0, delay: float = 0.0) -> Settings:
    return Settings(Kind.LIVENESS, period, threshold, delay)


def readiness(threshold: int = 1, period: float = 10.0, delay: float = 0.0) -> Settings:
    return Settings(Kind.READINESS, period, threshold, delay)


def startup(threshold: int = 3, period: float = 10.0, delay: float = 0.0) -> Settings:
    return Settings(Kind.STARTUP, period, threshold, delay)


def results(state: ProbeState, kind: Kind, oks: list[bool], now: float = START) -> tuple[ProbeState, Restart | None]:
    restart = None
    for ok in oks:
        state, restart = observe(state, kind, ok, "exec cat: exit 1", now)
        now += 10
    return state, restart


def test_liveness_restarts_after_failure_threshold_failures_in_a_row() -> None:
    state = initial_state([liveness(threshold=3)], START)
    state, restart = results(state, Kind.LIVENESS, [False, False])
    assert restart is None and state.message == "liveness probe failed (2/3): exec cat: exit 1"
    state, restart = results(state, Kind.LIVENESS, [False])
    assert restart == Restart(
        Kind.LIVENESS, "LivenessFailed", "liveness probe failed 3 times in a row: exec cat: exit 1"
    )


def test_a_success_resets_the_count() -> None:
    state = initial_state([liveness(threshold=2)], START)
    state, restart = results(state, Kind.LIVENESS, [False, True, False, True, False])
    assert restart is None and state.message == "liveness probe failed (1/2): exec cat: exit 1"
    state, restart = results(state, Kind.LIVENESS, [True])
    assert state.message == ""


def test_threshold_one_restarts_at_the_first_failure() -> None:
    _, restart = results(initial_state([liveness(threshold=1)], START), Kind.LIVENESS, [False])
    assert restart is not None and restart.reason == "LivenessFailed"


def test_initial_delay_then_every_period() -> None:
    state = initial_state([liveness(period=5.0, delay=30.0)], START)
    assert due(state, START) == [] and due(state, START + 29.9) == []
    assert wake_at(state) == START + 30.0
    assert due(state, START + 30.0) == [Kind.LIVENESS]
    state, _ = observe(state, Kind.LIVENESS, True, "ok", START + 30.5)  # counted from the probe's end
    assert wake_at(state) == START + 35.5 and due(state, START + 35.0) == []


def test_an_adopted_container_counts_its_delay_from_its_own_start() -> None:
    state = initial_state([liveness(delay=30.0)], START - 60.0)  # started a minute ago
    assert due(state, START) == [Kind.LIVENESS]


def test_without_probes_nothing_is_ever_due_and_it_is_ready() -> None:
    state = initial_state([], START)
    assert state.ready and state.started and wake_at(state) is None and due(state, START + 1e6) == []


def test_startup_gates_liveness_and_readiness_until_it_succeeds() -> None:
    state = initial_state([startup(), liveness(), readiness()], START)
    assert not state.ready and not state.started
    assert due(state, START + 1000) == [Kind.STARTUP]  # the others wait, however late it is
    state, restart = results(state, Kind.STARTUP, [False, False])
    assert restart is None and not state.ready and "startup probe failed (2/3)" in state.message
    state, restart = observe(state, Kind.STARTUP, True, "ok", START + 50)
    assert restart is None and state.started and not state.ready  # readiness decides now
    assert due(state, START + 50) == [Kind.LIVENESS, Kind.READINESS]  # their delays are long past
    assert state.message == ""  # the startup failures no longer matter
    state, _ = observe(state, Kind.READINESS, True, "ok", START + 51)
    assert state.ready and due(state, START + 1000) == [Kind.LIVENESS, Kind.READINESS]  # never startup again


def test_startup_failing_threshold_times_restarts() -> None:
    state = initial_state([startup(threshold=3), liveness()], START)
    _, restart = results(state, Kind.STARTUP, [False, False, False])
    assert restart is not None and (restart.kind, restart.reason) == (Kind.STARTUP, "StartupFailed")
    assert restart.message.startswith("startup probe failed 3 times in a row")


def test_startup_without_readiness_makes_it_ready_when_it_succeeds() -> None:
    state = initial_state([startup(delay=5.0)], START)
    assert not state.ready and due(state, START) == [] and wake_at(state) == START + 5.0
    state, _ = observe(state, Kind.STARTUP, True, "ok", START + 5)
    assert state.ready and wake_at(state) is None


def test_liveness_alone_leaves_readiness_alone() -> None:
    state = initial_state([liveness()], START)
    assert state.ready
    state, _ = results(state, Kind.LIVENESS, [False, False])
    assert state.ready  # failing liveness restarts, it does not unready


@pytest.mark.parametrize(
    ("threshold", "oks", "ready"),
    [
        (1, [True], True),
        (1, [True, False], False),  # orch's default: not ready at the first failure
        (3, [True, False, False], True),
        (3, [True, False, False, False], False),
        (3, [True, False, False, False, True], True),  # ready again at the first success
        (3, [False], False),  # not ready before it ever succeeded
    ],
)
def test_readiness_threshold(threshold: int, oks: list[bool], ready: bool) -> None:
    state, restart = results(initial_state([readiness(threshold=threshold)], START), Kind.READINESS, oks)
    assert state.ready is ready and restart is None


def test_readiness_delay_keeps_it_unready_until_its_first_success() -> None:
    state = initial_state([readiness(delay=20.0)], START)
    assert not state.ready and due(state, START + 19) == [] and due(state, START + 20) == [Kind.READINESS]


def test_settings_from_a_spec_with_defaults() -> None:
    spec = pb.AppSpec(name="web", image="busybox")
    spec.readiness.tcp = 80
    spec.liveness.exec.command.append("true")
    spec.liveness.initial_delay_ms = 1500
    spec.startup.http.port = 80
    spec.startup.failure_threshold = 30
    spec.startup.period_ms = 1000
    got = settings_of(normalize_app_spec(spec))
    assert got == [
        Settings(Kind.STARTUP, 1.0, 30, 0.0),
        Settings(Kind.LIVENESS, 10.0, 3, 1.5),  # Kubernetes' defaults
        Settings(Kind.READINESS, 10.0, 1, 0.0),  # orch's readiness threshold: 1
    ]
