"""Node liveness, pure: the state of a node, and whether the instances of
NotReady nodes may be declared Lost now (evicted) or are held.

A node is
- *Ready* while its lease key exists (its agent's heartbeats keep the lease alive);
- *Restarting* while the hold its agent asked for when it said goodbye
  (`Node.restarting_until`, a planned restart) has not passed: nothing on it
  is replaced, although its lease lapsed;
- *NotReady* otherwise. Its instances are evicted (marked Lost, replaced),
  unless the agent still beats on this scheduler (its lease lapsed, the next
  heartbeat renews it), or the control plane suspects itself:

- *grace* (`EvictionDelayed`): this scheduler just took the lead, or etcd
  answers again after an outage (`Liveness.evict_from`): agents first get a
  lease period plus their reconnect backoff to re-register. A node seen
  Ready again since then (`Liveness.recovered`) had its chance: if it goes
  NotReady now, that is a failure like any other. So has a node whose open
  session here stays quiet for a lease after the grace began
  (`Liveness.quiet`): its agent stopped beating while this scheduler and
  etcd worked (a host cut off just as etcd's keep-alives stalled);
- *its scheduler went away* (`EvictionDelayed` too, `Liveness.away`): the
  node's lease lapsed together with the presence of the scheduler its agent
  was on (scheduler/presence.py): the agent gets the same grace to move to
  another scheduler. A node on another scheduler that lapses while that
  scheduler is still present is held a moment longer (`holder_confirm`), in
  case the scheduler's presence lapses a heartbeat and an expiry tick later;
- *too many NotReady at once* (`EvictionPaused`): more than half of the
  nodes that matter are down (Kubernetes' unhealthyZoneThreshold). An etcd
  stall, a partition of the control plane or a scheduler that cannot keep
  leases alive looks like that; so many machines dying together rarely does.
  Nodes that matter are the Ready ones and those with instances that want
  to run (a node that left for good does not count for ever). Down are the
  NotReady ones among them and those whose heartbeats are overdue on this
  scheduler although their lease still runs: two agents that stopped
  together expire a moment apart, and must not be evicted one at a time.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from orch.v1 import types_pb2 as pb
from scheduler.snapshot import ClusterSnapshot, wants_to_run
from scheduler.timeutil import seconds

# node/session.py: BACKOFF_MAX (3 s) times its largest jitter (1.5): the longest an
# agent waits between two attempts to reach a scheduler.
AGENT_RECONNECT_BACKOFF = 4.5
REGISTRATION_MARGIN = 1.0  # to register: a lease grant and a transaction, on a busy machine
MAX_NOT_READY = 0.5  # fraction of the nodes that matter; above it nothing is evicted
ETCD_EXPIRY_TICK = 0.5  # s: etcd revokes expired leases on this tick (RECIPES §2)
RECHECK_SOON = 0.25  # s: when a hold rests on overdue heartbeats, which change without an etcd event

GRACE = "EvictionDelayed"
TOO_MANY_NOT_READY = "EvictionPaused"


def reconnect_grace(lease_ttl: float) -> float:
    """How long agents get to re-register after the control plane came back."""
    return lease_ttl + AGENT_RECONNECT_BACKOFF + REGISTRATION_MARGIN


def holder_confirm(lease_ttl: float) -> float:
    """How much later than a node's lease the presence of its (hung) scheduler may lapse: the node
    was renewed up to a heartbeat (a third of a lease) before the presence, which the keeper renews
    every tick (a quarter of one), and etcd revokes expired leases on its own tick."""
    return lease_ttl / 3 + lease_ttl / 4 + ETCD_EXPIRY_TICK + 0.15


class NodeState(enum.Enum):
    READY = "Ready"
    NOT_READY = "NotReady"
    RESTARTING = "Restarting"


def restarting_until(node: pb.Node) -> float:
    return seconds(node.restarting_until) if node.HasField("restarting_until") else 0.0


def node_state(snap: ClusterSnapshot, name: str, now: float) -> NodeState:
    node = snap.nodes.get(name)
    if node is not None and now < restarting_until(node.value):
        return NodeState.RESTARTING  # even while its lease still runs: it said goodbye
    return NodeState.READY if snap.is_ready(name) else NodeState.NOT_READY


@dataclass(frozen=True, slots=True)
class Liveness:
    """What the reconciler loop knows besides the snapshot."""

    evict_from: float = 0.0  # no instance is marked Lost before this (unix seconds)
    grace_reason: str = ""  # why, for the event: "scheduler s1 became the leader"
    beating: frozenset[str] = frozenset()  # nodes whose agent beats on this scheduler now
    silent: frozenset[str] = frozenset()  # nodes with a session here whose heartbeats are overdue
    recovered: frozenset[str] = frozenset()  # nodes seen Ready (for good) since the grace began
    # nodes whose session here has been silent since a lease after the grace began: their agent
    # stopped beating while this scheduler and etcd worked, so the grace is not for them
    quiet: frozenset[str] = frozenset()
    # NotReady nodes held for their scheduler: node -> (until when, why): it went away, or may yet
    away: Mapping[str, tuple[float, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hold:
    reason: str  # GRACE | TOO_MANY_NOT_READY: the event's reason
    message: str
    nodes: tuple[str, ...]  # the NotReady nodes whose instances are kept


@dataclass(frozen=True, slots=True)
class Evictions:
    nodes: frozenset[str]  # NotReady nodes whose instances are marked Lost now
    hold: Hold | None = None
    recheck_at: float | None = None  # when this decision may change without any new event


def evictions(snap: ClusterSnapshot, now: float, live: Liveness, max_not_ready: float = MAX_NOT_READY) -> Evictions:
    busy = {v.value.node for v in snap.instances.values() if v.value.node and wants_to_run(v.value)}
    states = {n: node_state(snap, n, now) for n in busy | set(snap.nodes)}
    dead = sorted(n for n in busy if states[n] is NodeState.NOT_READY and n not in live.beating)
    recheck = _next_change(snap, busy, now, live)
    if not dead:
        return Evictions(frozenset(), None, recheck)
    graced = [
        n
        for n in dead
        if (now < live.evict_from and n not in live.recovered and n not in live.quiet) or now < _away_until(live, n)
    ]
    if graced == dead:  # the control plane just came back: nobody had a chance to re-register yet
        return Evictions(frozenset(), _grace_hold(graced, now, live), recheck)
    counted = {n for n, s in states.items() if s is NodeState.READY} | busy
    down = set(dead) | (live.silent & counted)
    if len(down) > max_not_ready * len(counted):
        message = (
            f"{len(down)} of {len(counted)} nodes are not ready at once ({_names(sorted(down))}): suspecting "
            "the control plane (etcd, the network, this scheduler) rather than the nodes; their instances are "
            "not replaced while more than half are down (orch drain NODE moves them by hand)"
        )
        if len(dead) <= max_not_ready * len(counted):  # overdue heartbeats tipped it: they change without events
            recheck = min(filter(None, (recheck, now + RECHECK_SOON)))
        return Evictions(frozenset(), Hold(TOO_MANY_NOT_READY, message, tuple(dead)), recheck)
    hold = _grace_hold(graced, now, live) if graced else None
    return Evictions(frozenset(dead) - set(graced), hold, recheck)


def _away_until(live: Liveness, node: str) -> float:
    held = live.away.get(node)
    return held[0] if held is not None else 0.0


def _grace_hold(nodes: list[str], now: float, live: Liveness) -> Hold:
    away = [n for n in nodes if now < _away_until(live, n)]
    graced = [n for n in nodes if n not in away]
    parts = []
    if graced:
        parts.append(
            f"{live.grace_reason or 'the control plane just came back'}: agents have {live.evict_from - now:.1f}s "
            f"more to re-register before the instances of {_names(graced)} are replaced"
        )
    for n in away:
        until, why = live.away[n]
        parts.append(
            f"{why}: its agent has {until - now:.1f}s more to re-register before the instances of {n} are replaced"
        )
    return Hold(GRACE, "; ".join(parts), tuple(nodes))


def _next_change(snap: ClusterSnapshot, busy: set[str], now: float, live: Liveness) -> float | None:
    """The end of the grace, or of a restart hold on a node with instances."""
    ends = [restarting_until(snap.nodes[n].value) for n in busy if n in snap.nodes]
    ends.append(live.evict_from)
    ends.extend(until for until, _ in live.away.values())
    future = [t for t in ends if t > now]
    return min(future) if future else None


def _names(nodes: list[str], limit: int = 5) -> str:
    shown = ", ".join(nodes[:limit])
    return shown + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")
