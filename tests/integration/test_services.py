"""Virtual IPs and endpoints through a real scheduler on a real etcd, with hollow agents
speaking the real session protocol (issue 11 items 3-4)."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import subprocess

import pytest

from orch.v1 import types_pb2 as pb
from tests.fixtures.etcd import free_port
from tests.fixtures.fake_agent import FakeAgent
from tests.fixtures.processes import orch_argv, orch_env, run_orch, stop, wait_for, wait_port

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: %(replicas)d
  image: rootfs:/nonexistent
  command: [sleep, "1000"]
  readiness: {exec: ["true"]}
%(service)s
"""
SERVICE = "  service: {port: 80, targetPort: 8080}"


@pytest.fixture
def scheduler(etcd, tmp_path):
    port = free_port()
    argv = orch_argv(
        "scheduler", "--listen", f"127.0.0.1:{port}", "--etcd", etcd.endpoint, "--insecure", "--insecure-etcd",
        "--service-cidr", "10.97.0.0/28",  # 14 addresses: full after 14 services
    )  # fmt: skip
    with open(tmp_path / "scheduler.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=orch_env())
        try:
            wait_port(port, proc)
            yield f"127.0.0.1:{port}"
        finally:
            stop(proc)


def apply(address: str, name: str, replicas: int = 1, service: bool = True) -> subprocess.CompletedProcess[str]:
    text = APP % {"name": name, "replicas": replicas, "service": SERVICE if service else ""}
    return run_orch("--scheduler", address, "apply", "-", stdin=text)


def service_ips(address: str) -> dict[str, str | None]:
    r = run_orch("--scheduler", address, "get", "apps", "-o", "json")
    assert r.returncode == 0, r.stderr
    return {a["name"]: a["serviceIp"] for a in json.loads(r.stdout)}


def with_address(node: int):
    counter = iter(range(2, 250))

    def status(_: pb.Instance) -> pb.InstanceStatus:
        return pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, ready=True, ip=f"10.88.{node}.{next(counter)}")

    return status


def test_virtual_ips_are_allocated_kept_freed_and_never_shared(scheduler):
    assert apply(scheduler, "web").returncode == 0
    assert apply(scheduler, "plain", service=False).returncode == 0
    assert service_ips(scheduler) == {"web": "10.97.0.1", "plain": None}
    assert apply(scheduler, "web", replicas=3).returncode == 0  # scaled: the same address
    assert service_ips(scheduler)["web"] == "10.97.0.1"

    # Five Apply calls at once: each app its own address (the reservations conflict, the loser retries).
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda i: apply(scheduler, f"race{i}"), range(5)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    ips = service_ips(scheduler)
    assert sorted(str(ips[f"race{i}"]) for i in range(5)) == [f"10.97.0.{i}" for i in range(2, 7)]

    for i in range(8):
        assert apply(scheduler, f"fill{i}").returncode == 0
    full = apply(scheduler, "one-too-many")
    assert full.returncode == 1 and "service CIDR 10.97.0.0/28 is full" in full.stderr
    assert "one-too-many" not in service_ips(scheduler)  # nothing half-applied

    freed = ips["race2"]
    assert run_orch("--scheduler", scheduler, "delete", "app", "race2").returncode == 0
    assert apply(scheduler, "web", service=False).returncode == 0  # the service dropped: its address freed
    assert service_ips(scheduler)["web"] is None
    assert apply(scheduler, "late1").returncode == 0 and apply(scheduler, "late2").returncode == 0
    assert {service_ips(scheduler)[n] for n in ("late1", "late2")} == {"10.97.0.1", freed}


def test_every_agent_gets_every_node_s_endpoints_and_their_readiness(scheduler):
    """n1 applies updates as today's agent does; n0 is an older agent, sent the whole view each time."""
    agents = [
        FakeAgent(scheduler, f"n{i}", status_for=with_address(i), accepts_endpoint_updates=i == 1) for i in range(2)
    ]
    try:
        for a in agents:
            assert a.registered.wait(10)
        # Before any app: the service CIDR, so the agents know where VIPs come from.
        wait_for(lambda: all(a.endpoints for a in agents), what="first endpoints")
        assert agents[0].endpoints[0].service_cidr == "10.97.0.0/28"
        assert apply(scheduler, "web", replicas=2).returncode == 0

        def both_ready(agent: FakeAgent):
            last = agent.endpoint_views[-1] if agent.endpoint_views else None
            if last is None or not last.apps or len([e for e in last.apps[0].endpoints if e.ready]) != 2:
                return None
            return last

        for agent in agents:
            last = wait_for(functools.partial(both_ready, agent), what=f"{agent.name}: two ready endpoints")
            (web,) = last.apps
            assert web.app == "web" and web.service_ip == "10.97.0.1" and web.service.port == 80
            assert sorted(e.node for e in web.endpoints) == ["n0", "n1"]  # this node's and the other's

        # n1's instance fails its probe: every agent hears of it.
        (inst,) = agents[1].desired.values()
        agents[1].report(inst, pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, ready=False, ip="10.88.1.2"))

        def unready(agent: FakeAgent) -> bool:
            eps = agent.endpoint_views[-1].apps[0].endpoints
            return [(e.node, e.ready) for e in eps if e.node == "n1"] == [("n1", False)]

        wait_for(lambda: all(unready(a) for a in agents), what="the unready endpoint everywhere")
        assert agents[0].endpoint_views[-1] == agents[1].endpoint_views[-1]
        old, new = agents[0].endpoints[-1], agents[1].endpoints[-1]
        assert not old.update and len(old.apps[0].endpoints) == 2  # the whole view again
        assert new.update and [e.instance for e in new.apps[0].endpoints] == [inst.name]  # only what changed
        sent = [len(a.endpoints) for a in agents]
        agents[1].report(inst, pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, ready=False, ip="10.88.1.2"))
        assert run_orch("--scheduler", scheduler, "get", "apps").returncode == 0
        assert [len(a.endpoints) for a in agents] == sent  # the same report again moves no endpoint: nothing sent
    finally:
        for a in agents:
            a.kill()
