"""Node subnets on a real etcd: assigned at registration, kept by a returning node, freed by
`orch delete node`, never handed out twice by two schedulers registering at once."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.api import OrchService
from scheduler.errors import Refused
from scheduler.events import EventLog
from scheduler.sessions import NodeRegistry
from scheduler.store import Store
from scheduler.subnets import NETWORK_CONFLICT, SUBNETS_EXHAUSTED, SubnetPool


@pytest.fixture
def store(etcd):
    s = Store([etcd.endpoint], prefix="/n/")
    yield s
    s.close()


def reg(node: str, **kw) -> apb.Register:
    return apb.Register(node=node, container_network=True, node_ip=f"192.0.2.{len(node)}", **kw)


def subnet_of(store: Store, node: str) -> str:
    v = store.get(pb.Node, store.keys.node(node))
    assert v is not None
    return v.value.subnet


def claims(etcd) -> list[str]:
    """Independent of our client: etcdctl lists the claim keys."""
    out = subprocess.run(
        ["etcdctl", "--endpoints", etcd.url, "get", "--prefix", "/n/subnets/", "--keys-only"],
        capture_output=True,
        text=True,
        check=True,
        env={"ETCDCTL_API": "3"},
    ).stdout
    return sorted(line.removeprefix("/n/subnets/") for line in out.split())


def test_subnets_are_assigned_kept_and_freed_by_deleting_the_node(store, etcd) -> None:
    registry = NodeRegistry(store, lease_ttl=5, pool=SubnetPool.parse("10.88.0.0/16"))
    lease_a, _, node_a = registry.register(reg("a"))
    registry.register(reg("b"))
    assert (node_a.subnet, node_a.node_ip) == ("10.88.0.0/24", "192.0.2.1")
    assert subnet_of(store, "b") == "10.88.1.0/24"
    assert claims(etcd) == ["10.88.0.0-24", "10.88.1.0-24"]

    registry.register(reg("a", lease_id=lease_a))  # the agent returns (a restart)
    assert subnet_of(store, "a") == "10.88.0.0/24"

    api = OrchService(store, EventLog(store), subnets=registry.subnets)
    with pytest.raises(Refused, match="node a is Ready: only a NotReady node can be deleted"):
        api._delete_node("a")
    store.revoke_lease(lease_a)  # its agent is gone for good: NotReady
    api._delete_node("a")
    assert store.get(pb.Node, store.keys.node("a")) is None
    assert claims(etcd) == ["10.88.1.0-24"]
    _, _, node_c = registry.register(reg("c"))
    assert node_c.subnet == "10.88.0.0/24"  # a's, free again


def test_a_node_without_container_networking_holds_no_subnet(store, etcd) -> None:
    registry = NodeRegistry(store, lease_ttl=5)
    registry.register(reg("a"))
    _, _, node = registry.register(apb.Register(node="a"))  # restarted without --bridge
    assert node.subnet == "" and claims(etcd) == []


def test_two_schedulers_registering_at_once_never_share_a_subnet(store, etcd) -> None:
    other = Store([etcd.endpoint], prefix="/n/")
    try:
        registries = [NodeRegistry(s, lease_ttl=5) for s in (store, other)]
        with ThreadPoolExecutor(8) as pool:
            done = list(pool.map(lambda i: registries[i % 2].register(reg(f"n{i:02}"))[2], range(24)))
    finally:
        other.close()
    subnets = [n.subnet for n in done]
    assert len(set(subnets)) == 24, sorted(subnets)
    assert claims(etcd) == sorted(s.replace("/", "-") for s in subnets)
    assert {subnet_of(store, n.name) for n in done} == set(subnets)


def test_refusals_exhaustion_and_a_conflicting_host_network(store) -> None:
    registry = NodeRegistry(store, lease_ttl=5, pool=SubnetPool.parse("10.88.0.0/23"))
    registry.register(reg("a"))
    registry.register(reg("b"))
    with pytest.raises(Refused) as full:
        registry.register(reg("c"))
    assert full.value.reason == SUBNETS_EXHAUSTED and store.get(pb.Node, store.keys.node("c")) is None
    podman = apb.HostNetwork(cidr="10.88.0.0/16", source="Podman network podman")
    with pytest.raises(Refused) as clash:
        registry.register(reg("d", host_networks=[podman]))
    assert clash.value.reason == NETWORK_CONFLICT and "Podman network podman" in str(clash.value)
