"""Placement: filters, scores and the pipeline, as tables and properties."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orch.v1 import types_pb2 as pb
from scheduler.placement import Placement, Unschedulable, node_views, place, request_for
from scheduler.placement.filters import filters_for, first_reject
from tests.factories import make_app, make_instance, make_node, make_snapshot, make_spec


def views(nodes, instances=(), live=None):
    snap = make_snapshot(nodes=nodes, instances=list(instances), live=live)
    v = node_views(snap)
    return [v[n] for n in sorted(v)]


def test_a_node_counts_what_each_generation_of_an_app_asks():
    """Node views build one request per (app, generation) whose instances share one template: a
    rollout's two specs both count, and records an older scheduler wrote with their own specs
    (no template stored, their app gone) count each their own."""
    old, new = make_app(make_spec(cpu=100, memory=1 << 20), 1), make_app(make_spec(cpu=300, memory=4 << 20), 2)
    db = make_app(make_spec("db", cpu=50))
    insts = [make_instance(old, "web-1", node="a"), make_instance(new, "web-2", node="a")]
    insts += [make_instance(new, "web-3", node="a"), make_instance(db, "db-1", node="a")]
    legacy = [make_instance(make_app(make_spec("gone", cpu=c)), f"gone-{c}", node="a") for c in (7, 11)]
    snap = make_snapshot(apps=[new, db], nodes=[make_node("a", cpu=1000, memory=1 << 30)], instances=insts + legacy)
    snap.templates.put("web", 1, pb.AppGeneration(template=old.spec))  # generation 1's template is stored
    a = node_views(snap)["a"]
    assert (a.cpu, a.memory, a.total) == (768, 9 << 20, 6)
    assert dict(a.apps) == {"web": 3, "db": 1, "gone": 2}


@pytest.mark.parametrize(
    ("node", "spec", "reason"),
    [
        (make_node("a"), make_spec(), None),
        (make_node("a", unschedulable=True), make_spec(), "node(s) cordoned"),
        (make_node("a", cpu=100), make_spec(cpu=200), "insufficient cpu"),
        (make_node("a", memory=1 << 20), make_spec(memory=2 << 20), "insufficient memory"),
        (
            make_node("a", labels={"disk": "hdd"}),
            make_spec(node_selector={"disk": "ssd"}),
            "node(s) didn't match node selector",
        ),
        (make_node("a", labels={"disk": "ssd"}), make_spec(node_selector={"disk": "ssd"}), None),
    ],
)
def test_filters(node, spec, reason):
    reject = first_reject(request_for(spec), views([node])[0])
    assert (reject.reason if reject else None) == reason


def test_not_ready_node_is_rejected():
    v = views([make_node("a")], live=set())
    reject = first_reject(request_for(make_spec()), v[0])
    assert reject is not None and reject.reason == "node(s) not ready"


def test_host_port_conflict_counts_existing_instances():
    spec = make_spec(ports=[pb.Port(name="http", container_port=80, host_port=8080)])
    app = make_app(spec)
    v = views([make_node("a"), make_node("b")], [make_instance(app, "web-1", node="a")])
    assert place(request_for(spec), v) == Placement("b")


def test_a_host_port_outside_a_nodes_allowed_range_avoids_that_node():
    """Placement avoids a node whose --host-port-range excludes the port (issue 9 item 9); the
    node refuses it anyway, this only keeps the instance from landing there."""
    strict = make_node("a")
    strict.host_port_min, strict.host_port_max = 1024, 65535
    lenient = make_node("b")
    lenient.host_port_min, lenient.host_port_max = 1, 65535
    old = make_node("c")  # an agent that reports no range: not judged here
    ssh = make_spec(ports=[pb.Port(name="ssh", container_port=22, host_port=22)])
    assert place(request_for(ssh), views([strict, lenient])) == Placement("b")
    result = place(request_for(ssh), views([strict]))
    assert isinstance(result, Unschedulable)
    assert result.message == "0/1 nodes available: 1 node(s) didn't allow the host port"
    assert place(request_for(ssh), views([strict, old])) == Placement("c")
    web = make_spec(ports=[pb.Port(name="http", container_port=80, host_port=8080)])
    assert place(request_for(web), views([strict])) == Placement("a")


def test_anti_affinity_keeps_apps_apart_and_self_reference_means_one_per_node():
    db = make_app(make_spec(name="db"))
    spec = make_spec(name="web", anti_affinity=["db", "web"])
    v = views([make_node("a"), make_node("b"), make_node("c")], [make_instance(db, "db-1", node="a")])
    first = place(request_for(spec), v)
    assert first == Placement("b")
    v[1].add(request_for(spec))
    assert place(request_for(spec), v) == Placement("c")
    v[2].add(request_for(spec))
    result = place(request_for(spec), v)
    assert isinstance(result, Unschedulable)
    assert result.message == "0/3 nodes available: 3 node(s) didn't satisfy anti-affinity"


def test_unschedulable_message_is_kubernetes_style():
    nodes = [make_node("a", memory=1 << 20), make_node("b", memory=1 << 20), make_node("c", unschedulable=True)]
    result = place(request_for(make_spec(memory=64 << 20)), views(nodes))
    assert isinstance(result, Unschedulable)
    assert result.message == "0/3 nodes available: 2 insufficient memory, 1 node(s) cordoned"


def test_spread_prefers_node_without_the_app_then_least_allocated():
    app = make_app(make_spec())
    other = make_app(make_spec(name="db", cpu=2000))
    insts = [make_instance(app, "web-1", node="a"), make_instance(other, "db-1", node="b")]
    assert place(request_for(app.spec), views([make_node("a"), make_node("b"), make_node("c")], insts)) == Placement(
        "c"
    )


def test_binpack_prefers_most_allocated():
    spec = make_spec(cpu=100, placement=pb.PLACEMENT_STRATEGY_BINPACK)
    other = make_app(make_spec(name="db", cpu=2000))
    insts = [make_instance(other, "db-1", node="b")]
    assert place(request_for(spec), views([make_node("a"), make_node("b"), make_node("c")], insts)) == Placement("b")


def test_ties_break_deterministically():
    nodes = [make_node("c"), make_node("a"), make_node("b")]
    assert {place(request_for(make_spec()), views(nodes), start=s) for s in range(3)} == {Placement("a")}


node_strategy = st.builds(
    lambda i, cpu, mem, disk: make_node(f"n{i}", cpu=cpu, memory=mem, labels={"disk": disk}),
    st.integers(0, 10_000),
    st.integers(0, 4000),
    st.integers(0, 4 << 30),
    st.sampled_from(["ssd", "hdd"]),
)


@settings(max_examples=150, deadline=None)
@given(
    nodes=st.lists(node_strategy, min_size=1, max_size=12, unique_by=lambda n: n.name),
    replicas=st.integers(1, 40),
    cpu=st.integers(0, 1500),
    memory=st.integers(0, 1 << 30),
    selector=st.sampled_from([{}, {"disk": "ssd"}]),
    host_port=st.sampled_from([0, 8080]),
)
def test_pipeline_properties(nodes, replicas, cpu, memory, selector, host_port):
    """Never overcommits, always honours selectors and host ports, spread stays balanced within one."""
    ports = [pb.Port(name="p", container_port=80, host_port=host_port)] if host_port else []
    spec = make_spec(cpu=cpu, memory=memory, node_selector=selector, ports=ports)
    vs = views(nodes)
    by_name = {v.name: v for v in vs}
    placed: Counter[str] = Counter()
    for i in range(replicas):
        result = place(request_for(spec), vs, start=i % len(vs))
        if isinstance(result, Unschedulable):
            continue
        by_name[result.node].add(request_for(spec))
        placed[result.node] += 1
    for node in nodes:
        v = by_name[node.name]
        # A capacity of 0 means the node does not limit that resource.
        assert node.allocatable.cpu_millis == 0 or v.cpu <= node.allocatable.cpu_millis
        assert node.allocatable.memory_bytes == 0 or v.memory <= node.allocatable.memory_bytes
        if placed[node.name]:
            assert all(node.labels.get(k) == val for k, val in selector.items())
        if host_port:
            assert placed[node.name] <= 1
    # Balanced within one among nodes that could still take another instance.
    eligible = [n.name for n in nodes if first_reject(request_for(spec), by_name[n.name]) is None]
    if eligible and placed:
        assert max(placed.values()) - min(placed[n] for n in eligible) <= 1


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.lists(node_strategy, min_size=1, max_size=6, unique_by=lambda n: n.name),
    cordoned=st.booleans(),
    live=st.booleans(),
    cpu=st.sampled_from([0, 500, 5000]),
    selector=st.sampled_from([{}, {"disk": "ssd"}]),
    host_port=st.sampled_from([0, 8080]),
    host_path=st.sampled_from(["", "/srv/data", "/etc"]),
    anti=st.booleans(),
)
def test_the_filters_a_request_needs_reject_as_all_of_them_do(
    nodes, cordoned, live, cpu, selector, host_port, host_path, anti
):
    """place() runs only filters_for(req); every node gets the answer of the whole chain."""
    nodes[0].unschedulable = cordoned
    for n in nodes:
        n.host_port_min, n.host_port_max = (1024, 65535) if n.name < "n5" else (0, 0)
        n.allowed_host_paths[:] = ["/srv"]
    ports = [pb.Port(name="p", container_port=80, host_port=host_port)] if host_port else []
    volumes = [pb.Volume(name="v", host_path=pb.HostPathVolume(path=host_path))] if host_path else []
    anti_affinity = ["web"] if anti else []
    spec = make_spec(cpu=cpu, node_selector=selector, ports=ports, volumes=volumes, anti_affinity=anti_affinity)
    app = make_app(spec)
    placed = [make_instance(app, "web-1", node=nodes[-1].name)]
    names = {n.name for n in nodes}
    for view in views(nodes, placed, live=names if live else names - {nodes[0].name}):
        req = request_for(spec)
        assert first_reject(req, view, filters_for(req)) == first_reject(req, view)


@settings(max_examples=100, deadline=None)
@given(
    apps=st.integers(0, 5),
    cpu=st.integers(0, 4000),
    total=st.integers(0, 50),
    avoided=st.booleans(),
    strategy=st.sampled_from([pb.PLACEMENT_STRATEGY_SPREAD, pb.PLACEMENT_STRATEGY_BINPACK]),
)
def test_fast_ranks_match_the_readable_scores(apps, cpu, total, avoided, strategy):
    from scheduler.placement.scores import RANKS, STRATEGIES

    node = views([make_node("n", cpu=8000)])[0]
    filler = request_for(make_spec(name="other", cpu=cpu // max(total, 1)))
    for _ in range(total):
        node.add(filler)
    for _ in range(apps):
        node.add(request_for(make_spec(name="web")))
    req = request_for(make_spec(name="web", placement=strategy), frozenset({"n"} if avoided else ()))
    readable = tuple(score(req, node) for score in STRATEGIES[strategy])
    assert RANKS[strategy](req, node) == (*readable, -node.order)


def one_by_one(reqs, nodes):
    """The reference: place() and add() for each request in turn."""
    out = []
    for i, req in enumerate(reqs):
        result = place(req, nodes, start=i % len(nodes))
        if isinstance(result, Placement):
            next(n for n in nodes if n.name == result.node).add(req)
        out.append(result)
    return out


def loaded_nodes(count, seed, cpu=4000):
    """Nodes of mixed sizes, some cordoned, each already running a few instances of other apps."""
    import random

    rng = random.Random(seed)
    nodes = [make_node(f"n{i:04d}", cpu=rng.choice([cpu, cpu // 2, 2 * cpu])) for i in range(count)]
    for node in rng.sample(nodes, count // 10):
        node.unschedulable = True
    other = make_app(make_spec(name="other", cpu=rng.choice([100, 300])))
    placed = [make_instance(other, f"other-{i}", node=rng.choice(nodes).name) for i in range(count)]
    return views(nodes, placed)


@settings(max_examples=40, deadline=None)
@given(
    nodes=st.integers(1, 100),
    replicas=st.integers(1, 300),
    cpu=st.sampled_from([0, 250, 1000]),
    strategy=st.sampled_from([pb.PLACEMENT_STRATEGY_SPREAD, pb.PLACEMENT_STRATEGY_BINPACK]),
    seed=st.integers(0, 1000),
)
def test_a_run_of_replicas_lands_where_placing_them_one_by_one_does(nodes, replicas, cpu, strategy, seed):
    """Up to 100 nodes every node is scored either way: the heap of place_all() is exact, down
    to the tie-break and to the instances no node had room for."""
    from scheduler.placement import place_all

    req = request_for(make_spec(name="web", cpu=cpu, placement=strategy))
    expected = one_by_one([req] * replicas, loaded_nodes(nodes, seed))
    assert place_all([req] * replicas, loaded_nodes(nodes, seed)) == expected


def test_a_run_over_many_nodes_goes_to_the_best_of_all_and_never_overcommits(monkeypatch):
    """Over 100 nodes one placement scores a sample of 50; a run of replicas scores every node
    once and keeps the ranks in a heap. Each replica goes where scoring all nodes would put it,
    until no node has room: the rest are Unschedulable with the reasons place() gives."""
    from scheduler.placement import pipeline, place_all

    spread, other = request_for(make_spec(name="web", cpu=1000)), request_for(make_spec(name="db", cpu=700))
    reqs = [spread] * 3000 + [other] * 200 + [spread] * 2000  # each run long enough for the heap
    got = place_all(reqs, nodes := loaded_nodes(1000, 7))
    monkeypatch.setattr(pipeline, "SCORE_ALL_BELOW", 10**9)  # the reference scores every node
    assert got == one_by_one(reqs, reference := loaded_nodes(1000, 7))
    assert [(n.cpu, n.apps) for n in nodes] == [(n.cpu, n.apps) for n in reference]
    assert all(n.cpu <= n.allocatable[0] for n in nodes)
    unplaced = [r for r in got if isinstance(r, Unschedulable)]
    assert unplaced and unplaced[-1].message.startswith("0/1000 nodes available: ")
    assert "insufficient cpu" in unplaced[-1].message and "cordoned" in unplaced[-1].message
