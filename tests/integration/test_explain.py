"""`orch explain` against a real scheduler with hollow agents: each node's verdict comes from
the same filters and scores placement uses, and a replacement says which instance it replaces
and why that one left (a lost node, a drain)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.fake_agent import FakeAgent
from tests.fixtures.processes import stop, wait_for
from tests.integration.conftest import instances, orch, start_scheduler

APP = """\
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: 1
  image: rootfs:/nonexistent
  command: [sleep, "1000"]
  resources: {cpu: %(cpu)s, memory: 64Mi}
  nodeSelector: {%(selector)s}
"""


@pytest.fixture
def cluster(etcd, tmp_path: Path) -> Iterator[str]:
    s = start_scheduler(etcd, tmp_path / "scheduler.log", "explain-0")
    agents = [FakeAgent(s.address, f"n{i}", labels={"disk": "ssd" if i else "hdd"}) for i in range(3)]
    try:
        for a in agents:
            assert a.registered.wait(10)
        yield s.address
    finally:
        for a in agents:
            a.kill()
        stop(s.proc)


def apply(address: str, tmp_path: Path, name: str, cpu: str = "100m", selector: str = "disk: ssd") -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(APP % {"name": name, "cpu": cpu, "selector": selector})
    r = orch(address, "apply", str(path))
    assert r.returncode == 0, r.stderr


def explain(address: str, instance: str) -> dict:
    r = orch(address, "explain", instance, "-o", "json")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def test_a_placed_instance_and_why_the_other_nodes_did_not_get_it(cluster: str, tmp_path: Path) -> None:
    apply(cluster, tmp_path, "web")
    inst = wait_for(lambda: [i for i in instances(cluster) if i["app"] == "web" and i["state"] == "Running"], 20)[0]
    e = explain(cluster, inst["name"])
    by_node = {n["node"]: n for n in e["nodes"]}
    assert by_node["n0"]["rejected"] == "node(s) didn't match node selector"
    fitting = [n for n in e["nodes"] if not n["rejected"]]
    assert {n["node"] for n in fitting} == {"n1", "n2"}
    assert (
        fitting[0]["node"] == inst["node"]
        and e["summary"] == f"on {inst['node']}: the best-ranked of 2 feasible node(s)"
    )
    assert set(fitting[0]["scores"]) == {"reschedule penalty", "spread", "least allocated"}
    assert any(ev["reason"] == "Scheduled" for ev in e["events"])

    text = orch(cluster, "explain", inst["name"]).stdout
    assert f"instance/{inst['name']}: on {inst['node']}" in text and "rejected: node(s) didn't match" in text


def test_a_pending_instance_says_what_each_node_lacks(cluster: str, tmp_path: Path) -> None:
    apply(cluster, tmp_path, "huge", cpu="3500m", selector="disk: ssd")
    apply(cluster, tmp_path, "huge2", cpu="3500m", selector="disk: ssd")
    apply(cluster, tmp_path, "huge3", cpu="3500m", selector="disk: ssd")  # n1 and n2 are full now
    pending = wait_for(lambda: [i for i in instances(cluster) if i["state"] == "Pending"], 20)[0]
    e = explain(cluster, pending["name"])
    assert e["node"] is None
    assert e["summary"] == "Pending: 0/3 nodes available: 2 insufficient cpu, 1 node(s) didn't match node selector"
    r = orch(cluster, "explain", "no-such-instance")
    assert r.returncode == 1 and 'instance "no-such-instance" not found' in r.stderr


def test_drain_dry_run_prints_the_plan_and_changes_nothing(cluster: str, tmp_path: Path) -> None:
    apply(cluster, tmp_path, "pinned", selector="disk: hdd")  # n0 only: it cannot move
    (tmp_path / "mobile.yaml").write_text(
        (APP % {"name": "mobile", "cpu": "100m", "selector": ""}).replace("replicas: 1", "replicas: 3")
    )
    assert orch(cluster, "apply", str(tmp_path / "mobile.yaml")).returncode == 0  # spread: one on each node
    wait_for(lambda: len([i for i in instances(cluster) if i["state"] == "Running"]) == 4, 20)
    (on_n0,) = [i["name"] for i in instances(cluster) if i["app"] == "mobile" and i["node"] == "n0"]
    r = orch(cluster, "drain", "n0", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("node/n0: drain plan (dry run; nothing changes)")
    assert f"  step 1: start a replacement of {on_n0} on n" in r.stdout  # the one it stands in for
    assert f"  step 2: stop {on_n0}" in r.stdout
    assert "blocked: pinned: 0/3 nodes available: 2 node(s) didn't match node selector, 1 node(s) cordoned" in r.stdout
    assert "left at the deadline (then stopped without a replacement): pinned-" in r.stdout
    nodes = {n["name"]: n for n in json.loads(orch(cluster, "get", "nodes", "-o", "json").stdout)}
    assert nodes["n0"]["schedulable"]  # not even cordoned
    assert orch(cluster, "drain", "nope", "--dry-run").returncode == 1


def test_a_replacement_names_the_instance_it_replaces_and_why(etcd, tmp_path: Path) -> None:
    s = start_scheduler(etcd, tmp_path / "scheduler.log", "explain-1")
    agents = {f"n{i}": FakeAgent(s.address, f"n{i}") for i in range(3)}
    try:
        assert all(a.registered.wait(10) for a in agents.values())
        apply(s.address, tmp_path, "moved", selector="")
        [first] = wait_for(lambda: running_of(s.address, "moved"), 20)
        assert explain(s.address, first["name"])["replaces"] is None  # a first creation replaces nothing
        agents[first["node"]].kill()
        [second] = wait_for(lambda: running_of(s.address, "moved", but=first), 30)
        e = explain(s.address, second["name"])
        why = f'node "{first["node"]}" stopped answering'
        assert e["replaces"]["instance"] == first["name"] and e["replaces"]["node"] == first["node"]
        assert (e["replaces"]["reason"], e["replaces"]["message"]) == ("NodeLost", why)
        assert e["replacedBy"] is None
        text = orch(s.address, "explain", second["name"]).stdout
        assert f"\nreplaces {first['name']}: NodeLost: {why} (at 20" in text
        # The lost one's record stays while its node is gone: it names its replacement.
        assert explain(s.address, first["name"])["replacedBy"] == second["name"]
        assert f"\nreplaced by {second['name']}\n" in orch(s.address, "explain", first["name"]).stdout

        r = orch(s.address, "drain", second["node"], "--timeout", "30s")
        assert r.returncode == 0, r.stderr
        [third] = wait_for(lambda: running_of(s.address, "moved", but=second), 20)
        moved = explain(s.address, third["name"])["replaces"]
        assert (moved["instance"], moved["reason"]) == (second["name"], "Drained")
        assert moved["message"] == f"node {second['node']} is draining"
    finally:
        for a in agents.values():
            a.kill()
        stop(s.proc)


def running_of(address: str, app: str, but: dict | None = None) -> list[dict]:
    """The app's Running instances that are not on their way out (other than `but`)."""
    other = (but or {}).get("name")
    return [
        i
        for i in instances(address)
        if i["app"] == app and i["state"] == "Running" and i["desired"] == "Run" and i["name"] != other
    ]
