"""reconcile(): scaling, node loss and liveness holds, garbage collection, rollouts."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest

from orch.v1 import types_pb2 as pb
from scheduler.liveness import (
    AGENT_RECONNECT_BACKOFF,
    GRACE,
    RECHECK_SOON,
    TOO_MANY_NOT_READY,
    Liveness,
    NodeState,
    evictions,
    node_state,
    reconnect_grace,
)
from scheduler.reconcile import LOST_RETENTION, reconcile
from scheduler.reconciler_loop import place_pending
from scheduler.timeutil import ts
from tests.factories import make_app, make_instance, make_node, make_snapshot, make_spec

NOW = 2000.0


def suffixes():
    counter = itertools.count()
    return lambda: f"s{next(counter)}"


def test_creates_missing_replicas_and_places_them_spread():
    app = make_app(make_spec(replicas=6))
    snap = make_snapshot([app], [make_node("a"), make_node("b"), make_node("c")])
    plan = reconcile(snap, NOW, suffixes())
    assert len(plan.create) == 6
    placed, n = place_pending(plan, snap, NOW)
    assert n == 6
    assert sorted(i.node for i in placed) == ["a", "a", "b", "b", "c", "c"]
    assert all(i.status.state == pb.INSTANCE_STATE_SCHEDULED for i in placed)


def test_same_state_twice_changes_nothing():
    app = make_app(make_spec(replicas=2))
    insts = [make_instance(app, "web-1", "a"), make_instance(app, "web-2", "b")]
    plan = reconcile(make_snapshot([app], [make_node("a"), make_node("b")], insts), NOW, suffixes())
    assert plan.is_empty()


def test_instances_on_a_dead_node_are_lost_and_replaced():
    app = make_app(make_spec(replicas=2))
    insts = [make_instance(app, "web-1", "a"), make_instance(app, "web-2", "b")]
    snap = make_snapshot([app], [make_node("a"), make_node("b")], insts, live={"a"})
    plan = reconcile(snap, NOW, suffixes())
    [(lost, rev)] = plan.update
    assert lost.name == "web-2" and rev == 20
    assert lost.status.state == pb.INSTANCE_STATE_LOST and lost.desired == pb.DESIRED_STATE_STOP
    assert len(plan.create) == 1
    placed, _ = place_pending(plan, snap, NOW)
    assert [i.node for i in placed] == ["a"]
    assert any(e.reason == "InstanceLost" for e in plan.events)


def test_scale_down_stops_pending_and_not_ready_first():
    app = make_app(make_spec(replicas=1))
    insts = [
        make_instance(app, "web-1", "a"),
        make_instance(app, "web-2", "", state=pb.INSTANCE_STATE_PENDING),
        make_instance(app, "web-3", "b", state=pb.INSTANCE_STATE_STARTING),
    ]
    plan = reconcile(make_snapshot([app], [make_node("a"), make_node("b")], insts), NOW, suffixes())
    assert sorted(i.name for i, _ in plan.update) == ["web-2", "web-3"]
    assert all(i.desired == pb.DESIRED_STATE_STOP for i, _ in plan.update)


def test_deleted_app_stops_everything():
    app = make_app(make_spec(replicas=2))
    insts = [make_instance(app, "web-1", "a"), make_instance(app, "web-2", "", state=pb.INSTANCE_STATE_PENDING)]
    plan = reconcile(make_snapshot([], [make_node("a")], insts), NOW, suffixes())
    assert {i.name for i, _ in plan.update} == {"web-1", "web-2"}
    assert all(i.status.reason == "AppDeleted" for i, _ in plan.update)


def test_stopped_instances_are_deleted_once_their_node_confirms():
    app = make_app(make_spec(replicas=0))
    done = make_instance(app, "web-1", "a", state=pb.INSTANCE_STATE_STOPPED)
    done.desired = pb.DESIRED_STATE_STOP
    stopping = make_instance(app, "web-2", "a", state=pb.INSTANCE_STATE_TERMINATING)
    stopping.desired = pb.DESIRED_STATE_STOP
    plan = reconcile(make_snapshot([app], [make_node("a")], [done, stopping]), NOW, suffixes())
    assert [i.name for i, _ in plan.delete] == ["web-1"]


def test_lost_instances_stay_visible_until_retention():
    app = make_app(make_spec(replicas=0))
    lost = make_instance(app, "web-1", "a", state=pb.INSTANCE_STATE_LOST, created=NOW - 10)
    lost.desired = pb.DESIRED_STATE_STOP
    snap = make_snapshot([app], [make_node("a")], [lost], live=set())
    assert reconcile(snap, NOW, suffixes()).delete == []
    assert [i.name for i, _ in reconcile(snap, NOW + LOST_RETENTION, suffixes()).delete] == ["web-1"]


def test_rollout_surges_one_then_retires_old_when_new_is_ready():
    app = make_app(make_spec(replicas=2), generation=2)
    old = [make_instance(app, f"web-{i}", "a", generation=1) for i in range(2)]
    plan = reconcile(make_snapshot([app], [make_node("a")], old), NOW, suffixes())
    assert len(plan.create) == 1 and plan.update == []  # maxSurge 1, maxUnavailable 0
    new = make_instance(app, "web-new", "a", generation=2)
    plan = reconcile(make_snapshot([app], [make_node("a")], [*old, new]), NOW, suffixes())
    assert len(plan.update) == 1 and plan.update[0][0].status.reason == "Replaced"
    assert plan.create == []


def test_unschedulable_instances_stay_pending_with_a_reason():
    app = make_app(make_spec(replicas=1, memory=1 << 40))
    snap = make_snapshot([app], [make_node("a")])
    plan = reconcile(snap, NOW, suffixes())
    placed, n = place_pending(plan, snap, NOW)
    assert n == 0
    assert placed[0].status.state == pb.INSTANCE_STATE_PENDING
    assert placed[0].status.message == "0/1 nodes available: 1 insufficient memory"


def test_new_instance_names_never_collide_with_existing_ones():
    from scheduler.reconciler_loop import unique_suffixes

    app = make_app(make_spec(replicas=20000))
    existing = [make_instance(app, f"web-{i:05d}", "a") for i in range(3)]
    fresh = unique_suffixes(i.name for i in existing)
    suffixes = [fresh() for _ in range(20000)]
    assert len(set(suffixes)) == 20000
    assert not {f"{i:05d}" for i in range(3)} & set(suffixes)


def test_an_instance_its_agent_gave_up_on_is_replaced_on_another_node():
    app = make_app(make_spec(replicas=2))
    failed = make_instance(app, "web-1", "a", state=pb.INSTANCE_STATE_FAILED, ready=False)
    failed.status.reason = "AgentError"
    retrying = make_instance(app, "web-2", "b", state=pb.INSTANCE_STATE_FAILED, ready=False)
    retrying.status.reason = "AgentErrorBackOff"  # still the agent's to retry
    snap = make_snapshot([app], [make_node("a"), make_node("b")], [failed, retrying])
    plan = reconcile(snap, NOW, suffixes())
    [new] = plan.create
    assert list(new.avoid_nodes) == ["a"]
    [(stopped, _)] = plan.update
    assert stopped.name == "web-1" and stopped.desired == pb.DESIRED_STATE_STOP
    assert stopped.status.reason == "AgentError" and "could not run it" in stopped.status.message
    placed, _ = place_pending(plan, snap, NOW)
    assert [i.node for i in placed] == ["b"]


# -- liveness: which NotReady nodes are evicted, and why the others are held ----------

# Node kinds: "ready" (lease key present), "down" (no lease), "idle-down" (no lease and no instances:
# a node that left for good), "restarting" (said goodbye; hold ends at NOW + 10), "restart-over"
# (its hold ended at NOW - 1). Every node but an idle one runs one instance.
GRACE_END = NOW + 5


def liveness_snapshot(kinds: dict[str, str]):
    app = make_app(make_spec(replicas=sum(k != "idle-down" for k in kinds.values())))
    nodes, insts = [], []
    for name, kind in kinds.items():
        node = make_node(name)
        if kind.startswith("restart"):
            node.restarting_until.CopyFrom(ts(NOW + 10 if kind == "restarting" else NOW - 1))
        nodes.append(node)
        if kind != "idle-down":
            insts.append(make_instance(app, f"web-{name}", name))
    live = {n for n, k in kinds.items() if k == "ready"}
    return make_snapshot([app], nodes, insts, live=live)


LIVENESS_TABLE = [
    # (case, nodes, liveness, evicted, hold reason)
    ("all ready", {"a": "ready", "b": "ready", "c": "ready"}, Liveness(), set(), None),
    ("one of three down", {"a": "ready", "b": "ready", "c": "down"}, Liveness(), {"c"}, None),
    ("one of two down: half is not more than half", {"a": "ready", "b": "down"}, Liveness(), {"b"}, None),
    ("two of three down at once", {"a": "ready", "b": "down", "c": "down"}, Liveness(), set(), TOO_MANY_NOT_READY),
    ("the only node down", {"a": "down"}, Liveness(), set(), TOO_MANY_NOT_READY),
    ("one down, one silent here (about to expire)", {"a": "ready", "b": "ready", "c": "down"},
     Liveness(silent=frozenset({"b"})), set(), TOO_MANY_NOT_READY),
    ("a silent node that is not Ready does not count twice", {"a": "ready", "b": "ready", "c": "ready", "d": "down"},
     Liveness(silent=frozenset({"d"})), {"d"}, None),
    ("nodes that left for good do not count", {"a": "ready", "b": "ready", "c": "down", "d": "idle-down",
     "e": "idle-down"}, Liveness(), {"c"}, None),
    ("restarting: held, whatever the lease", {"a": "ready", "b": "restarting"}, Liveness(), set(), None),
    ("restarting counts, but not as down", {"a": "ready", "b": "restarting", "c": "down"}, Liveness(), {"c"}, None),
    ("the restart hold ended", {"a": "ready", "b": "ready", "c": "restart-over"}, Liveness(), {"c"}, None),
    ("down but still beating here: its lease is being renewed", {"a": "ready", "b": "ready", "c": "down"},
     Liveness(beating=frozenset({"c"})), set(), None),
    ("grace after leadership or an etcd outage", {"a": "ready", "b": "ready", "c": "down"},
     Liveness(evict_from=GRACE_END, grace_reason="s1 became the leader 1s ago"), set(), GRACE),
    ("the grace is over", {"a": "ready", "b": "ready", "c": "down"}, Liveness(evict_from=NOW), {"c"}, None),
    ("seen Ready since the grace began: a failure like any other", {"a": "ready", "b": "ready", "c": "down"},
     Liveness(evict_from=GRACE_END, recovered=frozenset({"c"})), {"c"}, None),
    ("only the nodes not back yet are graced", {"a": "ready", "b": "ready", "c": "down", "d": "down"},
     Liveness(evict_from=GRACE_END, recovered=frozenset({"a", "b", "d"})), {"d"}, GRACE),
    ("everything down during the grace: said as a grace", {"a": "down", "b": "down"},
     Liveness(evict_from=GRACE_END), set(), GRACE),
    ("a grace holds nothing when nothing is down", {"a": "ready", "b": "ready"},
     Liveness(evict_from=GRACE_END), set(), None),
]  # fmt: skip


@pytest.mark.parametrize(("nodes", "live", "evicted", "hold"), [r[1:] for r in LIVENESS_TABLE],
                         ids=[r[0] for r in LIVENESS_TABLE])  # fmt: skip
def test_liveness_decides_which_not_ready_nodes_are_evicted(nodes, live, evicted, hold):
    snap = liveness_snapshot(nodes)
    decision = evictions(snap, NOW, live)
    assert decision.nodes == evicted
    assert (decision.hold.reason if decision.hold else None) == hold
    plan = reconcile(snap, NOW, suffixes(), liveness=live)
    lost = {i.node for i, _ in plan.update if i.status.state == pb.INSTANCE_STATE_LOST}
    assert lost == evicted
    assert len(plan.create) == len(evicted)  # held instances are not replaced
    assert plan.hold == decision.hold
    if decision.hold is not None:
        assert decision.hold.nodes and all(nodes[n] in ("down", "restart-over") for n in decision.hold.nodes)


RECHECK_TABLE = [
    # (case, nodes, liveness, when the decision may change by itself)
    ("nothing pending", {"a": "ready", "b": "down", "c": "ready"}, Liveness(), None),
    ("a restart hold ends", {"a": "ready", "b": "restarting"}, Liveness(), NOW + 10),
    ("the grace ends first", {"a": "ready", "b": "restarting", "c": "down", "d": "ready"},
     Liveness(evict_from=GRACE_END), GRACE_END),
    ("overdue heartbeats tipped it: look again soon", {"a": "ready", "b": "ready", "c": "down"},
     Liveness(silent=frozenset({"b"})), NOW + RECHECK_SOON),
]  # fmt: skip


@pytest.mark.parametrize(("nodes", "live", "at"), [r[1:] for r in RECHECK_TABLE], ids=[r[0] for r in RECHECK_TABLE])
def test_a_pass_says_when_a_hold_ends(nodes, live, at):
    assert evictions(liveness_snapshot(nodes), NOW, live).recheck_at == at


def test_hold_messages_say_why_and_what():
    snap = liveness_snapshot({"a": "ready", "b": "down", "c": "down"})
    paused = evictions(snap, NOW, Liveness()).hold
    assert paused is not None
    assert paused.message.startswith("2 of 3 nodes are not ready at once (b, c): suspecting the control plane")
    grace = evictions(snap, NOW, Liveness(evict_from=GRACE_END, grace_reason="s1 became the leader 1s ago")).hold
    assert grace is not None and grace.message == (
        "s1 became the leader 1s ago: agents have 5.0s more to re-register before the instances of b, c are replaced"
    )


@pytest.mark.parametrize(
    ("kind", "state"),
    [("ready", NodeState.READY), ("down", NodeState.NOT_READY), ("restarting", NodeState.RESTARTING),
     ("restart-over", NodeState.NOT_READY)],
)  # fmt: skip
def test_node_state(kind, state):
    assert node_state(liveness_snapshot({"n": kind}), "n", NOW) is state


def test_restarting_wins_over_a_lease_that_still_runs():
    snap = liveness_snapshot({"n": "restarting"})
    snap = make_snapshot(list(snap.apps[a].value for a in snap.apps), [snap.nodes["n"].value], live={"n"})
    assert node_state(snap, "n", NOW) is NodeState.RESTARTING


def test_the_grace_covers_a_lease_and_the_agents_reconnect_backoff():
    from node.session import BACKOFF_MAX, JITTER

    assert BACKOFF_MAX * JITTER[1] == AGENT_RECONNECT_BACKOFF
    assert reconnect_grace(1) > 1 + AGENT_RECONNECT_BACKOFF


class LoopStore:
    """What Reconciler.run_once needs of a Store: a snapshot to read, commits to record."""

    def __init__(self, clock):
        from scheduler.contact import Contact
        from scheduler.store import Keys

        self.keys = Keys("/orch/")
        self.contact = Contact(clock=clock)
        self.snap = make_snapshot()
        self.commits: list = []

    def snapshot(self):
        return self.snap

    def commit_partial(self, writes, fence=None):
        self.commits.append(writes)
        return 1, []


class NoEvents:
    def record(self, events):
        pass


def test_events_of_writes_that_lost_a_race_are_not_told():
    from scheduler.reconcile import event
    from scheduler.reconciler_loop import landed
    from scheduler.store import Delete, Put, Write

    app = make_app(make_spec(replicas=1))
    a = make_instance(app, "web-a", "n1")
    events = [
        event(1, "Instance", "web-a", "InstanceLost", "node n1 is not ready; replacing"),
        event(1, "Instance", "web-b", "InstanceLost", "node n1 is not ready; replacing"),
        event(1, "Instance", "web-c", "Deleted", "done"),
        event(1, "App", app.spec.name, "RolloutComplete", "done"),
    ]
    refused: list[Write] = [
        Put("/orch/instances/web/web-a", a, 3),
        Delete("/orch/instances/web/web-c", 4),
        Put("/orch/apps/web", app, 5),
    ]
    assert [e.object for e in landed(events, refused)] == ["web-b"]
    assert landed(events, []) == events


def test_evictions_hold_a_node_away_with_its_schedulers_reason():
    snap = liveness_snapshot({"a": "ready", "b": "ready", "c": "down"})
    live = Liveness(away={"c": (NOW + 3, "scheduler s2, which kept its lease, went away")})
    held = evictions(snap, NOW, live)
    assert held.nodes == frozenset() and held.hold is not None and held.hold.nodes == ("c",)
    assert "scheduler s2" in held.hold.message and "3.0s" in held.hold.message
    assert held.recheck_at == NOW + 3
    assert evictions(snap, NOW + 3, live).nodes == {"c"}


class Loop:
    """A Reconciler over LoopStore, an app with one instance per node, and a fake clock: each
    `lost` call reads a snapshot at a time and returns the nodes whose instances it marked Lost."""

    def __init__(self, nodes: str = "abc", identity: str = "", heartbeats=None) -> None:
        from scheduler.reconciler_loop import Reconciler

        self.clock = [100.0]
        self.store = LoopStore(lambda: self.clock[0])
        extra = {"heartbeats": heartbeats} if heartbeats is not None else {}
        self.loop = Reconciler(
            self.store,  # type: ignore[arg-type]
            NoEvents(),  # type: ignore[arg-type]
            clock=lambda: self.clock[0],
            lease_ttl=1,
            identity=identity,
            **extra,
        )
        self.app = make_app(make_spec(replicas=len(nodes)))
        self.insts = [make_instance(self.app, f"web-{n}", n) for n in nodes]
        self.nodes = [make_node(n) for n in nodes]

    def lost(self, at: float, live: Iterable[str], fence, **fields) -> set[str]:
        from dataclasses import replace

        self.clock[0] = at
        snap = make_snapshot([self.app], self.nodes, self.insts, live=set(live))
        self.store.snap = replace(snap, **fields) if fields else snap
        result = self.loop.run_once(fence, self.loop.liveness(fence))
        writes = self.store.commits.pop() if result.writes else []
        return {
            w.value.node for w in writes if isinstance(w.value, pb.Instance) and w.value.status.reason == "NodeLost"
        }


def test_the_loop_graces_only_nodes_not_seen_ready_since_it_took_the_lead():
    from scheduler.store import Fence

    t = Loop()
    first = Fence("/orch/leader", 7, "s1")
    assert t.lost(100.0, {"a", "b", "c"}, first) == set()  # the lead begins; too early to vouch for anyone
    assert t.lost(101.0, {"a", "b"}, first) == set()  # c not seen Ready since: graced
    assert t.lost(101.6, {"a", "b", "c"}, first) == set()  # read past a lease and an expiry tick: recovered
    assert t.lost(102.0, {"a", "b"}, first) == {"c"}  # a failure like any other, within the grace
    second = Fence("/orch/leader", 9, "s2")  # a new lead: everyone gets the grace again
    assert t.lost(103.0, {"a", "b"}, second) == set()
    assert t.lost(103.0 + reconnect_grace(1), {"a", "b"}, second) == {"c"}


def test_after_an_etcd_outage_only_a_lease_written_since_vouches_for_a_node():
    """etcd's new leader extends every lease: a lease key that outlived the outage is no sign
    of its agent, so a node is recovered only once its lease key was written again."""
    from scheduler.store import Fence

    t = Loop()
    fence = Fence("/orch/leader", 7, "s1")

    def lost_after(at: float, live: dict[str, int], revision: int) -> set[str]:
        return t.lost(at, live, fence, revision=revision, lease_revisions=live)

    assert lost_after(100.0, {"a": 5, "b": 5, "c": 5}, 50) == set()  # leading since 100
    t.store.contact.failed()
    t.clock[0] = 200.0
    t.store.contact.ok()  # etcd answers again at 200 after a 100 s outage
    assert lost_after(200.0, {"a": 5, "b": 5, "c": 5}, 60) == set()  # every lease extended by etcd
    assert lost_after(202.0, {"a": 61, "b": 62, "c": 5}, 62) == set()  # a and b registered again
    assert lost_after(203.0, {"a": 61, "b": 62}, 63) == set()  # c's stale lease lapsed: still graced
    assert lost_after(204.0, {"a": 61, "c": 64}, 64) == {"b"}  # b had shown it was back: a failure like any other
    assert lost_after(200.0 + t.loop.grace, {"a": 61, "c": 64}, 64) == {"b"}


def test_a_node_whose_scheduler_went_away_gets_the_grace_to_move():
    """Nodes whose lease another scheduler kept: one whose agent died is replaced once that
    scheduler's presence would have lapsed too; those of a scheduler that went away are held."""
    from scheduler.liveness import holder_confirm
    from scheduler.store import Fence

    t = Loop("abcd", identity="s1")
    fence = Fence("/orch/leader", 7, "s1")
    holders = {"a": "s1", "b": "s1", "c": "s2", "d": "s3"}

    def lost(at: float, live: set[str], schedulers: set[str]) -> set[str]:
        held = {n: s for n, s in holders.items() if n in live}
        return t.lost(at, held, fence, lease_holders=held, schedulers=frozenset(schedulers))

    lost(100.0, set(holders), {"s1", "s2", "s3"})  # leading since 100
    s0 = 100.0 + reconnect_grace(1)  # past the grace of the new lead
    assert lost(s0, {"a", "b", "c", "d"}, {"s1", "s2", "s3"}) == set()
    # d's agent dies; s3 is still there: held until s3's presence would have lapsed with it...
    assert lost(s0 + 0.1, {"a", "b", "c"}, {"s1", "s2", "s3"}) == set()
    # ...then a failure like any other.
    assert lost(s0 + 0.1 + holder_confirm(1), {"a", "b", "c"}, {"s1", "s2", "s3"}) == {"d"}
    del t.insts[3], t.nodes[3]  # (this fake store keeps no writes: d is gone from here on)
    # s2 goes away with c's lease (same moment, or its presence a tick later): c is held for the grace.
    t2 = s0 + 5
    assert lost(t2, {"a", "b"}, {"s1", "s2", "s3"}) == set()
    assert lost(t2 + 0.5, {"a", "b"}, {"s1", "s3"}) == set()
    assert lost(t2 + 0.5 + reconnect_grace(1) - 0.1, {"a", "b"}, {"s1", "s3"}) == set()
    assert lost(t2 + 0.5 + reconnect_grace(1), {"a", "b"}, {"s1", "s3"}) == {"c"}  # it never came back
    del t.insts[2], t.nodes[2]
    # A node of this scheduler's own sessions is not held at all.
    assert lost(t2 + 20, {"a"}, {"s1", "s3"}) == {"b"}


def test_a_session_quiet_for_a_lease_after_the_grace_began_gets_no_grace():
    """A host cut off just as etcd's keep-alives stalled: the grace after etcd came back is not
    for the node whose open session here went quiet (its agent stopped beating), once this
    scheduler has run for a lease since."""
    from scheduler.store import Fence

    quiet: set[str] = set()
    t = Loop(heartbeats=lambda: (frozenset({"a", "b", "c"} - quiet), frozenset(quiet)))
    fence = Fence("/orch/leader", 7, "s1")
    assert t.lost(100.0, {"a", "b", "c"}, fence) == set()
    t.clock[0] = 120.0
    t.store.contact.failed(ago=0.6)
    t.store.contact.ok()  # keep-alives stalled 0.6 s (their member was cut off with c's host)
    quiet.add("c")  # c's session here is open but quiet
    assert t.lost(120.2, {"a", "b"}, fence) == set()  # too soon after the stall to tell
    assert t.lost(121.0, {"a", "b"}, fence) == {"c"}  # a lease since: c's agent is gone, not etcd


def test_the_pause_between_passes_is_the_last_pass_cpu_time_not_its_wall_time(monkeypatch) -> None:
    """Passes take at most about half the scheduler's CPU: after one, the next waits as long as
    it computed. A pass that was slow only because the sessions held the interpreter (5,000 agents
    registering: 0.3 s of CPU over 6.5 s) used to hold the next apply back for its wall time."""
    import asyncio
    import time

    from scheduler.reconciler_loop import MIN_INTERVAL, PassResult
    from scheduler.store import Fence

    t = Loop()
    fence = Fence("/orch/leader", 7, "s1")
    passes = [(0.5, 0.01), (0.0, 2.0), (0.0, 0.0)]  # (wall s, CPU s) of each pass
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:  # records the pause instead of taking it
        pauses.append(delay)
        await real_sleep(0)

    def run_once(fence, liveness=None, cached=None) -> PassResult:
        wall, cpu = passes.pop(0)
        time.sleep(wall)  # in its thread, waiting: as for the interpreter behind busy sessions
        return PassResult(revision=1, writes=0, placed=0, unschedulable=0, refused=0, cpu_seconds=cpu)

    monkeypatch.setattr(t.loop, "run_once", run_once)
    monkeypatch.setattr(asyncio, "sleep", sleep)  # the loop's pause (test-wide: real_sleep drives the test)

    async def scenario() -> None:
        task = asyncio.create_task(t.loop.run(lambda: fence))
        while passes:
            t.loop.trigger.set()  # a change after each pass
            await real_sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert pauses[0] == 0.0  # the first change: at once
    assert pauses[1] <= MIN_INTERVAL  # after 0.5 s of waiting but 0.01 s of CPU: not 0.5 s
    assert 1.9 < pauses[2] <= 2.0  # after 2 s of CPU: as long again
