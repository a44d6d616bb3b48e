"""What should change: pure `reconcile(snapshot, now) -> Plan`.

Per app, instances fall into buckets (Nomad's names):
- *lost*: wants to run on a NotReady node that liveness.evictions() lets go
  → marked Lost and stopped, which frees its slot for a replacement (on a
  Restarting node, or while the control plane suspects itself, they stay
  untainted: held, not replaced);
- *untainted*: wants to run (current or older app generation);
- *stopping*: desired STOP; deleted once their node confirmed the stop (or
  the node is gone for longer than LOST_RETENTION).

Scaling and rollouts work on the untainted bucket with the app's
maxSurge/maxUnavailable; a rollout past its progress deadline rolls no further
(rollout.py, which also keeps the app's rollout status). Instances that must *migrate* (their node is
draining, they keep crashing there, its agent gave up on them or fenced them: killed them
because it had lost touch, `onNodeLost: Stop`) are handled like an older
generation: a replacement starts first and the old one stops once the app
can spare it. Which new instance stands in for which departing one, and why that one left, is
recorded on the new one (moves.py, for `orch explain`). Where new instances go is placement's job.

An instance whose template is not stored (hydrate.py: a hand-edited etcd) is stopped and replaced,
with a warning saying which generation is missing. Stored templates no instance runs are deleted
here too (`forget`): beyond an app's history (generations.prune), or all of a deleted app's once its
last instance is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from orch.v1 import types_pb2 as pb
from scheduler.generations import prune
from scheduler.hydrate import MISSING, missing
from scheduler.liveness import MAX_NOT_READY, Hold, Liveness, evictions
from scheduler.moves import DRAINED, LOST, agent_gave_up, assign, departing, departure, fenced
from scheduler.rollout import COMPLETE, DEADLINE_EXCEEDED, is_ready, is_stuck, next_status, progress
from scheduler.snapshot import ClusterSnapshot, Versioned, wants_to_run
from scheduler.timeutil import seconds, ts

LOST_RETENTION = 300.0  # seconds a Lost instance stays visible on a dead node
CRASHLOOP_RESTARTS = 5  # restarts in CrashLoopBackOff before the instance moves to another node
DONE = frozenset({pb.INSTANCE_STATE_STOPPED, pb.INSTANCE_STATE_SUCCEEDED, pb.INSTANCE_STATE_FAILED})
STARTED = frozenset(
    {
        pb.INSTANCE_STATE_STARTING,
        pb.INSTANCE_STATE_RUNNING,
        pb.INSTANCE_STATE_PULLING,
        pb.INSTANCE_STATE_SCHEDULED,
    }
)


@dataclass(frozen=True, slots=True)
class Policy:
    crashloop_restarts: int = CRASHLOOP_RESTARTS
    lost_retention: float = LOST_RETENTION
    max_not_ready: float = MAX_NOT_READY  # above this fraction of nodes down, nothing is evicted


DEFAULT_POLICY = Policy()


@dataclass(slots=True)
class Plan:
    create: list[pb.Instance] = field(default_factory=list)  # new, Pending, not placed
    update: list[tuple[pb.Instance, int]] = field(default_factory=list)  # (new value, expected mod_revision)
    delete: list[tuple[pb.Instance, int]] = field(default_factory=list)
    apps: list[tuple[pb.App, int]] = field(default_factory=list)  # a new rollout status: (app, mod_revision)
    forget: list[tuple[str, int, int]] = field(default_factory=list)  # stored templates to delete: (app, gen, rev)
    events: list[pb.Event] = field(default_factory=list)
    hold: Hold | None = None  # why instances of NotReady nodes were kept this pass
    recheck_at: float | None = None  # a hold ends then: run a pass even if nothing changes

    def extend(self, other: Plan) -> None:
        self.create += other.create
        self.update += other.update
        self.delete += other.delete
        self.apps += other.apps
        self.forget += other.forget
        self.events += other.events

    def is_empty(self) -> bool:
        return not (self.create or self.update or self.delete or self.apps or self.forget)


def event(now: float, kind: str, obj: str, reason: str, message: str, warning: bool = False) -> pb.Event:
    """A node's or an app's event (an app's names itself as its app)."""
    return pb.Event(
        time=ts(now),
        type="Warning" if warning else "Normal",
        kind=kind,
        object=obj,
        reason=reason,
        message=message,
        app=obj if kind == "App" else "",
    )


def instance_event(now: float, inst: pb.Instance, reason: str, message: str, warning: bool = False) -> pb.Event:
    """An instance's event, naming its app (`orch describe app` reads them under it)."""
    e = event(now, "Instance", inst.name, reason, message, warning)
    e.app = inst.app
    return e


def reconcile(
    snap: ClusterSnapshot,
    now: float,
    new_suffix: Callable[[], str],
    policy: Policy = DEFAULT_POLICY,
    liveness: Liveness | None = None,
) -> Plan:
    evict = evictions(snap, now, liveness or Liveness(), policy.max_not_ready)
    plan = Plan(hold=evict.hold, recheck_at=evict.recheck_at)
    for name in sorted(snap.app_names()):
        insts = snap.instances_of(name)
        plan.extend(reconcile_app(snap.apps.get(name), insts, snap, now, new_suffix, policy, evict.nodes))
    plan.forget = unused_generations(snap)
    return plan


def unused_generations(snap: ClusterSnapshot) -> list[tuple[str, int, int]]:
    """Stored templates that no instance runs and no history keeps: (app, generation, mod_revision)."""
    out = []
    for name, stored in sorted(snap.generations.items()):
        app = snap.apps.get(name)
        live = {v.value.app_generation for v in snap.instances_of(name)}
        gone = [] if live else sorted(stored)  # a deleted app's: once its last instance is gone
        doomed = gone if app is None else prune(stored, app.value.generation, live)
        out += [(name, g, stored[g]) for g in doomed]
    return out


def reconcile_app(
    app: Versioned[pb.App] | None,
    instances: list[Versioned[pb.Instance]],
    snap: ClusterSnapshot,
    now: float,
    new_suffix: Callable[[], str],
    policy: Policy = DEFAULT_POLICY,
    evict: frozenset[str] = frozenset(),
) -> Plan:
    """evict: the NotReady nodes whose instances are marked Lost now (liveness.evictions)."""
    plan = Plan()
    untainted: list[Versioned[pb.Instance]] = []
    overdue: list[Versioned[pb.Instance]] = []
    for v in instances:
        inst = v.value
        if not wants_to_run(inst):
            _collect_garbage(v, snap, now, plan, policy)
        elif not inst.HasField("spec"):  # its template is missing: nothing can run it
            _stop([v], MISSING, f"{missing(inst)}; replacing it", now, plan, warning=True)
        elif inst.node in evict:
            _mark_lost(v, now, plan)
        elif _drain_overdue(inst, snap, now):
            overdue.append(v)
        else:
            untainted.append(v)
    _stop(overdue, DRAINED, "drain deadline reached before a replacement was ready", now, plan)
    if app is None:
        _stop(untainted, "AppDeleted", "its app was deleted", now, plan)
    else:
        moving = _scale(_track_rollout(app, untainted, now, plan), untainted, snap, now, new_suffix, plan, policy)
        _link_replacements(plan, instances, moving, app.value.generation, now)
    return plan


def _link_replacements(
    plan: Plan, instances: list[Versioned[pb.Instance]], moving: list[pb.Instance], generation: int, now: float
) -> None:
    """Name on each new instance the departing one it stands in for (moves.py)."""
    if plan.create:
        after = {v.value.name: v.value for v in instances} | {i.name: i for i, _ in plan.update}
        assign(plan.create, departing(after.values(), moving, generation), now)


def _track_rollout(app: Versioned[pb.App], untainted: list[Versioned[pb.Instance]], now: float, plan: Plan) -> pb.App:
    """The app with its rollout status as of now; a changed status is written (and told once)."""
    status = next_status(app.value, progress(app.value, (v.value for v in untainted)), now)
    if status == app.value.rollout:
        return app.value
    new = pb.App()
    new.CopyFrom(app.value)
    new.rollout.CopyFrom(status)
    plan.apps.append((new, app.mod_revision))
    if status.reason != app.value.rollout.reason or status.generation != app.value.rollout.generation:
        name = app.value.spec.name
        if status.reason == DEADLINE_EXCEEDED:
            plan.events.append(event(now, "App", name, DEADLINE_EXCEEDED, status.message, warning=True))
        elif status.reason == COMPLETE:
            plan.events.append(event(now, "App", name, "RolloutComplete", status.message))
    return new


def _drain_overdue(inst: pb.Instance, snap: ClusterSnapshot, now: float) -> bool:
    node = snap.nodes.get(inst.node)
    if node is None or not node.value.draining or not node.value.HasField("drain_deadline"):
        return False
    return now >= seconds(node.value.drain_deadline)


def must_migrate(inst: pb.Instance, snap: ClusterSnapshot, policy: Policy) -> bool:
    """Its node is draining, it keeps crashing there, or its agent gave up on it."""
    node = snap.nodes.get(inst.node)
    if node is not None and node.value.draining:
        return True
    return crash_looping(inst, policy) or agent_gave_up(inst) or fenced(inst)


def crash_looping(inst: pb.Instance, policy: Policy) -> bool:
    return (
        policy.crashloop_restarts > 0
        and inst.status.reason == "CrashLoopBackOff"
        and inst.status.restarts >= policy.crashloop_restarts
        and inst.spec.restart_policy != pb.RESTART_POLICY_NEVER
    )


def _collect_garbage(v: Versioned[pb.Instance], snap: ClusterSnapshot, now: float, plan: Plan, policy: Policy) -> None:
    inst = v.value
    if not inst.node:
        plan.delete.append((inst, v.mod_revision))
    elif snap.is_ready(inst.node):
        if inst.status.state in DONE:
            plan.delete.append((inst, v.mod_revision))
    elif now - seconds(inst.updated_at) > policy.lost_retention or inst.node not in snap.nodes:
        plan.delete.append((inst, v.mod_revision))


def _mark_lost(v: Versioned[pb.Instance], now: float, plan: Plan) -> None:
    inst = pb.Instance()
    inst.CopyFrom(v.value)
    inst.desired = pb.DESIRED_STATE_STOP
    inst.status.state = pb.INSTANCE_STATE_LOST
    inst.status.reason = LOST
    inst.status.message = f'node "{inst.node}" stopped answering'
    inst.status.ready = False
    inst.updated_at.CopyFrom(ts(now))
    plan.update.append((inst, v.mod_revision))
    # The same words as its status and its replacement's `replaces` (moves.py).
    plan.events.append(instance_event(now, inst, "InstanceLost", f"{inst.status.message}; replacing", True))


def _stop(
    victims: Iterable[Versioned[pb.Instance]], reason: str, message: str, now: float, plan: Plan, warning: bool = False
) -> None:
    for v in victims:
        inst = pb.Instance()
        inst.CopyFrom(v.value)
        inst.desired = pb.DESIRED_STATE_STOP
        if inst.status.state in STARTED:
            inst.status.state = pb.INSTANCE_STATE_TERMINATING
        inst.status.reason = reason
        inst.status.message = message
        inst.updated_at.CopyFrom(ts(now))
        plan.update.append((inst, v.mod_revision))
        plan.events.append(instance_event(now, inst, "Stopping", message, warning))


def _stop_order(v: Versioned[pb.Instance]) -> tuple[int, int, int, float, str]:
    """Cheapest to lose first: unplaced, then not running, then not ready, then newest; the
    name breaks ties (the same victims whichever order the snapshot's records came in)."""
    inst = v.value
    return (
        0 if not inst.node else 1,
        0 if inst.status.state != pb.INSTANCE_STATE_RUNNING else 1,
        0 if not is_ready(inst) else 1,
        -seconds(inst.created_at),
        inst.name,
    )


def _scale(
    app: pb.App,
    untainted: list[Versioned[pb.Instance]],
    snap: ClusterSnapshot,
    now: float,
    new_suffix: Callable[[], str],
    plan: Plan,
    policy: Policy,
) -> list[pb.Instance]:
    """Creates and stops toward the app's replicas; returns what must leave, in the order it leaves."""
    spec = app.spec
    replicas = spec.replicas
    stuck = is_stuck(app)
    # Stuck: the template fails, not the node; a crash-looping new instance stays where it is.
    migrating = {
        v.value.name
        for v in untainted
        if must_migrate(v.value, snap, policy) and not (stuck and _own_crash_loop(v.value, app, snap, policy))
    }
    current = [v for v in untainted if v.value.app_generation == app.generation and v.value.name not in migrating]
    old = [v for v in untainted if v.value.app_generation != app.generation or v.value.name in migrating]
    # Replacements of crash-looping or given-up instances prefer other nodes.
    failing = [v.value for v in old if crash_looping(v.value, policy) or agent_gave_up(v.value)]
    avoid = sorted({n for inst in failing for n in (inst.node, *inst.avoid_nodes)})

    surge = spec.update.max_surge if spec.HasField("update") else 1
    unavailable = spec.update.max_unavailable if spec.HasField("update") else 0
    # Without old instances there is nothing to roll: converge straight to replicas. Stuck: a surge
    # only for what must migrate (a drain), none for the rollout.
    moving = [v for v in old if v.value.app_generation == app.generation] if stuck else old
    ceiling = replicas + surge if moving else replicas
    to_create = min(replicas - len(current), ceiling - len(untainted))
    for _ in range(max(0, to_create)):
        plan.create.append(new_instance(app, new_suffix(), now, avoid))
    if to_create > 0:
        plan.events.append(event(now, "App", spec.name, "ScalingUp", f"creating {to_create} instance(s)"))

    if len(current) > replicas:
        extra = sorted(current, key=_stop_order)[: len(current) - replicas]
        _stop(extra, "ScaledDown", f"app scaled to {replicas}", now, plan)
    if moving:  # stuck: the old generation keeps serving; migrations (drains, lost agents) go on
        _retire_old(app, moving, untainted, unavailable, now, plan)
    return [v.value for v in _retire_order(moving)]


def _own_crash_loop(inst: pb.Instance, app: pb.App, snap: ClusterSnapshot, policy: Policy) -> bool:
    """It must migrate only because it crash-loops, and it runs the app's current generation."""
    node = snap.nodes.get(inst.node)
    draining = node is not None and node.value.draining
    return inst.app_generation == app.generation and crash_looping(inst, policy) and not draining


def _retire_old(
    app: pb.App,
    old: list[Versioned[pb.Instance]],
    untainted: list[Versioned[pb.Instance]],
    max_unavailable: int,
    now: float,
    plan: Plan,
) -> None:
    """Stop old-generation instances without going below replicas - maxUnavailable ready."""
    replicas = app.spec.replicas
    in_order = _retire_order(old)
    ready = sum(1 for v in untainted if is_ready(v.value))
    # Readiness is the budget: a Pending replacement serves nobody yet. A lower
    # replica count raises the budget, so scaling down mid-rollout needs no extra case.
    budget = ready - (replicas - max_unavailable)
    unready = sum(1 for v in old if not is_ready(v.value))
    count = unready + max(0, min(len(old) - unready, budget))
    for v in in_order[:count]:
        _stop([v], *departure(v.value, app.generation), now, plan)


def _retire_order(old: list[Versioned[pb.Instance]]) -> list[Versioned[pb.Instance]]:
    """Not ready first (all of them go at once), then the cheapest to lose (_stop_order)."""
    return sorted(old, key=lambda v: (is_ready(v.value), _stop_order(v)))


def new_instance(app: pb.App, suffix: str, now: float, avoid_nodes: Iterable[str] = ()) -> pb.Instance:
    inst = pb.Instance(
        name=f"{app.spec.name}-{suffix}",
        app=app.spec.name,
        app_generation=app.generation,
        desired=pb.DESIRED_STATE_RUN,
        status=pb.InstanceStatus(state=pb.INSTANCE_STATE_PENDING),
        created_at=ts(now),
        updated_at=ts(now),
        avoid_nodes=list(avoid_nodes),
    )
    inst.spec.CopyFrom(app.spec)
    return inst
