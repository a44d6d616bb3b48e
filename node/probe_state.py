"""The probes of one container as a pure state machine (no I/O, no clock: `now` is passed in,
monotonic seconds): which probe is due when, what a result means, and when to restart.

Kubernetes' rules (pkg/kubelet/prober/worker.go):
- a probe is first run initialDelay after the container started, then every period;
- until the startup probe has succeeded once, liveness and readiness are not run and the
  container is not ready; once it has, it is never run again for this container;
- failureThreshold failures in a row of the startup or the liveness probe restart the
  container (StartupFailed, LivenessFailed); a success resets the count;
- readiness: not ready after failureThreshold failures in a row (orch's default is 1: not
  ready at the first failure), ready again at the first success. Without a readiness probe
  the container is ready once started (at once without a startup probe).

node/probe_loop.py runs the probes this machine asks for.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace

from orch.v1 import types_pb2 as pb
from orch.validation import DEFAULT_FAILURE_THRESHOLD

__all__ = [
    "Kind",
    "ProbeState",
    "Restart",
    "Settings",
    "due",
    "initial_state",
    "observe",
    "settings_of",
    "wake_at",
]

DEFAULT_PERIOD = 10.0  # s, as Kubernetes (normalize_app_spec fills it in; this is for specs that lack it)
READINESS_FAILURE_THRESHOLD = 1  # orch's default for readiness (not stored in the spec)


class Kind(enum.Enum):
    STARTUP = "startup"
    LIVENESS = "liveness"
    READINESS = "readiness"


RESTART_REASONS = {Kind.STARTUP: "StartupFailed", Kind.LIVENESS: "LivenessFailed"}


@dataclass(frozen=True, slots=True)
class Settings:
    kind: Kind
    period: float  # s between the end of one probe and the start of the next
    failure_threshold: int
    initial_delay: float  # s after the container's start


@dataclass(frozen=True, slots=True)
class Track:
    """One probe's progress."""

    settings: Settings
    next_at: float
    failures: int = 0  # in a row
    detail: str = ""  # of the last failure; "" after a success


@dataclass(frozen=True, slots=True)
class ProbeState:
    tracks: tuple[Track, ...]
    started: bool  # the startup probe has succeeded (True without one)
    ready: bool

    @property
    def message(self) -> str:
        """What the instance's status says about failing probes ("" when none fails)."""
        return "; ".join(_failing(t) for t in self.tracks if t.failures and _active(self, t.settings.kind))


@dataclass(frozen=True, slots=True)
class Restart:
    """Restart the container: a startup or liveness probe failed failureThreshold times."""

    kind: Kind
    reason: str  # LivenessFailed | StartupFailed
    message: str


def settings_of(spec: pb.AppSpec) -> list[Settings]:
    """The settings of the probes spec has, startup first."""
    out = []
    for kind in Kind:
        if spec.HasField(kind.value):
            r: pb.Readiness = getattr(spec, kind.value)
            default = READINESS_FAILURE_THRESHOLD if kind is Kind.READINESS else DEFAULT_FAILURE_THRESHOLD
            period = r.period_ms / 1000 if r.period_ms > 0 else DEFAULT_PERIOD
            delay = max(r.initial_delay_ms, 0) / 1000
            out.append(Settings(kind, period, max(r.failure_threshold, 0) or default, delay))
    return out


def initial_state(settings: Sequence[Settings], started_at: float) -> ProbeState:
    """started_at: when the container started (monotonic; earlier than now for an adopted one)."""
    kinds = {s.kind for s in settings}
    tracks = tuple(Track(s, started_at + s.initial_delay) for s in settings)
    started = Kind.STARTUP not in kinds
    return ProbeState(tracks, started, ready=started and Kind.READINESS not in kinds)


def due(state: ProbeState, now: float) -> list[Kind]:
    """The probes to run now, in order (startup, liveness, readiness)."""
    return [t.settings.kind for t in state.tracks if _active(state, t.settings.kind) and t.next_at <= now]


def wake_at(state: ProbeState) -> float | None:
    """When the next probe is due; None: none ever is (no probes)."""
    times = [t.next_at for t in state.tracks if _active(state, t.settings.kind)]
    return min(times) if times else None


def observe(state: ProbeState, kind: Kind, ok: bool, detail: str, now: float) -> tuple[ProbeState, Restart | None]:
    """The state after probe `kind` gave a result at `now`; a Restart when it calls for one."""
    index = next(i for i, t in enumerate(state.tracks) if t.settings.kind is kind)
    track = state.tracks[index]
    s = track.settings
    track = replace(
        track, next_at=now + s.period, failures=0 if ok else track.failures + 1, detail="" if ok else detail
    )
    tracks = (*state.tracks[:index], track, *state.tracks[index + 1 :])
    state = replace(state, tracks=tracks)
    if kind is Kind.STARTUP and ok:
        has_readiness = any(t.settings.kind is Kind.READINESS for t in tracks)
        return replace(state, started=True, ready=not has_readiness), None
    if kind is Kind.READINESS:
        if ok:
            return replace(state, ready=True), None
        return replace(state, ready=state.ready and track.failures < s.failure_threshold), None
    if not ok and track.failures >= s.failure_threshold:
        message = f"{kind.value} probe failed {track.failures} times in a row: {detail}"
        return state, Restart(kind, RESTART_REASONS[kind], message)
    return state, None


def _active(state: ProbeState, kind: Kind) -> bool:
    return not state.started if kind is Kind.STARTUP else state.started


def _failing(t: Track) -> str:
    s = t.settings
    count = f" ({t.failures}/{s.failure_threshold})" if s.failure_threshold > 1 else ""
    return f"{s.kind.value} probe failed{count}: {t.detail}"
