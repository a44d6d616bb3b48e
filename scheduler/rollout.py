"""How a rollout goes: pure decisions over an app and its instances, given `now`.

A rollout is the current generation's instances replacing older ones (or, for a
new app, appearing). It *progresses* while more of them are ready at once than
ever before in it; when that has not happened for the app's progressDeadline
(default 120 s, orch/validation.py) it is *stuck*: ProgressDeadlineExceeded, as
Kubernetes' Deployment condition. The reconciler then rolls no further (it takes
no old instance down, surges no more, moves no crash-looping new one to another
node: the template is what fails, not the node) until a new generation is
applied (`orch apply`, `orch rollout undo`) or the rollout progresses after all.
Once Complete (replicas instances, all of the generation and ready, no older one
left) it stays so until the next generation: later crashes are not a rollout's.

The most ready ever seen, not the number now, is what counts: an instance that
crash-loops is ready for a moment after each restart, which is no progress.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from orch.states import ROLLOUT_COMPLETE, ROLLOUT_DEADLINE_EXCEEDED, ROLLOUT_PROGRESSING
from orch.v1 import types_pb2 as pb
from orch.validation import DEFAULT_PROGRESS_DEADLINE_MS
from scheduler.snapshot import wants_to_run
from scheduler.timeutil import seconds, ts

PROGRESSING = ROLLOUT_PROGRESSING
COMPLETE = ROLLOUT_COMPLETE
DEADLINE_EXCEEDED = ROLLOUT_DEADLINE_EXCEEDED


@dataclass(frozen=True, slots=True)
class Progress:
    desired: int  # replicas
    updated: int  # instances of the current generation that want to run
    available: int  # of those, ready
    old: int  # instances of older generations that still want to run

    @property
    def done(self) -> bool:
        return self.old == 0 and self.updated == self.desired and self.available == self.desired


def is_ready(inst: pb.Instance, spec: pb.AppSpec | None = None) -> bool:
    """spec: the instance's, when it carries none (the cache's instances: hydrate.py)."""
    if inst.status.state != pb.INSTANCE_STATE_RUNNING:
        return False
    probed = spec if spec is not None else inst.spec
    return inst.status.ready or not (probed.HasField("readiness") or probed.HasField("startup"))


def progress(
    app: pb.App, instances: Iterable[pb.Instance], template_of: Callable[[pb.Instance], pb.AppSpec | None] | None = None
) -> Progress:
    """template_of: where an instance's probes are, for instances as stored (no spec on them)."""
    live = [i for i in instances if wants_to_run(i)]
    updated = [i for i in live if i.app_generation == app.generation]
    return Progress(
        desired=app.spec.replicas,
        updated=len(updated),
        available=sum(1 for i in updated if is_ready(i, template_of(i) if template_of else None)),
        old=len(live) - len(updated),
    )


def deadline_of(spec: pb.AppSpec) -> float:
    """Seconds; an app stored before the field existed has the default."""
    return (spec.progress_deadline_ms or DEFAULT_PROGRESS_DEADLINE_MS) / 1000


def started(generation: int, now: float) -> pb.RolloutStatus:
    """The status of a rollout that begins now (an apply that bumped the generation)."""
    return pb.RolloutStatus(generation=generation, progressed_at=ts(now), reason=PROGRESSING)


def next_status(app: pb.App, seen: Progress, now: float) -> pb.RolloutStatus:
    """app.rollout after seeing `seen` at `now`; equal to it when nothing changed."""
    status = pb.RolloutStatus()
    if app.rollout.generation == app.generation:
        status.CopyFrom(app.rollout)
    else:  # a rollout whose start no apply recorded (an app stored before rollouts were tracked)
        status.CopyFrom(started(app.generation, now))
    if status.reason == COMPLETE:
        return status
    if seen.done:
        status.reason = COMPLETE
        status.message = f"generation {app.generation}: {seen.desired} of {seen.desired} instances ready"
        return status
    if seen.available > status.ready:
        status.ready = seen.available
        status.progressed_at.CopyFrom(ts(now))
        status.reason, status.message = PROGRESSING, ""
    deadline = deadline_of(app.spec)
    if status.reason == PROGRESSING and now - seconds(status.progressed_at) > deadline:
        status.reason = DEADLINE_EXCEEDED
        status.message = (
            f"generation {app.generation}: {seen.available} of {seen.desired} instances ready, "
            f"none more for {deadline:g}s; rolling no further (apply a fix or `orch rollout undo`)"
        )
    return status


def is_stuck(app: pb.App) -> bool:
    return app.rollout.generation == app.generation and app.rollout.reason == DEADLINE_EXCEEDED
