"""reconcile(): scaling, node loss, garbage collection, rollouts."""

from __future__ import annotations

import itertools

from orch.v1 import types_pb2 as pb
from scheduler.reconcile import LOST_RETENTION, reconcile
from scheduler.reconciler_loop import place_pending
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
