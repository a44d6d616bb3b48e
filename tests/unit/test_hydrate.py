"""Issue 12 item 1: an instance record names its app and generation and stores no spec; the
spec comes back from the generation's template (scheduler/hydrate.py); a desired set carries
each template once and the agent puts it back on each instance (node/reconcile.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from cli.manifest import load_manifests
from node.reconcile import with_templates
from node.session import TEMPLATE_MISSING, Session
from orch.templates import template_of
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.endpoints import endpoints_of
from scheduler.hydrate import MISSING, Templates, stored
from scheduler.reconcile import new_instance, reconcile, unused_generations
from scheduler.sessions import desired_message
from scheduler.snapshot import ClusterSnapshot
from scheduler.store import stored_bytes
from tests.factories import make_app, make_instance, make_node, make_snapshot, make_spec

WEB_YAML = Path(__file__).parents[2] / "deploy" / "examples" / "web.yaml"


def record(app: pb.App) -> pb.AppGeneration:
    return pb.AppGeneration(template=template_of(app.spec), generation=app.generation)


def web() -> pb.App:
    [loaded] = load_manifests([WEB_YAML])
    return make_app(loaded.spec, generation=3)


# -- the one place a spec comes from ----------------------------------------


def test_an_instance_is_stored_without_its_spec_and_the_caller_keeps_its_own():
    app = web()
    inst = new_instance(app, "a1b2c", 1000.0)
    raw = pb.Instance.FromString(stored_bytes(inst))  # what a Put writes to etcd
    assert not raw.HasField("spec") and raw.app == "web" and raw.app_generation == 3
    assert inst.spec.image == app.spec.image  # stored() copies: the plan's instance is untouched
    assert stored(raw) is raw


def test_the_spec_comes_from_the_generation_inside_the_apps_current_rest():
    app = web()
    old = pb.App()
    old.CopyFrom(app)
    old.generation = 2
    old.spec.env["MODE"] = "old"
    templates = Templates()
    templates.put("web", 2, record(old))
    inst = stored(make_instance(old, "web-1", node="n1"))
    app.spec.replicas = 7  # `orch scale` after the instance was made
    app.spec.labels["tier"] = "backend"
    spec = templates.hydrate(inst, app).spec
    assert spec.env["MODE"] == "old"  # its own generation's template, not the app's current one
    assert spec.replicas == 7 and spec.labels["tier"] == "backend"  # never stale
    assert spec.name == "web" and spec.image == app.spec.image


def test_where_a_template_is_found_in_order():
    app = web()
    templates = Templates()
    current = stored(make_instance(app, "web-1"))
    assert templates.template(current, app) == template_of(app.spec)  # the app's own, at its generation
    older = stored(make_instance(app, "web-2", generation=2))
    assert templates.template(older, app) is None
    legacy = make_instance(app, "web-3", generation=2)  # written by an older scheduler: its spec on it
    legacy.spec.env["FROM"] = "record"
    assert templates.template(legacy, app) == template_of(legacy.spec)
    two = pb.AppSpec(name="web", image="rootfs:/two")
    templates.put("web", 2, pb.AppGeneration(template=two, generation=2))
    assert templates.template(older, app) == two
    assert templates.template(legacy, app) == two  # the stored one first
    templates.drop("web", 2)
    assert templates.template(older, app) is None


def test_a_missing_template_leaves_no_spec_and_says_which(caplog):
    app = web()
    inst = stored(make_instance(app, "web-9", generation=1))
    with caplog.at_level(logging.ERROR, logger="scheduler.hydrate"):
        out = Templates().hydrate(inst, app)
    assert not out.HasField("spec")
    assert 'instance "web-9" runs generation 1 of app "web", whose template is not stored' in caplog.text


def test_an_instance_of_a_deleted_app_keeps_its_template():
    app = web()
    templates = Templates()
    templates.put("web", 3, record(app))
    spec = templates.hydrate(stored(make_instance(app, "web-1")), None).spec
    assert spec.image == app.spec.image and spec.replicas == 0  # the template alone


# -- the reconciler -----------------------------------------------------------


def test_an_instance_whose_template_is_missing_is_stopped_and_replaced():
    app = make_app(make_spec("web", replicas=1), generation=2)
    broken = make_instance(app, "web-old", node="n1")
    broken.ClearField("spec")  # what hydrate leaves when generations/web/2 is gone
    plan = reconcile(make_snapshot([app], [make_node("n1")], [broken]), 2000.0, lambda: "new01")
    [(stopped, _)] = plan.update
    assert stopped.name == "web-old" and stopped.desired == pb.DESIRED_STATE_STOP
    assert stopped.status.reason == MISSING
    [warning] = [e for e in plan.events if e.object == "web-old"]
    assert warning.type == "Warning" and 'generation 2 of app "web", whose template is not stored' in warning.message
    assert [i.name for i in plan.create] == ["web-new01"]


def test_templates_nobody_runs_are_forgotten_after_the_history():
    app = make_app(make_spec("web", replicas=1), generation=14)
    running_old = make_instance(app, "web-1", generation=2)  # an instance keeps generation 2
    gone = make_app(make_spec("gone", replicas=1), generation=5)
    stopping = make_instance(gone, "gone-1")
    snap = make_snapshot([app], [], [running_old, stopping])
    snap = ClusterSnapshot(
        revision=1,
        apps=snap.apps,
        instances=snap.instances,
        nodes={},
        live_nodes=frozenset(),
        generations={"web": {g: 100 + g for g in range(1, 15)}, "gone": {4: 7, 5: 8}, "gone2": {1: 9}},
    )
    forgotten = unused_generations(snap)
    assert forgotten == [("gone2", 1, 9), ("web", 1, 101), ("web", 3, 103), ("web", 4, 104)]


# -- the desired set ------------------------------------------------------------


def sized(app: pb.App, n: int) -> tuple[list[pb.Instance], Templates]:
    insts = [new_instance(app, f"{i:05x}", 1000.0) for i in range(n)]
    for inst in insts:
        inst.node = "n1"
        inst.status.state = pb.INSTANCE_STATE_RUNNING
    templates = Templates()
    templates.put(app.spec.name, app.generation, record(app))
    return [stored(i) for i in insts], templates


def test_a_desired_set_carries_each_template_once():
    app = web()
    insts, templates = sized(app, 100)
    msg = desired_message(insts, 42, 7, lambda i: templates.template(i, app))
    assert list(msg.templates) == ["web/3"] and msg.templates["web/3"] == template_of(app.spec)
    assert not any(i.HasField("spec") for i in msg.instances) and len(msg.instances) == 100


def test_a_desired_set_leaves_out_an_instance_without_a_template(caplog):
    app = web()
    insts, templates = sized(app, 2)
    insts[1].app_generation = 1  # not stored
    with caplog.at_level(logging.ERROR, logger="scheduler.sessions"):
        msg = desired_message(insts, 42, 7, lambda i: templates.template(i, app))
    assert [i.name for i in msg.instances] == [insts[0].name]
    assert "left out of node n1's desired set" in caplog.text


def test_record_and_desired_set_sizes(capsys):
    """The numbers of the issue's note (serialized bytes; web.yaml's spec)."""
    app = web()
    one = new_instance(app, "a1b2c", 1000.0)
    one.node, one.status.state = "n1", pb.INSTANCE_STATE_RUNNING
    before, after = one.ByteSize(), len(stored_bytes(one))
    insts, templates = sized(app, 100)
    old = apb.DesiredSet(generation=42, cluster_id=7)
    for inst in insts:  # the old message: each instance with the whole spec
        item = old.instances.add()
        item.CopyFrom(templates.hydrate(inst, app))
        item.ClearField("status")
        item.ClearField("updated_at")
    new = desired_message(insts, 42, 7, lambda i: templates.template(i, app))
    with capsys.disabled():
        print(
            f"\ninstance record {before} -> {after} B; 100-instance desired set {old.ByteSize()} -> {new.ByteSize()} B"
        )
    assert after < before / 2 and new.ByteSize() < old.ByteSize() / 2


# -- the agent --------------------------------------------------------------------


def test_the_agent_puts_each_template_back():
    app = web()
    insts, templates = sized(app, 3)
    msg = desired_message(insts, 42, 7, lambda i: templates.template(i, app))
    assert with_templates(msg) == []
    assert all(i.spec == template_of(app.spec) for i in msg.instances)
    assert not msg.templates  # each instance holds its own now


def test_an_older_scheduler_sends_specs_and_no_templates():
    app = web()
    old = apb.DesiredSet(generation=5, instances=[make_instance(app, "web-1")])
    assert with_templates(old) == []
    assert old.instances[0].spec == app.spec


def test_the_agent_refuses_a_set_that_lacks_a_template_and_keeps_what_it_runs(caplog):
    app = web()
    insts, _ = sized(app, 2)
    good = apb.DesiredSet(generation=10, cluster_id=7, instances=insts, templates={"web/3": template_of(app.spec)})
    bad = apb.DesiredSet(generation=11, cluster_id=7, instances=insts[:1], templates={"web/3": template_of(app.spec)})
    bad.instances.add(name="web-zzzzz", app="web", app_generation=2)
    applied: list[apb.DesiredSet] = []

    async def on_desired(d: apb.DesiredSet) -> None:
        applied.append(d)

    running = apb.StatusReport(instances=[apb.InstanceReport(name=i.name, app="web") for i in insts])
    session = Session(["x"], lambda _: apb.Register(), lambda: running, on_desired)
    outbox: asyncio.Queue[apb.AgentMessage] = asyncio.Queue()
    session._outbox = outbox

    async def scenario() -> None:
        await session.handle_desired(good, "sched-a")
        await session.handle_desired(bad, "sched-a")

    with caplog.at_level(logging.ERROR, logger="node.session"):
        asyncio.run(scenario())
    assert [d.generation for d in applied] == [10]  # nothing of 11 applied: the workers of 10 stay
    assert session.observed_generation == 10
    assert "refusing desired set 11 from sched-a: no template for web-zzzzz (web/2)" in caplog.text
    [report] = outbox.get_nowait().status.instances  # only the instance not running here
    assert report.name == "web-zzzzz" and report.status.reason == TEMPLATE_MISSING


def test_an_older_agent_gets_each_instance_with_its_spec():
    """An agent that does not say accepts_templates (older than them) ignores the map: it is sent
    each instance's template on the instance, as before."""
    app = web()
    insts, templates = sized(app, 2)
    msg = desired_message(insts, 42, 7, lambda i: templates.template(i, app), inline=True)
    assert not msg.templates
    assert [i.spec for i in msg.instances] == [template_of(app.spec)] * 2


def test_the_agent_says_it_takes_templates():
    session = Session(["x"], lambda _: apb.Register(node="n1"), apb.StatusReport, lambda _: asyncio.sleep(0))
    assert session.registration().accepts_templates


def test_endpoints_take_the_probes_from_the_template():
    """The cache's instances carry no spec: an unready instance of a probed app is not ready."""
    app = web()  # readiness: tcp 8080
    app.spec.service.port = 80
    inst = stored(make_instance(app, "web-1", node="n1"))
    inst.status.ready, inst.status.ip = False, "10.88.0.2"
    templates = Templates()
    [entry] = endpoints_of({"web": app}, [inst], "10.96.0.0/16", lambda i: templates.template(i, app)).apps
    assert [(e.instance, e.ready) for e in entry.endpoints] == [("web-1", False)]
    [entry] = endpoints_of({"web": app}, [inst], "10.96.0.0/16", lambda i: None).apps
    assert not entry.endpoints  # without a template it serves nobody


def test_hydrating_many_makes_each_generations_spec_once_and_right():
    app = web()
    old = pb.App()
    old.CopyFrom(app)
    old.generation, old.spec.image = 2, "rootfs:/old"
    templates = Templates()
    templates.put("web", 2, record(old))
    templates.put("web", 3, record(app))
    insts = [stored(make_instance(app, f"web-{i}", generation=2 + i % 2)) for i in range(4)]
    out = Templates.hydrate_all(templates, insts, {"web": app})
    assert [i.spec.image for i in out] == ["rootfs:/old", app.spec.image] * 2
    out[0].spec.env["X"] = "1"  # each instance its own copy
    assert "X" not in out[2].spec.env


def two_generations(app: pb.App, change: Callable[[pb.AppSpec], None]) -> tuple[pb.App, Templates]:
    """app's generation 2, made different by change, and the templates of both (2 and app's 3)."""
    old = pb.App()
    old.CopyFrom(app)
    old.generation = 2
    change(old.spec)
    templates = Templates()
    templates.put("web", 2, record(old))
    templates.put("web", 3, record(app))
    return old, templates


def as_the_cache_holds(app: pb.App, nodes: list[pb.Node], insts: list[pb.Instance], templates: Templates):
    """A snapshot of records as stored, with the templates to hydrate them from (ClusterCache.snapshot)."""
    records = make_snapshot([app], nodes, insts)
    return ClusterSnapshot(
        revision=1,
        apps=records.apps,
        instances=records.instances,
        nodes=records.nodes,
        live_nodes=records.live_nodes,
        templates=templates,
    )


def test_an_apps_counts_read_the_probes_from_the_template_without_hydrating():
    """GetApp and ListApps count over the cache's records as stored: an instance Running but
    not yet ready by its app's readiness probe is not counted ready (nor available), and the
    records are not copied to say so."""
    from scheduler.api import app_info

    app = web()  # readiness: tcp 8080
    old, templates = two_generations(app, lambda spec: spec.ClearField("readiness"))  # Running is ready there
    insts = [stored(make_instance(app, f"web-{i}", node="n1", ready=i == 0)) for i in range(3)]  # web-0's probe passed
    insts.append(stored(make_instance(old, "web-old", node="n1", ready=False)))
    info = app_info(as_the_cache_holds(app, [make_node("n1")], insts, templates), app)
    assert (info.running, info.ready) == (4, 2)  # web-0, and web-old (no probe in its generation)
    assert (info.rollout.updated, info.rollout.available, info.rollout.old) == (3, 1, 1)
    assert all(not i.HasField("spec") for i in insts)  # nothing hydrated in place


def test_the_nodes_requested_resources_are_the_same_from_stored_records_as_from_hydrated_ones():
    """ListNodes reads the cache's records without hydrating them: each generation's request
    comes from its template, and adds up to what the hydrated instances ask for."""
    from scheduler.api import node_infos

    app = web()
    more = app.spec.resources.cpu_millis + 500

    def ask_more(spec: pb.AppSpec) -> None:  # the generations differ in what they request
        spec.resources.cpu_millis = more

    old, templates = two_generations(app, ask_more)
    insts = [stored(make_instance(app, f"web-{i}", node=f"n{i % 2}")) for i in range(4)]
    insts += [stored(make_instance(old, f"web-old-{i}", node="n1")) for i in range(2)]
    raw = as_the_cache_holds(app, [make_node("n0"), make_node("n1")], insts, templates)
    hydrated = raw.hydrated({})
    assert all(v.value.HasField("spec") for v in hydrated.instances.values())
    from_records, from_hydrated = node_infos(raw, 1000.0), node_infos(hydrated, 1000.0)
    assert from_records == from_hydrated
    n1 = next(n for n in from_records if n.node.name == "n1")
    assert n1.allocated.cpu_millis == 2 * app.spec.resources.cpu_millis + 2 * more
    assert all(not v.value.HasField("spec") for v in raw.instances.values())  # nothing hydrated in place
