"""scheduler/placement/explain.py: every node's verdict, in place()'s order, and the summary."""

from __future__ import annotations

from orch.v1 import types_pb2 as pb
from scheduler.placement import node_views, place, request_for
from scheduler.placement.explain import Verdict, summary, verdicts
from scheduler.snapshot import ClusterSnapshot
from tests.factories import make_app, make_instance, make_node, make_snapshot, make_spec


def judged(snap: ClusterSnapshot, inst: pb.Instance) -> list[Verdict]:
    views = node_views(snap, without=inst.name)
    return verdicts(request_for(inst.spec, frozenset(inst.avoid_nodes)), [views[n] for n in sorted(views)])


def test_the_best_verdict_is_where_place_puts_it_and_rejects_come_last() -> None:
    app = make_app(make_spec("web", cpu=1000))
    nodes = [make_node("a", cpu=1500), make_node("b"), make_node("c", labels={"x": "y"}, unschedulable=True)]
    others = [make_instance(app, "web-1", node="b")]
    new = make_instance(app, "web-2", node="", state=pb.INSTANCE_STATE_PENDING)
    snap = make_snapshot([app], nodes, [*others, new])
    result = judged(snap, new)
    views = node_views(snap)
    placed = place(request_for(new.spec), [views[n] for n in sorted(views)])
    assert result[0].node == placed.node == "a"  # type: ignore[union-attr]
    assert [v.node for v in result] == ["a", "b", "c"] and result[2].rejected == "node(s) cordoned"
    assert [name for name, _ in result[0].scores] == ["reschedule penalty", "spread", "least allocated"]
    assert summary(new, result) == "Pending, but 2 node(s) fit now (best: a): the next pass places it"


def test_summaries() -> None:
    app = make_app(make_spec("web", cpu=3000))
    nodes = [make_node("a"), make_node("b")]
    on_a = make_instance(app, "web-1", node="a")
    on_b = make_instance(app, "web-2", node="b")
    snap = make_snapshot([app], nodes, [on_a, on_b])
    assert summary(on_a, judged(snap, on_a)) == "on a: the best-ranked of 1 feasible node(s)"  # b is full

    small = make_app(make_spec("small", cpu=100))
    crowded = make_snapshot([small], nodes, [make_instance(small, "small-1", node="a")])
    lone = make_instance(small, "small-2", node="a")
    assert "b ranks higher now" in summary(lone, judged(crowded, lone))  # spread: a holds one already
    over = make_snapshot([app], nodes, [on_a, on_b, make_instance(app, "web-3", node="a")])
    assert "which would not take it now (insufficient cpu)" in summary(on_a, judged(over, on_a))

    leaving = make_instance(app, "web-5", node="a")
    leaving.desired = pb.DESIRED_STATE_STOP
    leaving.status.reason, leaving.status.message = "NodeLost", 'node "a" stopped answering'
    assert summary(leaving, []) == 'leaving a: NodeLost: node "a" stopped answering'

    nowhere = make_instance(app, "web-6", node="", state=pb.INSTANCE_STATE_PENDING)
    full = make_snapshot([app], nodes, [on_a, on_b, nowhere])
    assert summary(nowhere, judged(full, nowhere)) == "Pending: 0/2 nodes available: 2 insufficient cpu"
