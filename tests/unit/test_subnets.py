"""scheduler/subnets.py: which subnet of the cluster CIDR a registering node gets."""

from __future__ import annotations

import pytest

from scheduler.subnets import (
    NETWORK_CONFLICT,
    SUBNET_TAKEN,
    SUBNETS_EXHAUSTED,
    HostNetwork,
    PoolError,
    Refusal,
    SubnetPool,
    assign,
)

POOL = SubnetPool.parse("10.88.0.0/16")


def test_new_nodes_get_the_lowest_free_subnet_in_turn() -> None:
    claims: dict[str, str] = {}
    for node in ("a", "b", "c"):
        subnet = assign(POOL, node, claims)
        assert isinstance(subnet, str)
        claims[subnet] = node
    assert claims == {"10.88.0.0/24": "a", "10.88.1.0/24": "b", "10.88.2.0/24": "c"}


def test_a_returning_node_keeps_its_subnet() -> None:
    claims = {"10.88.0.0/24": "a", "10.88.1.0/24": "b"}
    assert assign(POOL, "b", claims, recorded="10.88.1.0/24") == "10.88.1.0/24"
    # Its own claim is no obstacle; and it keeps it even when a lower one is free.
    assert assign(POOL, "b", {"10.88.1.0/24": "b"}, recorded="10.88.1.0/24") == "10.88.1.0/24"


def test_a_deleted_nodes_subnet_is_free_again() -> None:
    claims = {"10.88.0.0/24": "a", "10.88.2.0/24": "c"}  # b's claim went with its record
    assert assign(POOL, "d", claims) == "10.88.1.0/24"


def test_a_node_asking_for_its_subnet_gets_it_if_free_and_in_the_cidr() -> None:
    assert assign(POOL, "a", {}, requested="10.88.7.0/24") == "10.88.7.0/24"
    assert assign(POOL, "a", {}, requested="10.88.7.0/25") == "10.88.7.0/25"  # another size is fine
    # The lowest free one then skips the overlap with an odd-sized claim.
    assert assign(POOL, "b", {"10.88.0.128/25": "a"}) == "10.88.1.0/24"


@pytest.mark.parametrize(
    ("requested", "says"),
    [
        ("10.88.1.0/24", "overlaps node b's"),
        ("10.88.1.128/25", "overlaps node b's"),
        ("10.99.0.0/24", "outside the cluster CIDR 10.88.0.0/16"),
        ("10.88.1.5/24", "not an IPv4 subnet"),
        ("10.88.1.0/31", "not an IPv4 subnet"),
        ("banana", "not an IPv4 subnet"),
    ],
)
def test_a_requested_subnet_that_is_not_the_nodes_to_take_is_refused(requested: str, says: str) -> None:
    got = assign(POOL, "a", {"10.88.1.0/24": "b"}, requested=requested)
    assert isinstance(got, Refusal) and got.reason == SUBNET_TAKEN, got
    assert says in got.message and "node a" in got.message


def test_exhaustion_is_a_refusal_that_says_what_to_do() -> None:
    pool = SubnetPool.parse("10.88.0.0/23")  # two /24s
    claims = {"10.88.0.0/24": "a", "10.88.1.0/24": "b"}
    got = assign(pool, "c", claims)
    assert isinstance(got, Refusal) and got.reason == SUBNETS_EXHAUSTED
    assert "no /24 left in the cluster CIDR 10.88.0.0/23" in got.message
    assert "orch delete node" in got.message and "--cluster-cidr" in got.message
    # The nodes that hold one still keep theirs, and a freed one is handed out again.
    assert assign(pool, "b", claims, recorded="10.88.1.0/24") == "10.88.1.0/24"
    assert assign(pool, "c", {"10.88.0.0/24": "a"}) == "10.88.1.0/24"


def test_a_cidr_overlapping_the_nodes_host_networks_is_refused() -> None:
    podman = HostNetwork("10.88.0.0/16", "Podman network podman")
    got = assign(POOL, "a", {}, host_networks=[HostNetwork("192.0.2.0/24", "route dev eth0"), podman])
    assert isinstance(got, Refusal) and got.reason == NETWORK_CONFLICT
    assert got.message.startswith("the cluster CIDR 10.88.0.0/16 overlaps 10.88.0.0/16 (Podman network podman)")
    assert "--cluster-cidr" in got.message and "node a" in got.message
    inside = assign(POOL, "a", {}, host_networks=[HostNetwork("10.88.200.0/24", "route dev br-lan")])
    assert isinstance(inside, Refusal) and inside.reason == NETWORK_CONFLICT
    covering = assign(POOL, "a", {}, host_networks=[HostNetwork("10.0.0.0/8", "route dev wg0")])
    assert isinstance(covering, Refusal) and covering.reason == NETWORK_CONFLICT


def test_another_nodes_bridge_on_the_same_host_is_no_conflict() -> None:
    # orch up --nodes: node b's host (the same network namespace) routes node a's subnet to a's bridge.
    claims = {"10.88.0.0/24": "a"}
    assert assign(POOL, "b", claims, host_networks=[HostNetwork("10.88.0.0/24", "route dev orch1n0")]) == (
        "10.88.1.0/24"
    )
    # But a route to a subnet nobody holds is someone else's network.
    got = assign(POOL, "b", claims, host_networks=[HostNetwork("10.88.5.0/24", "route dev br0")])
    assert isinstance(got, Refusal) and got.reason == NETWORK_CONFLICT


def test_networks_outside_the_cidr_are_fine() -> None:
    nets = [HostNetwork("10.89.0.0/24", "Podman network other"), HostNetwork("192.0.2.0/24", "route dev eth0")]
    assert assign(POOL, "a", {}, host_networks=nets) == "10.88.0.0/24"


@pytest.mark.parametrize(
    ("cidr", "prefix", "says"),
    [
        ("10.88.0.0/33", 24, "--cluster-cidr"),
        ("10.88.1.0/16", 24, "--cluster-cidr"),  # host bits set: surely a typo
        ("fd00::/64", 24, "--cluster-cidr"),
        ("10.88.0.0/16", 8, "--node-subnet-size 8"),
        ("10.88.0.0/16", 31, "--node-subnet-size 31"),
    ],
)
def test_a_bad_pool_names_the_option(cidr: str, prefix: int, says: str) -> None:
    with pytest.raises(PoolError, match=says):
        SubnetPool.parse(cidr, prefix)


def test_a_large_pool_stays_quick_to_fill() -> None:
    pool = SubnetPool.parse("10.0.0.0/8")
    claims = {f"10.{i // 256}.{i % 256}.0/24": f"n{i}" for i in range(5000)}
    assert assign(pool, "new", claims) == "10.19.136.0/24"  # the 5001st /24
    assert pool.size == 65536


def test_after_a_lost_race_a_node_picks_among_the_lowest_free_ones() -> None:
    claims = {"10.88.0.0/24": "a", "10.88.2.0/24": "b"}
    assert [assign(POOL, "c", claims, pick=p) for p in range(3)] == ["10.88.1.0/24", "10.88.3.0/24", "10.88.4.0/24"]
    tiny = SubnetPool.parse("10.88.0.0/23")
    assert assign(tiny, "c", {"10.88.0.0/24": "a"}, pick=5) == "10.88.1.0/24"  # fewer free than pick: the last
