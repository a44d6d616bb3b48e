"""scheduler/moves.py through reconcile(): which new instance stands in for which departing one,
and why that one left (issue 13 item 3, `orch explain` of a replacement)."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from orch.v1 import types_pb2 as pb
from scheduler.moves import replaced_by
from scheduler.reconcile import CRASHLOOP_RESTARTS, reconcile
from scheduler.snapshot import ClusterSnapshot
from scheduler.timeutil import seconds
from tests.factories import make_app, make_instance, make_node, make_snapshot, make_spec

NOW = 2000.0


def suffixes() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"n{next(counter)}"


def moves(snap: ClusterSnapshot, now: float = NOW) -> dict[str, tuple[str, str, str]]:
    """new instance -> (the one it replaces, reason, message) for one pass."""
    plan = reconcile(snap, now, suffixes())
    return {i.name: (i.replaces.instance, i.replaces.reason, i.replaces.message) for i in plan.create}


def test_a_replacement_of_an_instance_on_a_lost_node_names_it_and_the_loss() -> None:
    app = make_app(make_spec(replicas=2))
    insts = [make_instance(app, "web-1", "a"), make_instance(app, "web-2", "b")]
    plan = reconcile(make_snapshot([app], [make_node("a"), make_node("b")], insts, live={"a"}), NOW, suffixes())
    [new] = plan.create
    assert new.replaces.instance == "web-2" and new.replaces.node == "b"
    assert (new.replaces.reason, new.replaces.message) == ("NodeLost", 'node "b" stopped answering')
    assert seconds(new.replaces.at) == NOW
    [(lost, _)] = plan.update  # the same words as the lost one's own status
    assert (lost.status.reason, lost.status.message) == (new.replaces.reason, new.replaces.message)
    told = [e.message for e in plan.events if e.reason == "InstanceLost"]
    assert told == ['node "b" stopped answering; replacing']


def test_a_drain_replacement_names_the_instance_on_the_draining_node() -> None:
    app = make_app(make_spec(replicas=2))
    draining = make_node("b")
    draining.draining = True
    insts = [make_instance(app, "web-1", "a"), make_instance(app, "web-2", "b")]
    snap = make_snapshot([app], [make_node("a"), draining, make_node("c")], insts)
    assert moves(snap) == {"web-n0": ("web-2", "Drained", "node b is draining")}


def test_a_drain_without_surge_stops_first_and_the_next_pass_claims_the_stopped_one() -> None:
    spec = make_spec(replicas=2)
    spec.update.max_surge, spec.update.max_unavailable = 0, 1
    app = make_app(spec)
    draining = make_node("b")
    draining.draining = True
    nodes = [make_node("a"), draining, make_node("c")]
    insts = [make_instance(app, "web-1", "a"), make_instance(app, "web-2", "b")]
    first = reconcile(make_snapshot([app], nodes, insts), NOW, suffixes())
    assert not first.create
    [(stopped, _)] = first.update
    assert (stopped.name, stopped.status.reason) == ("web-2", "Drained")
    second = moves(make_snapshot([app], nodes, [insts[0], stopped]), NOW + 1)
    assert second == {"web-n0": ("web-2", "Drained", "node b is draining")}


def test_a_crash_looping_instance_is_replaced_elsewhere_and_named() -> None:
    app = make_app(make_spec(replicas=1))
    looping = make_instance(app, "web-1", "a", ready=False)
    looping.status.reason, looping.status.restarts = "CrashLoopBackOff", CRASHLOOP_RESTARTS
    plan = reconcile(make_snapshot([app], [make_node("a"), make_node("b")], [looping]), NOW, suffixes())
    [new] = plan.create
    assert list(new.avoid_nodes) == ["a"]
    why = f"restarted {CRASHLOOP_RESTARTS} times on a (CrashLoopBackOff)"
    assert (new.replaces.instance, new.replaces.reason, new.replaces.message) == ("web-1", "CrashLoop", why)
    assert not plan.update  # it counts as ready between crashes: it stops once the replacement is
    new.node, new.status.state, new.status.ready = "b", pb.INSTANCE_STATE_RUNNING, True
    later = reconcile(make_snapshot([app], [make_node("a"), make_node("b")], [looping, new]), NOW + 5, suffixes())
    [(stopped, _)] = later.update  # with the same words
    assert (stopped.name, stopped.status.reason, stopped.status.message) == ("web-1", "CrashLoop", why)
    assert not later.create


def test_given_up_and_fenced_instances_are_named_with_their_reasons() -> None:
    app = make_app(make_spec(replicas=2))
    gave_up = make_instance(app, "web-1", "a", state=pb.INSTANCE_STATE_FAILED, ready=False)
    gave_up.status.reason = "AgentError"
    fenced = make_instance(app, "web-2", "b", state=pb.INSTANCE_STATE_FAILED, ready=False)
    fenced.status.reason = "NodeLost"  # the agent's own report (node/worker.py)
    nodes = [make_node("a"), make_node("b"), make_node("c")]
    first = reconcile(make_snapshot([app], nodes, [gave_up, fenced]), NOW, suffixes())
    stopped = {i.name: i for i, _ in first.update}  # both at once (not ready); one surge: one new
    assert {n: i.status.reason for n, i in stopped.items()} == {"web-1": "AgentError", "web-2": "Fenced"}
    [new] = first.create
    assert (new.replaces.instance, new.replaces.message) == ("web-1", "the agent on a could not run it")
    second = make_snapshot([app], nodes, [*stopped.values(), new])  # the next pass claims the other
    assert moves(second, NOW + 1) == {"web-n0": ("web-2", "Fenced", "its agent on b killed it when it lost touch")}


def test_a_rollout_replacement_names_the_old_generation_instance_it_will_retire() -> None:
    app = make_app(make_spec(replicas=2), generation=2)
    old = [make_instance(app, "web-1", "a", generation=1), make_instance(app, "web-2", "b", generation=1)]
    old[0].created_at.seconds = 1500  # newest first (_stop_order): web-1 is the first to go
    assert moves(make_snapshot([app], [make_node("a"), make_node("b")], old)) == {
        "web-n0": ("web-1", "Replaced", "rollout to generation 2")
    }


def test_two_passes_do_not_claim_one_instance_twice_and_a_scale_up_replaces_nothing() -> None:
    app = make_app(make_spec(replicas=2))
    insts = [make_instance(app, "web-1", "a"), make_instance(app, "web-2", "b")]
    nodes = [make_node("a"), make_node("b")]
    first = reconcile(make_snapshot([app], nodes, insts, live={"a"}), NOW, suffixes())
    [(lost, _)], [new] = first.update, first.create
    assert new.replaces.instance == "web-2"
    # The lost one's record stays (its node is gone for less than LOST_RETENTION); the app grows.
    bigger = make_app(make_spec(replicas=3))
    again = make_snapshot([bigger], nodes, [insts[0], lost, new], live={"a"})
    assert moves(again, NOW + 1) == {"web-n0": ("", "", "")}
    assert replaced_by("web-2", [insts[0], lost, new]) == new.name and replaced_by("web-1", [new]) == ""


def test_first_creations_and_scale_downs_replace_nothing() -> None:
    app = make_app(make_spec(replicas=2))
    assert moves(make_snapshot([app], [make_node("a")])) == {"web-n0": ("", "", ""), "web-n1": ("", "", "")}
    one = make_app(make_spec(replicas=1))
    insts = [make_instance(app, "web-1", "a"), make_instance(app, "web-2", "a")]
    down = reconcile(make_snapshot([one], [make_node("a")], insts), NOW, suffixes())
    [(stopped, _)] = down.update
    assert stopped.status.reason == "ScaledDown"
    kept = next(i for i in insts if i.name != stopped.name)
    up = make_snapshot([app], [make_node("a")], [kept, stopped])  # scaled back up at once
    assert moves(up, NOW + 1) == {"web-n0": ("", "", "")}  # a scale-down is no move to stand in for


def test_the_same_state_gives_the_same_assignment() -> None:
    app = make_app(make_spec(replicas=4))
    insts = [make_instance(app, f"web-{i}", "ab"[i % 2]) for i in range(4)]
    snap = make_snapshot([app], [make_node("a"), make_node("b")], insts, live={"a"})
    lost = ("NodeLost", 'node "b" stopped answering')
    assert moves(snap) == {"web-n0": ("web-1", *lost), "web-n1": ("web-3", *lost)}
    assert moves(snap) == moves(snap)
