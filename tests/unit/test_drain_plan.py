"""orch drain --dry-run: the reconciler's own rules, simulated pass by pass."""

from __future__ import annotations

from scheduler.drain_plan import plan_drain
from tests.factories import make_app, make_instance, make_node, make_snapshot, make_spec


def test_replacements_start_before_the_old_instances_stop() -> None:
    spec = make_spec("web", replicas=2)
    spec.update.max_surge, spec.update.max_unavailable = 1, 0
    app = make_app(spec)
    nodes = [make_node("a"), make_node("b"), make_node("c")]
    snap = make_snapshot([app], nodes, [make_instance(app, "web-1", node="a"), make_instance(app, "web-2", node="a")])
    plan = plan_drain(snap, "a", now=2000.0)
    assert plan.remaining == () and plan.blocked == ()
    started = [s.started for s in plan.steps]
    stopped = [s.stopped for s in plan.steps]
    # maxSurge 1: one replacement at a time, each old instance stopping once its replacement runs.
    assert sum(len(s) for s in started) == 2 and all(len(s) <= 1 for s in started)
    assert sorted(n for s in stopped for n in s) == ["web-1", "web-2"]
    assert started[0] and not stopped[0]  # a replacement first
    assert all(node in ("b", "c") for s in started for _, node in s)
    # Each step names the instance its replacement stands in for: the one the next step stops.
    assert [what for s in started for what, _ in s] == [n for s in stopped for n in s]


def test_a_replacement_with_nowhere_to_go_blocks_under_max_unavailable_0() -> None:
    spec = make_spec("db", replicas=1)
    spec.node_selector["disk"] = "ssd"
    spec.update.max_surge, spec.update.max_unavailable = 1, 0
    app = make_app(spec)
    nodes = [make_node("a", labels={"disk": "ssd"}), make_node("b")]
    snap = make_snapshot([app], nodes, [make_instance(app, "db-1", node="a")])
    plan = plan_drain(snap, "a", now=2000.0)
    assert plan.remaining == ("db-1",)
    assert plan.blocked == ("db: 0/2 nodes available: 1 node(s) cordoned, 1 node(s) didn't match node selector",)


def test_max_unavailable_lets_it_go_without_a_replacement() -> None:
    spec = make_spec("cache", replicas=1)
    spec.node_selector["disk"] = "ssd"
    spec.update.max_surge, spec.update.max_unavailable = 0, 1
    app = make_app(spec)
    snap = make_snapshot(
        [app], [make_node("a", labels={"disk": "ssd"}), make_node("b")], [make_instance(app, "cache-1", node="a")]
    )
    plan = plan_drain(snap, "a", now=2000.0)
    assert plan.remaining == () and plan.steps[0].stopped == ("cache-1",)
    assert not any(s.started for s in plan.steps)


def test_nothing_on_the_node_is_an_empty_plan() -> None:
    app = make_app(make_spec("web", replicas=1))
    snap = make_snapshot([app], [make_node("a"), make_node("b")], [make_instance(app, "web-1", node="b")])
    assert plan_drain(snap, "a", now=2000.0).steps == ()
    assert not snap.nodes["a"].value.draining  # the snapshot itself is untouched
