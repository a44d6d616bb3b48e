"""`orch drain NODE --dry-run`: the drain the scheduler would carry out, step by step.

It is simulated with the reconciler's own pure functions (reconcile, place_pending) on a copy
of the snapshot in which the node is draining: each step is one pass, after which every
replacement it placed is taken to be Running and ready at once and every instance it stopped
to be gone. So the plan follows the real rules (replacement first, maxSurge and
maxUnavailable per app, placement's filters and scores) but not the time they take: a
replacement that never becomes ready would hold its step for real."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from orch.v1 import types_pb2 as pb
from scheduler.reconcile import DEFAULT_POLICY, Plan, Policy, reconcile
from scheduler.reconciler_loop import place_pending
from scheduler.snapshot import ClusterSnapshot, Versioned, wants_to_run

MAX_STEPS = 100  # more passes than any drain of a sane node needs; the rest is reported blocked


@dataclass(frozen=True, slots=True)
class Step:
    started: tuple[tuple[str, str], ...]  # (what it replaces, else its app; node) of each replacement placed
    stopped: tuple[str, ...]  # instances leaving the node
    blocked: tuple[str, ...]  # "app: why its replacement cannot be placed"


@dataclass(frozen=True, slots=True)
class DrainPlan:
    node: str
    steps: tuple[Step, ...] = ()
    remaining: tuple[str, ...] = ()  # still on the node at the end: the deadline would stop them
    blocked: tuple[str, ...] = field(default=())


def plan_drain(snap: ClusterSnapshot, node: str, now: float, policy: Policy = DEFAULT_POLICY) -> DrainPlan:
    state = _draining(snap, node)
    counter = itertools.count(1)
    steps: list[Step] = []
    for _ in range(MAX_STEPS):
        apps = {i.app for i in _on(state, node)}
        if not apps:
            break
        plan = reconcile(state, now, lambda: f"new{next(counter)}", policy)
        placed, _ = place_pending(plan, state, now)
        started = tuple(sorted((i.replaces.instance or i.app, i.node) for i in placed if i.node and i.app in apps))
        stopped = tuple(sorted(i.name for i, _ in plan.update if i.node == node and not wants_to_run(i)))
        unplaced = [i for i in placed if not i.node and i.app in apps and i.status.message]
        blocked = tuple(sorted({f"{i.app}: {i.status.message}" for i in unplaced}))
        state = _advance(state, plan, placed)  # with no progress, this keeps the unplaced replacements
        if not started and not stopped:
            break
        steps.append(Step(started, stopped, blocked))
    left = _on(state, node)
    apps = {i.app for i in left}
    waiting = [v.value for v in state.instances.values() if not v.value.node and v.value.app in apps]
    blocked = tuple(sorted({f"{i.app}: {i.status.message}" for i in waiting if wants_to_run(i) and i.status.message}))
    return DrainPlan(node, tuple(steps), tuple(sorted(i.name for i in left)), blocked)


def _on(snap: ClusterSnapshot, node: str) -> list[pb.Instance]:
    return [v.value for v in snap.instances.values() if v.value.node == node and wants_to_run(v.value)]


def _draining(snap: ClusterSnapshot, node: str) -> ClusterSnapshot:
    nodes = dict(snap.nodes)
    if node in nodes:
        n = pb.Node()
        n.CopyFrom(nodes[node].value)
        n.unschedulable = n.draining = True
        n.ClearField("drain_deadline")  # the plan shows what happens before any deadline
        nodes[node] = Versioned(n, nodes[node].mod_revision)
    return replace(snap, nodes=nodes, _by_app={})  # the index is rebuilt from the instances


def _advance(snap: ClusterSnapshot, plan: Plan, placed: list[pb.Instance]) -> ClusterSnapshot:
    """The state after the pass, its starts done and its stops finished."""
    instances = dict(snap.instances)
    for inst, _ in plan.update:
        if wants_to_run(inst):
            instances[inst.name] = Versioned(inst, 0)
        else:
            instances.pop(inst.name, None)  # stopped and gone
    for inst, _ in plan.delete:
        instances.pop(inst.name, None)
    for inst in placed:
        new = pb.Instance()
        new.CopyFrom(inst)
        if new.node:
            new.status.state = pb.INSTANCE_STATE_RUNNING
            new.status.ready = True
        instances[new.name] = Versioned(new, 0)
    apps = dict(snap.apps)
    for app, _ in plan.apps:  # rollout statuses: the next pass judges from them, as the real one would
        apps[app.spec.name] = Versioned(app, 0)
    return replace(snap, instances=instances, apps=apps, _by_app={})
