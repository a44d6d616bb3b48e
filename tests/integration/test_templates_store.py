"""The instance record without its spec in a real etcd (issue 12 item 1): what the Store writes,
what its reads give back, and which generations outlive whom (scheduler/generations.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from orch.templates import template_of
from orch.v1 import types_pb2 as pb
from scheduler.generations import deletes, first, generation_writes, record
from scheduler.store import Put, Store
from tests.factories import make_app, make_instance, make_spec
from tests.fixtures.etcd import EtcdServer


@pytest.fixture
def store(etcd: EtcdServer) -> Iterator[Store]:
    s = Store([etcd.endpoint], prefix=f"/tpl-{uuid.uuid4().hex[:8]}/")
    yield s
    s.close()


def put_app(store: Store, app: pb.App, *instances: pb.Instance) -> None:
    writes = [Put(store.keys.app(app.spec.name), app, None)]
    writes.append(Put(store.keys.generation(app.spec.name, app.generation), record(app, "created", 0), None))
    writes += [Put(store.keys.instance(i.app, i.name), i, None) for i in instances]
    store.commit(writes)


def test_reads_hydrate_what_the_store_wrote_without_a_spec(store: Store) -> None:
    old = make_app(make_spec("web", replicas=2, env={"MODE": "one"}), generation=1)
    put_app(store, old)
    new = make_app(make_spec("web", replicas=5, env={"MODE": "two"}), generation=2)
    put_app(store, new, make_instance(old, "web-a", node="n1"), make_instance(new, "web-b", node="n1"))
    raw = pb.Instance.FromString(store._client.get(store.keys.instance("web", "web-a"))[0])
    assert not raw.HasField("spec") and raw.app_generation == 1
    got = store.get(pb.Instance, store.keys.instance("web", "web-a"))
    assert got is not None and got.value.spec.env["MODE"] == "one" and got.value.spec.replicas == 5
    listed = {v.value.name: v.value.spec for v in store.list_prefix(pb.Instance, store.keys.instances("web"))}
    assert listed["web-a"].env["MODE"] == "one" and listed["web-b"].env["MODE"] == "two"
    snap = store.snapshot()
    assert snap.instances["web-a"].value.spec == listed["web-a"]
    assert snap.generations["web"].keys() == {1, 2}
    assert template_of(snap.instances["web-b"].value.spec) == template_of(new.spec)
    stored = store.snapshot(hydrate=False)
    assert not stored.instances["web-a"].value.HasField("spec")
    assert stored.templates.template(stored.instances["web-a"].value, None) == template_of(old.spec)


def test_a_record_an_older_scheduler_wrote_keeps_its_spec(store: Store) -> None:
    app = make_app(make_spec("legacy"), generation=3)
    older = make_instance(app, "legacy-a", generation=2)
    older.spec.env["FROM"] = "record"
    store._client.put(store.keys.instance("legacy", "legacy-a"), older.SerializeToString())  # as it wrote it
    store.commit([Put(store.keys.app("legacy"), app, None)])
    got = store.get(pb.Instance, store.keys.instance("legacy", "legacy-a"))
    assert got is not None and got.value.spec.env["FROM"] == "record"


def test_a_deleted_apps_running_generation_stays_and_a_new_one_numbers_past_it(store: Store) -> None:
    app = make_app(make_spec("again"), generation=1)
    put_app(store, app, make_instance(app, "again-a"))
    store.commit(deletes(store, "again"))  # the app's delete: its instance still runs generation 1
    assert [v.value.generation for v in store.list_prefix(pb.AppGeneration, store.keys.generations("again"))] == [1]
    assert first(store, "again") == 2  # the new app of the same name
    new = make_app(make_spec("again", env={"NEW": "1"}), generation=2)
    writes = generation_writes(store, None, new, "created", 0)
    assert [w.key.rsplit("/", 1)[1] for w in writes] == ["2"]  # generation 1 is not deleted
