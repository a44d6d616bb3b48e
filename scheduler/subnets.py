"""Container subnets, pure: which subnet of the cluster CIDR a registering node gets.

Vocabulary:
    cluster CIDR   every container address of the cluster (orch scheduler --cluster-cidr,
                   default 10.88.0.0/16); traffic leaving it is masqueraded by the nodes
    node subnet    one node's share of it (--node-subnet-size, default /24), on its bridge
    claims         which node holds which subnet: <prefix>subnets/<subnet> in etcd, written in
                   the same transaction as the node record, so two schedulers registering two
                   nodes at once cannot hand out one subnet twice
    host networks  what a node's host already routes (its own routes, Podman's networks); the
                   cluster CIDR must not overlap them, or containers and the host would fight
                   over addresses

`assign()` keeps a returning node's subnet (its record's, or the one it asks for because its
containers use it), hands a new node the lowest free one, and refuses with a `Refusal` (a
value: the reason becomes an event and the agent's error) when the CIDR overlaps the node's
host networks, the asked-for subnet is not the node's to take, or none is left.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CLUSTER_CIDR",
    "DEFAULT_NODE_PREFIX",
    "NETWORK_CONFLICT",
    "SUBNETS_EXHAUSTED",
    "SUBNET_TAKEN",
    "HostNetwork",
    "PoolError",
    "Refusal",
    "SubnetPool",
    "assign",
    "conflicts",
]

DEFAULT_CLUSTER_CIDR = "10.88.0.0/16"  # Podman's default too: refused where Podman's network exists
DEFAULT_NODE_PREFIX = 24  # 254 containers per node, 256 nodes in the default CIDR

# Refusal reasons (also the Warning events' reasons).
NETWORK_CONFLICT = "NodeNetworkConflict"
SUBNET_TAKEN = "NodeSubnetTaken"
SUBNETS_EXHAUSTED = "NodeSubnetsExhausted"


class PoolError(ValueError):
    """--cluster-cidr / --node-subnet-size are not usable; the message names the option."""


@dataclass(frozen=True, slots=True)
class SubnetPool:
    cidr: ipaddress.IPv4Network
    prefix: int  # of each node subnet

    @classmethod
    def parse(cls, cidr: str, prefix: int = DEFAULT_NODE_PREFIX) -> SubnetPool:
        try:
            net = ipaddress.IPv4Network(cidr, strict=True)
        except ValueError as e:
            raise PoolError(f"--cluster-cidr {cidr!r}: {e} (want e.g. {DEFAULT_CLUSTER_CIDR})") from None
        if not net.prefixlen <= prefix <= 30:
            raise PoolError(f"--node-subnet-size {prefix}: want /{net.prefixlen}../30 for --cluster-cidr {cidr}")
        return cls(net, prefix)

    @property
    def size(self) -> int:
        """How many node subnets the pool holds."""
        return 1 << (self.prefix - self.cidr.prefixlen)


@dataclass(frozen=True, slots=True)
class HostNetwork:
    cidr: str
    source: str  # "route dev eth0", "Podman network podman"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # NETWORK_CONFLICT | SUBNET_TAKEN | SUBNETS_EXHAUSTED
    message: str


def _net(text: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        return None


def conflicts(pool: SubnetPool, host_networks: Iterable[HostNetwork], subnets: Iterable[str]) -> list[HostNetwork]:
    """The host networks overlapping the cluster CIDR. A route that is exactly another node's
    subnet is that node's bridge on the same host (several agents in one network namespace,
    as `orch up --nodes` runs them), not a conflict."""
    ours = {n for n in map(_net, subnets) if n is not None}
    out = []
    for host_net in host_networks:
        net = _net(host_net.cidr)
        if net is not None and net.overlaps(pool.cidr) and net not in ours:
            out.append(host_net)
    return out


def assign(
    pool: SubnetPool,
    node: str,
    claims: Mapping[str, str],
    recorded: str = "",
    requested: str = "",
    host_networks: Iterable[HostNetwork] = (),
    pick: int = 0,
) -> str | Refusal:
    """The node's subnet, or why it gets none.

    claims: subnet -> node, every claim in the cluster; recorded: the subnet on the node's
    record (a node that returns keeps it); requested: the subnet the node must have (empty:
    any); pick: which free subnet a new node takes, 0 the lowest (nodes joining at once race for
    it: after a lost race the caller spreads them over the lowest few)."""
    others = {s: n for s, n in claims.items() if n != node}
    clash = conflicts(pool, host_networks, others)
    if clash:
        first = clash[0]
        return Refusal(
            NETWORK_CONFLICT,
            f"the cluster CIDR {pool.cidr} overlaps {first.cidr} ({first.source}) on node {node}: give the "
            "schedulers another --cluster-cidr (orch up --cidr), or remove that network from the node",
        )
    if requested:
        return _requested(pool, node, requested, others)
    if recorded and _usable(pool, recorded, others):
        return recorded
    return _lowest_free(pool, node, others, pick)


def _usable(pool: SubnetPool, subnet: str, others: Mapping[str, str]) -> bool:
    net = _net(subnet)
    return net is not None and net.subnet_of(pool.cidr) and _holder(net, others) is None


def _holder(net: ipaddress.IPv4Network, others: Mapping[str, str]) -> str | None:
    """The node whose subnet overlaps net, if any."""
    for subnet, holder in others.items():
        other = _net(subnet)
        if other is not None and other.overlaps(net):
            return holder
    return None


def _requested(pool: SubnetPool, node: str, requested: str, others: Mapping[str, str]) -> str | Refusal:
    net = _net(requested)
    if net is None or str(net) != requested or net.prefixlen > 30:
        return Refusal(SUBNET_TAKEN, f"node {node} asks for subnet {requested!r}: not an IPv4 subnet of /30 or larger")
    if not net.subnet_of(pool.cidr):
        return Refusal(
            SUBNET_TAKEN,
            f"node {node} asks for subnet {requested}, outside the cluster CIDR {pool.cidr}: drop its --subnet, "
            "or if its containers use it from an earlier cluster, `orch node --cleanup` it first",
        )
    holder = _holder(net, others)
    if holder is not None:
        return Refusal(
            SUBNET_TAKEN,
            f"node {node} asks for subnet {requested}, which overlaps node {holder}'s: drop its --subnet, or if "
            "its containers use it from before it was deleted, `orch node --cleanup` it first",
        )
    return requested


def _lowest_free(pool: SubnetPool, node: str, others: Mapping[str, str], pick: int = 0) -> str | Refusal:
    taken = [n for n in map(_net, others) if n is not None]
    same_size = {t for t in taken if t.prefixlen == pool.prefix}  # the common case, looked up in O(1)
    odd = [t for t in taken if t.prefixlen != pool.prefix]  # --subnet overrides of another size
    found = None
    for candidate in pool.cidr.subnets(new_prefix=pool.prefix):
        if candidate not in same_size and not any(candidate.overlaps(t) for t in odd):
            found = str(candidate)
            if pick == 0:
                return found
            pick -= 1
    if found is not None:  # fewer free ones than pick: the highest
        return found
    return Refusal(
        SUBNETS_EXHAUSTED,
        f"no /{pool.prefix} left in the cluster CIDR {pool.cidr} for node {node} (all {pool.size} are held): "
        "delete nodes that left (orch delete node NAME), or give the schedulers a larger --cluster-cidr",
    )
