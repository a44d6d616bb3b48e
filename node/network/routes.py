"""Routes to the other nodes' container subnets (host-gw, as flannel's host-gw backend).

Each node's subnet is reachable through that node's address (its node_ip): one route per
other node, `<subnet> via <node_ip>`, in the main table, marked `proto 152` so that orch
knows its own (`ip route show proto 152`) and never touches anyone else's. That needs
every node_ip to be on a network this host reaches directly (one L2 segment); across
routers the next step is VXLAN (docs/networking.md).

Level-triggered: `sync` makes the routes with orch's mark equal the desired ones (add,
replace a changed gateway, delete what is no longer wanted), from the whole table the
scheduler sent. A node is skipped, with a reason, when it is this node, when its address
is local (several nodes in one network namespace, as `orch up --nodes` runs them: their
bridges' own routes reach them), or when it has no usable address.

One agent per network namespace owns the routes with orch's mark.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from node.network.errors import LinkError
from node.network.pyroute import NetlinkError

__all__ = ["MAIN_TABLE", "ORCH_PROTO", "NodeRoute", "RoutePlan", "Skipped", "actual", "apply", "desired", "plan"]

ORCH_PROTO = 152  # rtm_protocol of orch's routes: not one of /etc/iproute2/rt_protos' names
MAIN_TABLE = 254
_GONE = (errno.ESRCH, errno.ENOENT)


@dataclass(frozen=True, slots=True)
class NodeRoute:
    """Where one node's subnet lives (from the scheduler's Routes)."""

    node: str
    subnet: str
    node_ip: str


@dataclass(frozen=True, slots=True)
class Skipped:
    node: str
    why: str


@dataclass(frozen=True, slots=True)
class RoutePlan:
    add: dict[str, str]  # dst -> gateway: routes orch does not have yet
    change: dict[str, str]  # dst -> gateway: orch's routes whose gateway moved (replaced)
    delete: list[str]  # dst


def desired(
    nodes: Iterable[NodeRoute], own_subnet: str, local_addresses: set[str]
) -> tuple[dict[str, str], list[Skipped]]:
    """dst subnet -> gateway for every other node's subnet, and the nodes left out (pure)."""
    out: dict[str, str] = {}
    skipped = []
    for n in nodes:
        try:
            subnet = ipaddress.IPv4Network(n.subnet)
            gateway = ipaddress.IPv4Address(n.node_ip)
        except ValueError:
            skipped.append(Skipped(n.node, f"subnet {n.subnet!r} via {n.node_ip!r} is not an IPv4 route"))
            continue
        if str(subnet) == own_subnet:
            continue  # this node: its bridge carries the subnet
        if n.node_ip in local_addresses:
            continue  # a node in this network namespace: its bridge's own route reaches it
        if gateway.is_loopback or gateway.is_unspecified or gateway.is_multicast:
            skipped.append(Skipped(n.node, f"its node IP {n.node_ip} is not reachable from other hosts (--node-ip)"))
            continue
        out[str(subnet)] = n.node_ip
    return out, skipped


def plan(want: Mapping[str, str], have: Mapping[str, str]) -> RoutePlan:
    """What turns the routes we have into the ones we want (pure)."""
    add = {dst: gw for dst, gw in want.items() if dst not in have}
    change = {dst: gw for dst, gw in want.items() if dst in have and have[dst] != gw}
    return RoutePlan(add=add, change=change, delete=sorted(dst for dst in have if dst not in want))


def actual(ipr: Any) -> dict[str, str]:
    """dst -> gateway of the routes with orch's mark in the main table."""
    try:
        found = ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE, proto=ORCH_PROTO)
    except NetlinkError as e:
        raise LinkError("routes", "list", e.code) from e
    out = {}
    for r in found:
        dst = f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
        out[dst] = str(r.get_attr("RTA_GATEWAY") or "")
    return out


def apply(ipr: Any, todo: RoutePlan) -> list[str]:
    """Carry out the plan; returns what failed (each route on its own: one unreachable
    gateway must not keep the others from being installed)."""
    problems = []
    for dst in todo.delete:
        try:
            ipr.route("del", dst=dst, table=MAIN_TABLE, proto=ORCH_PROTO)
        except NetlinkError as e:
            if e.code not in _GONE:
                problems.append(f"delete route {dst}: {os.strerror(e.code)}")
    # add, not replace, for a new one: a route to that subnet that orch did not make stays (EEXIST).
    writes = [("add", dst, gw) for dst, gw in todo.add.items()] + [
        ("replace", dst, gw) for dst, gw in todo.change.items()
    ]
    for op, dst, gateway in sorted(writes, key=lambda w: w[1]):
        try:
            ipr.route(op, dst=dst, gateway=gateway, table=MAIN_TABLE, proto=ORCH_PROTO)
        except NetlinkError as e:
            problems.append(f"route {dst} via {gateway}: {os.strerror(e.code)}{_hint(e.code)}")
    return problems


def _hint(code: int) -> str:
    if code == errno.ENETUNREACH:
        return " (not on a network this host reaches directly: host-gw needs one L2 segment)"
    if code == errno.EEXIST:
        return " (this host has a route there that orch did not make: remove it, or choose another cluster CIDR)"
    return ""
