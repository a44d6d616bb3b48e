"""snapshot → reconcile → place → commit, level-triggered.

A pass runs when something under the prefix changed (the watch sets the
trigger) and at least every RESYNC seconds. Writes that lose a revision
race are dropped and the next pass, from a fresh snapshot, decides again;
the rest of the plan still lands, so a busy key cannot starve the loop.

A pass reads the watch-fed cache (cache.py), as Kubernetes' controllers read
their informers: reading 10,000 instances from etcd for every burst of
status reports cost ~0.9 s of the process's one interpreter. It does so only
once the cache has seen etcd's current revision, read with a quorum read
just before (a consistent read from cache, as kube-apiserver's): a copy
without the last pass's own creations would create them again, and a watch
that hangs must not hide a lapsed lease. A pass whose cache lags, and one
every FULL_READ_EVERY seconds, reads etcd itself.

Every write is fenced on the leader key: once another scheduler leads (or
the key is gone) the pass stops and writes nothing more.

Each pass also hands reconcile() what liveness needs beyond the snapshot
(`Liveness`): the end of the grace after this scheduler took the lead or got
etcd back (`reconnect_grace`), the nodes seen back since (Ready in a snapshot
read once leases that lapsed meanwhile are surely gone; after an etcd outage,
with a lease key written since), and which nodes beat on this scheduler. When
a hold starts (instances of NotReady nodes kept, liveness.py), it says why
once: an event per node, a log line and the orch_scheduler_evictions_held
gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from orch.v1 import types_pb2 as pb
from scheduler.cache import ClusterCache
from scheduler.compaction import Compactor
from scheduler.errors import NotLeader, StoreUnavailable
from scheduler.events import EventLog
from scheduler.liveness import (
    ETCD_EXPIRY_TICK,
    GRACE,
    TOO_MANY_NOT_READY,
    Hold,
    Liveness,
    holder_confirm,
    reconnect_grace,
)
from scheduler.metrics import SchedulerMetrics
from scheduler.placement import NodeView, Placement, node_views, place_all, request_for
from scheduler.reconcile import DEFAULT_POLICY, Plan, Policy, event, instance_event, reconcile
from scheduler.snapshot import ClusterSnapshot, HydrationMemo, wants_to_run
from scheduler.store import Delete, Fence, Put, Store, Write
from scheduler.timeutil import seconds, ts

log = logging.getLogger(__name__)

RESYNC = 2.0
FULL_READ_EVERY = 30.0  # s: etcd itself, not the cache, at least this often
MIN_INTERVAL = 0.05  # a burst of watch events (status reports) coalesces into one pass
EVENTS_PER_APP = 20  # per pass; beyond it one summary event
SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # no vowels: no accidental words


# Names need to be unique, not unguessable (unique_suffixes checks): one seeded generator, not
# five reads of os.urandom per name (a tenth of planning 10,000 replicas).
_suffix_rng = random.Random()


def random_suffix() -> str:
    return "".join(_suffix_rng.choices(SUFFIX_ALPHABET, k=5))


def unique_suffixes(existing: Iterable[str]) -> Callable[[], str]:
    """Suffixes no instance in the snapshot or in this pass uses: 27^5 names
    collide by the birthday bound after a few thousand instances."""
    taken = {name.rpartition("-")[2] for name in existing}

    def fresh() -> str:
        while (suffix := random_suffix()) in taken:
            pass
        taken.add(suffix)
        return suffix

    return fresh


@dataclass(frozen=True, slots=True)
class Cached:
    """The cache's records for a pass: everything etcd held at fresh_at is in them; taken at
    seen_at (later: they may hold changes since fresh_at too)."""

    snap: ClusterSnapshot
    fresh_at: float
    seen_at: float


@dataclass(frozen=True, slots=True)
class PassResult:
    revision: int
    writes: int
    placed: int
    unschedulable: int
    refused: int  # lost a race; the next pass redoes them
    hold: Hold | None = None
    recheck_at: float | None = None  # a hold ends then
    cpu_seconds: float = 0.0  # the pass's own thread's CPU time: what it took from the sessions


def place_pending(plan: Plan, snap: ClusterSnapshot, now: float) -> tuple[list[pb.Instance], int]:
    """Give nodes to new and still-Pending instances; returns (changed instances, placed count)."""
    updating = {inst.name for inst, _ in plan.update} | {inst.name for inst, _ in plan.delete}
    pending = list(plan.create) + sorted(
        (
            v.value
            for v in snap.instances.values()
            if not v.value.node and wants_to_run(v.value) and v.value.name not in updating
        ),
        key=lambda i: (seconds(i.created_at), i.name),
    )
    if not pending:  # most passes: no need to account for every node
        return [], 0
    views = node_views(snap)
    ordered: list[NodeView] = [views[n] for n in sorted(views)]
    results = place_all([request_for(inst.spec, frozenset(inst.avoid_nodes)) for inst in pending], ordered)
    created = {c.name for c in plan.create}
    changed: list[pb.Instance] = []
    per_app: Counter[str] = Counter()
    for inst, result in zip(pending, results, strict=True):
        fresh = inst.name in created
        new = inst if fresh else _copy(inst)  # new instances are ours to change
        if isinstance(result, Placement):
            new.node = result.node
            new.status.state = pb.INSTANCE_STATE_SCHEDULED
            new.status.reason = ""
            new.status.message = ""
            per_app[new.app] += 1
            if per_app[new.app] <= EVENTS_PER_APP:
                plan.events.append(instance_event(now, new, "Scheduled", f"assigned to {result.node}"))
        else:
            new.status.state = pb.INSTANCE_STATE_PENDING
            new.status.reason = "Unschedulable"
            new.status.message = result.message
        if fresh or new.node != inst.node or new.status != inst.status:
            new.updated_at.CopyFrom(ts(now))
            changed.append(new)
    for app, n in per_app.items():
        if n > EVENTS_PER_APP:  # a summary instead of thousands of lines
            plan.events.append(event(now, "App", app, "Scheduled", f"{n} instances assigned to nodes"))
    return changed, sum(per_app.values())


def _copy(inst: pb.Instance) -> pb.Instance:
    new = pb.Instance()
    new.CopyFrom(inst)
    return new


def plan_writes(plan: Plan, placed: list[pb.Instance], snap: ClusterSnapshot, store: Store) -> list[Write]:
    keys = store.keys
    created = {i.name for i in plan.create}
    writes: list[Write] = []
    for inst in placed:
        expect = 0 if inst.name in created else snap.instances[inst.name].mod_revision
        writes.append(Put(keys.instance(inst.app, inst.name), inst, expect))
    for inst, rev in plan.update:
        writes.append(Put(keys.instance(inst.app, inst.name), inst, rev))
    for inst, rev in plan.delete:
        writes.append(Delete(keys.instance(inst.app, inst.name), rev))
    for app, rev in plan.apps:  # its rollout status; an apply meanwhile wins, the next pass decides again
        writes.append(Put(keys.app(app.spec.name), app, rev))
    for name, generation, rev in plan.forget:
        writes.append(Delete(keys.generation(name, generation), rev))
    return writes


def landed(events: list[pb.Event], refused: list[Write]) -> list[pb.Event]:
    """The events whose writes took effect: "replacing" must not be said of an instance
    that a race kept from being marked Lost (the next pass decides again and says it then)."""
    if not refused:
        return events
    lost: set[tuple[str, str]] = set()
    for w in refused:
        if isinstance(w, Delete):
            lost.add(("Instance", w.key.rsplit("/", 1)[-1]))
        elif isinstance(w.value, pb.Instance):
            lost.add(("Instance", w.value.name))
        elif isinstance(w.value, pb.App):
            lost.add(("App", w.value.spec.name))
    return [e for e in events if (e.kind, e.object) not in lost]


class Reconciler:
    def __init__(
        self,
        store: Store,
        events: EventLog,
        clock: Callable[[], float] = time.time,
        resync: float = RESYNC,
        metrics: SchedulerMetrics | None = None,
        policy: Policy = DEFAULT_POLICY,
        heartbeats: Callable[[], tuple[frozenset[str], frozenset[str]]] = lambda: (frozenset(), frozenset()),
        lease_ttl: float = 1.0,
        compactor: Compactor | None = None,
        identity: str = "",
        cache: ClusterCache | None = None,
    ) -> None:
        """heartbeats: (beating, silent) nodes of this scheduler's sessions; lease_ttl: the node
        lease, from which the grace after this scheduler took the lead or got etcd back follows;
        identity: this scheduler's, as named on the lease keys its sessions keep alive; cache:
        what passes read when it is current (None: every pass reads etcd)."""
        self._cache = cache
        self._memo: HydrationMemo = {}
        self._read_due = 0.0  # monotonic time of the next pass that reads etcd itself
        self._identity = identity
        self._confirm = holder_confirm(lease_ttl)
        self._quiet_after = lease_ttl
        self._holder: dict[str, str] = {}  # node -> the scheduler last seen keeping its lease
        self._lapsed: dict[str, float] = {}  # node on another scheduler -> when first seen NotReady
        self._gone: dict[str, float] = {}  # scheduler -> when its presence was first seen gone
        self._policy = policy
        self._heartbeats = heartbeats
        self.grace = reconnect_grace(lease_ttl)
        # A lease that lapsed during an outage is gone from etcd within a TTL and one expiry tick.
        self._settle = lease_ttl + ETCD_EXPIRY_TICK
        self._led: Fence | None = None
        self._lead_since = 0.0
        self._grace_since = 0.0
        self._grace_revision = 0  # of the first snapshot read once the grace began (0: none yet)
        self._after_outage = False  # the grace follows an etcd outage: a lease key is no evidence
        self._recovered: set[str] = set()  # nodes seen Ready since the grace began
        self._held: dict[str, str] = {}  # node -> hold reason, to say it once
        self._wakeup: asyncio.TimerHandle | None = None
        self._store = store
        self._metrics = metrics or SchedulerMetrics()
        self._events = events
        self._clock = clock
        self._resync = resync
        self._compactor = compactor
        self.trigger = asyncio.Event()
        self.last_pass_at = 0.0  # monotonic time of the last good pass (health)
        self._last_cpu = 0.0  # CPU seconds of the last pass
        self._ended = float("-inf")  # monotonic time the last pass ended

    def liveness(self, fence: Fence | None) -> Liveness:
        """What reconcile() needs beyond the snapshot. On the event loop (the sessions live there)."""
        now = self._clock()
        if fence is not None and fence != self._led:
            self._led, self._lead_since = fence, now
        who = fence.identity if fence is not None and fence.identity else "this scheduler"
        starts = [(self._lead_since, f"{who} became the leader {now - self._lead_since:.0f}s ago")]
        contact = self._store.contact
        if contact.in_outage():  # leases may be lapsing right now; the grace starts once etcd answers
            starts.append((now, f"etcd has not answered for {contact.down_for():.0f}s"))
        elif contact.back_at:
            starts.append((contact.back_at, f"etcd answered again after {contact.outage:.1f}s"))
        since, why = max(starts)
        if since != self._grace_since:
            self._grace_since, self._grace_revision, self._recovered = since, 0, set()
        # etcd's new leader extends every lease by a TTL and an election timeout, so for a while
        # after an outage a lease key outlives an agent that is not there any more.
        self._after_outage = contact.in_outage() or now < contact.back_at + self.grace
        beating, silent = self._heartbeats()
        # A session here that stays quiet for a lease after the grace began (after this process
        # or etcd came back) lost its agent, whatever etcd did: no grace for that node.
        quiet = silent if now >= since + self._quiet_after else frozenset()
        return Liveness(since + self.grace, why, beating, silent, quiet=quiet)

    def _seen(self, live: Liveness, snap: ClusterSnapshot, read_at: float, seen_at: float) -> Liveness:
        """Note the nodes that showed they are back: after a leadership change, Ready in a
        snapshot read once the old leases had time to lapse; after an etcd outage, Ready with
        a lease key written since the grace began (the agent registered or renewed).
        read_at: snap holds everything etcd held then; seen_at: when it was taken (the same for
        a read of etcd; later for the cache's, which may also hold changes since read_at)."""
        if read_at >= self._grace_since and not self._grace_revision:
            self._grace_revision = snap.revision
        if self._after_outage:
            since = self._grace_revision
            if since:
                self._recovered |= {n for n in snap.live_nodes if snap.lease_revisions.get(n, 0) > since}
        elif read_at >= self._grace_since + self._settle:
            self._recovered |= snap.live_nodes
        return replace(live, recovered=frozenset(self._recovered), away=self._away(snap, seen_at))

    def _away(self, snap: ClusterSnapshot, seen_at: float) -> dict[str, tuple[float, str]]:
        """NotReady nodes whose lease another scheduler kept: held while that scheduler is gone
        (a grace from when it went) or until its presence could have lapsed too. seen_at: when
        snap was taken (a lapse in it is dated then, never earlier)."""
        self._holder = {n: s for n, s in self._holder.items() if n in snap.nodes} | dict(snap.lease_holders)
        self._gone = {s: t for s, t in self._gone.items() if s not in snap.schedulers}
        away: dict[str, tuple[float, str]] = {}
        for node, holder in self._holder.items():
            if node in snap.live_nodes or not holder or holder == self._identity:
                self._lapsed.pop(node, None)
                continue
            lapsed = self._lapsed.setdefault(node, seen_at)
            if holder in snap.schedulers:
                away[node] = (lapsed + self._confirm, f"scheduler {holder}, which kept its lease, may be going away")
            else:
                gone = self._gone.setdefault(holder, seen_at)
                away[node] = (gone + self.grace, f"scheduler {holder}, which kept its lease, went away")
        return away

    async def _cached(self) -> Cached | None:
        """The cache's records (not yet hydrated) if they hold everything etcd held now (the
        cache's `current`), else None: the pass reads etcd."""
        if self._cache is None or time.monotonic() >= self._read_due:
            return None
        fresh_at = self._clock()
        snap = await self._cache.current()
        return Cached(snap, fresh_at, self._clock()) if snap is not None else None

    def run_once(
        self, fence: Fence | None = None, liveness: Liveness | None = None, cached: Cached | None = None
    ) -> PassResult:
        """One pass, over `cached` (the cache's records) or else a snapshot read from etcd.
        Blocking: run it in a thread.

        Writes that lost a race (their key changed since the snapshot) are
        dropped and the next pass, from a fresh snapshot, decides again.
        Raises NotLeader when the fence no longer holds.
        """
        t0, read_at, cpu0 = time.monotonic(), self._clock(), time.thread_time()
        seen_at = read_at
        if cached is not None:
            snap, read_at, seen_at = cached.snap.hydrated(self._memo), cached.fresh_at, cached.seen_at
        else:
            snap = self._store.snapshot()
            self._read_due = time.monotonic() + FULL_READ_EVERY
        t1 = time.monotonic()
        now = self._clock()
        if liveness is not None:
            liveness = self._seen(liveness, snap, read_at, seen_at)
        plan = reconcile(snap, now, unique_suffixes(snap.instances), self._policy, liveness)
        self._record(self._note_hold(plan.hold, now))
        placed, n_placed = place_pending(plan, snap, now)
        writes = plan_writes(plan, placed, snap, self._store)
        t2 = time.monotonic()
        if not writes:
            self.last_pass_at = time.monotonic()
            return PassResult(snap.revision, 0, 0, 0, 0, plan.hold, plan.recheck_at, time.thread_time() - cpu0)
        revision, refused = self._store.commit_partial(writes, fence)
        if len(refused) < len(writes):
            self._record(landed(plan.events, refused))
        self.last_pass_at = time.monotonic()
        log.debug(
            "pass: %s %.3fs (%d instances), plan %.3fs, commit %.3fs, %d of %d writes lost a race",
            "cache" if cached is not None else "snapshot",
            t1 - t0,
            len(snap.instances),
            t2 - t1,
            self.last_pass_at - t2,
            len(refused),
            len(writes),
        )
        written = len(writes) - len(refused)
        unschedulable = len(placed) - n_placed
        cpu = time.thread_time() - cpu0
        return PassResult(revision, written, n_placed, unschedulable, len(refused), plan.hold, plan.recheck_at, cpu)

    def _record(self, events: list[pb.Event]) -> None:
        self._events.record(events)

    def _note_hold(self, hold: Hold | None, now: float) -> list[pb.Event]:
        """Events (and a log line) for nodes newly held; the gauge for all."""
        held = {n: hold.reason for n in hold.nodes} if hold is not None else {}
        new = sorted(n for n, reason in held.items() if self._held.get(n) != reason)
        if self._held and not held:
            log.info("evicting again: no node is held any more")
        self._held = held
        for reason in (GRACE, TOO_MANY_NOT_READY):
            self._metrics.evictions_held.labels(reason).set(sum(r == reason for r in held.values()))
        if hold is None or not new:
            return []
        self._metrics.eviction_holds.labels(hold.reason).inc()
        log.warning("not evicting %s: %s", ", ".join(new), hold.message)
        return [event(now, "Node", n, hold.reason, hold.message, warning=True) for n in new]

    def _wake_at(self, at: float) -> None:
        """Run a pass at `at` (unix seconds) even if nothing changes: a hold ends then."""
        if self._wakeup is not None:
            self._wakeup.cancel()
        delay = max(MIN_INTERVAL, at - self._clock())
        self._wakeup = asyncio.get_running_loop().call_later(delay, self.trigger.set)

    async def run(self, leadership: Callable[[], Fence | None]) -> None:
        """leadership: the fence while this scheduler leads, else None."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.trigger.wait(), timeout=self._resync)
            # Never spend more than about half the CPU reconciling: a pass over a big
            # cluster is CPU-bound and shares the process with the sessions. The wait
            # counts from the end of the last pass, so the first change after a quiet
            # spell (an apply, a scale) is acted on at once, and a burst of status
            # reports still coalesces into passes MIN_INTERVAL apart at least. It is as
            # long as the last pass's CPU time, not its wall time: a cheap pass slowed by
            # the sessions' own work (5,000 agents registering: 0.3 s of CPU over 6.5 s)
            # held the next apply back for those 6.5 s.
            await asyncio.sleep(max(0.0, self._ended + max(MIN_INTERVAL, self._last_cpu) - time.monotonic()))
            self.trigger.clear()
            fence = leadership()
            if fence is None:
                self._memo.clear()  # a follower keeps no copies for passes it does not run
                continue
            try:
                cached = await self._cached()
                started = time.monotonic()  # a wait for the cache: not in the pass's duration
                result = await asyncio.to_thread(self.run_once, fence, self.liveness(fence), cached)
            except NotLeader as e:  # the election notices too; no retrying writes meanwhile
                self._metrics.reconcile_passes.labels("not_leader").inc()
                log.warning("reconcile pass dropped: %s", e)
                continue
            except Exception as e:  # the loop must outlive any one bad pass
                self._read_due = 0.0  # the next pass reads etcd itself
                self._metrics.reconcile_passes.labels("error").inc()
                if isinstance(e, StoreUnavailable):
                    log.warning("reconcile pass failed: %s", e)
                else:
                    log.exception("reconcile pass failed")
                await asyncio.sleep(0.2)
                self.trigger.set()
                continue
            self._ended = time.monotonic()
            self._last_cpu = result.cpu_seconds
            if result.refused:
                self.trigger.set()
            if result.recheck_at is not None:
                self._wake_at(result.recheck_at)
            if self._compactor is not None and self._compactor.due():
                await asyncio.to_thread(self._compactor.after_pass, result.revision)
            self._metrics.reconcile_passes.labels("ok").inc()
            self._metrics.reconcile_seconds.observe(self._ended - started)
            self._metrics.placements.inc(result.placed)
            if result.writes:
                log.info(
                    "reconciled: %d writes, %d placed, %d unschedulable",
                    result.writes,
                    result.placed,
                    result.unschedulable,
                )
