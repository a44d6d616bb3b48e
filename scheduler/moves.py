"""Why an instance moves, and which new instance stands in for which departing one.

An instance *departs* when it leaves to run elsewhere rather than for good: its node was lost,
the node drains, it kept crashing there, its agent gave up on it or fenced it, or a rollout
replaces its generation. Each new instance the reconciler creates for an app takes the first
unclaimed departing one as `Instance.replaces` (with the reason and message that one's stop
carries), so `orch explain` can say why it exists. Each departing instance is claimed at most
once: one that some record of the app already names is not offered again, on this pass or a later
one. Stops that are no move (scaled down, app deleted) are never offered, so scale-ups and first
creations replace nothing. Pure: reconcile.py gives the app's records as its pass leaves them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from orch.v1 import types_pb2 as pb
from scheduler.timeutil import seconds, ts

FENCED_REASON = "NodeLost"  # node/worker.py's report: killed by its own agent (onNodeLost: Stop)
# The reasons a departing instance's stop carries (reconcile.py writes them): only these are moves.
LOST, DRAINED, CRASH_LOOP, AGENT_ERROR, FENCED, ROLLED = (
    "NodeLost",
    "Drained",
    "CrashLoop",
    "AgentError",
    "Fenced",
    "Replaced",
)
MOVES = frozenset({LOST, DRAINED, CRASH_LOOP, AGENT_ERROR, FENCED, ROLLED})


def fenced(inst: pb.Instance) -> bool:
    """Its agent killed it for good when the node's lease may have expired (node/fencing.py)."""
    return inst.status.state == pb.INSTANCE_STATE_FAILED and inst.status.reason == FENCED_REASON


def agent_gave_up(inst: pb.Instance) -> bool:
    """The agent failed to run it, again and again: it will not run on that node."""
    return inst.status.state == pb.INSTANCE_STATE_FAILED and inst.status.reason == AGENT_ERROR


def departure(inst: pb.Instance, generation: int) -> tuple[str, str]:
    """Why an instance that must move (reconcile.must_migrate) or runs an older generation than
    `generation` leaves: the reason and message its stop carries, and its replacement's `replaces`."""
    if inst.app_generation != generation:
        return ROLLED, f"rollout to generation {generation}"
    if agent_gave_up(inst):
        return AGENT_ERROR, f"the agent on {inst.node} could not run it"
    if fenced(inst):
        return FENCED, f"its agent on {inst.node} killed it when it lost touch"
    if inst.status.reason == "CrashLoopBackOff":
        return CRASH_LOOP, f"restarted {inst.status.restarts} times on {inst.node} (CrashLoopBackOff)"
    return DRAINED, f"node {inst.node} is draining"


def departing(records: Iterable[pb.Instance], moving: Sequence[pb.Instance], generation: int) -> list[pb.Instance.Move]:
    """What new instances may stand in for, first offered first. records: the app's instances as
    this pass leaves them; moving: those that must leave, in the order they will be stopped.
    Those stopped for a move come first (their slot is empty now), earliest stop first; then the
    movers still running. Claimed ones are left out."""
    latest = {i.name: i for i in records}
    claimed = {i.replaces.instance for i in latest.values() if i.replaces.instance}
    stopped = sorted(
        (i for i in latest.values() if i.desired == pb.DESIRED_STATE_STOP and i.status.reason in MOVES),
        key=lambda i: (seconds(i.updated_at), i.name),
    )
    offered = [_move(i, i.status.reason, i.status.message, seconds(i.updated_at)) for i in stopped]
    for inst in moving:
        if latest.get(inst.name, inst).desired != pb.DESIRED_STATE_STOP:
            offered.append(_move(inst, *departure(inst, generation), None))
    return [m for m in offered if m.instance not in claimed]


def _move(inst: pb.Instance, reason: str, message: str, at: float | None) -> pb.Instance.Move:
    move = pb.Instance.Move(instance=inst.name, node=inst.node, reason=reason, message=message)
    if at is not None:
        move.at.CopyFrom(ts(at))
    return move


def assign(created: Sequence[pb.Instance], offered: Sequence[pb.Instance.Move], now: float) -> None:
    """Each new instance (ours to change) takes the next offered departure; the rest replace nothing."""
    for inst, move in zip(created, offered, strict=False):
        inst.replaces.CopyFrom(move)
        if not move.HasField("at"):  # still running: it leaves now, for this replacement
            inst.replaces.at.CopyFrom(ts(now))


def replaced_by(name: str, records: Iterable[pb.Instance]) -> str:
    """The instance that stands in for `name`, or ""."""
    return min((i.name for i in records if i.replaces.instance == name), default="")
