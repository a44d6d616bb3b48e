"""A real scheduler process on a real etcd, with hollow agents speaking the real session protocol."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.fixtures.etcd import free_port
from tests.fixtures.fake_agent import FakeAgent
from tests.fixtures.processes import orch_argv, orch_env, run_orch, stop, wait_for, wait_port

MANIFEST = """
apiVersion: orch/v1
kind: App
metadata: {name: web}
spec:
  replicas: %d
  image: rootfs:/nonexistent
  command: [sleep, "1000"]
  resources: {cpu: 500m, memory: 64Mi}
"""


@pytest.fixture
def scheduler(etcd, tmp_path):
    port = free_port()
    argv = orch_argv(
        "scheduler", "--listen", f"127.0.0.1:{port}", "--etcd", etcd.endpoint, "--insecure", "--insecure-etcd"
    )
    with open(tmp_path / "scheduler.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=orch_env())
        try:
            wait_port(port, proc)
            yield f"127.0.0.1:{port}"
        finally:
            stop(proc)


def orch(address, *args, stdin=None):
    return run_orch("--scheduler", address, *args, stdin=stdin)


def instances(address):
    r = orch(address, "get", "instances", "-o", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_apply_places_reports_and_replaces_a_dead_node(scheduler, tmp_path):
    agents = [FakeAgent(scheduler, f"n{i}") for i in range(3)]
    try:
        for a in agents:
            assert a.registered.wait(10)
        r = orch(scheduler, "apply", "-", stdin=MANIFEST % 6)
        assert r.returncode == 0 and "app/web created" in r.stdout, r.stderr

        def running():
            insts = instances(scheduler)
            return insts if sum(i["state"] == "Running" for i in insts) == 6 else None

        insts = wait_for(running, what="6 running")
        assert sorted(sum(i["node"] == a.name for i in insts) for a in agents) == [2, 2, 2]
        assert all(len(a.desired) == 2 for a in agents)
        gens = agents[0].generations
        assert gens == sorted(gens)  # generations only grow

        # The same manifest again changes nothing.
        r = orch(scheduler, "apply", "-", stdin=MANIFEST % 6)
        assert "app/web unchanged" in r.stdout

        agents[1].kill()

        def replaced():
            insts = instances(scheduler)
            live = [i for i in insts if i["state"] == "Running" and i["node"] != "n1"]
            lost = [i for i in insts if i["state"] == "Lost"]
            return (live, lost) if len(live) == 6 and len(lost) == 2 else None

        _live, lost = wait_for(replaced, timeout=10, what="replacements")
        assert {i["node"] for i in lost} == {"n1"}
        nodes = {n["name"]: n for n in json.loads(orch(scheduler, "get", "nodes", "-o", "json").stdout)}
        assert nodes["n1"]["state"] == "NotReady" and nodes["n0"]["state"] == "Ready"
        assert nodes["n0"]["allocated"]["cpu"] == 1500 and nodes["n0"]["capacity"]["cpu"] == 4000
        events = orch(scheduler, "events").stdout
        assert "InstanceLost" in events and "Scheduled" in events

        # Scale down, then delete: everything stops and the keys go away.
        assert orch(scheduler, "scale", "web", "2").returncode == 0
        wait_for(lambda: sum(len(a.desired) for a in (agents[0], agents[2])) == 2, what="scale down")
        assert orch(scheduler, "delete", "app", "web").returncode == 0
        wait_for(lambda: not agents[0].desired and not agents[2].desired, what="stop all")
        wait_for(lambda: all(i["node"] == "n1" for i in instances(scheduler)), what="gc")
    finally:
        for a in agents:
            a.kill()


def test_unschedulable_instance_stays_pending_with_a_reason(scheduler):
    agent = FakeAgent(scheduler, "small", cpu=100)
    try:
        assert agent.registered.wait(10)
        assert orch(scheduler, "apply", "-", stdin=MANIFEST % 1).returncode == 0
        inst = wait_for(lambda: [i for i in instances(scheduler) if i["reason"] == "Unschedulable"], what="pending")[0]
        assert inst["state"] == "Pending"
        assert inst["message"] == "0/1 nodes available: 1 insufficient cpu"
    finally:
        agent.kill()


def test_cordon_keeps_new_instances_off_the_node(scheduler):
    agents = [FakeAgent(scheduler, f"c{i}") for i in range(2)]
    try:
        for a in agents:
            assert a.registered.wait(10)
        assert orch(scheduler, "cordon", "c0").returncode == 0
        assert orch(scheduler, "apply", "-", stdin=MANIFEST % 3).returncode == 0
        insts = wait_for(lambda: [i for i in instances(scheduler) if i["state"] == "Running"] or None)
        wait_for(lambda: len([i for i in instances(scheduler) if i["state"] == "Running"]) == 3)
        assert {i["node"] for i in instances(scheduler)} == {"c1"}, insts
        nodes = json.loads(orch(scheduler, "get", "nodes", "-o", "json").stdout)
        assert {n["name"]: n["schedulable"] for n in nodes} == {"c0": False, "c1": True}
        assert orch(scheduler, "uncordon", "c0").returncode == 0
    finally:
        for a in agents:
            a.kill()


def test_server_side_validation_rejects_and_stores_nothing(scheduler):
    import grpc

    from orch.v1 import api_pb2, api_pb2_grpc, types_pb2

    with grpc.insecure_channel(scheduler) as ch:
        stub = api_pb2_grpc.OrchStub(ch)
        good = types_pb2.AppSpec(name="ok", replicas=1, image="rootfs:/x")
        bad = types_pb2.AppSpec(name="Bad_Name", replicas=-1, image="")
        with pytest.raises(grpc.RpcError) as err:
            stub.Apply(api_pb2.ApplyRequest(apps=[good, bad]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "metadata.name" in (err.value.details() or "")
        assert stub.ListApps(api_pb2.ListAppsRequest()).apps == []


def test_cli_reports_missing_objects_and_unreachable_scheduler(scheduler):
    r = orch(scheduler, "delete", "app", "nope")
    assert r.returncode == 1 and 'app "nope" not found' in r.stderr and "Traceback" not in r.stderr
    r = run_orch("--scheduler", f"127.0.0.1:{free_port()}", "get", "apps")
    assert r.returncode == 1 and "cannot reach the scheduler" in r.stderr and "Traceback" not in r.stderr
