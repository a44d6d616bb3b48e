"""Filters: each returns None when the node can take the instance, else a
`Reject` whose reason reads well in "0/3 nodes available: 2 <reason>"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orch.volumes import allowed_by
from scheduler.placement.nodes import NodeView
from scheduler.placement.request import Request


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str
    resolvable: bool  # could go away without the user changing the app


NOT_READY = Reject("node(s) not ready", True)
CORDONED = Reject("node(s) cordoned", True)
SELECTOR_MISMATCH = Reject("node(s) didn't match node selector", False)
PORTS_IN_USE = Reject("node(s) didn't have free host ports", True)
PORTS_NOT_ALLOWED = Reject("node(s) didn't allow the host port", False)
HOST_PATH_NOT_ALLOWED = Reject("node(s) didn't allow the host path", False)
ANTI_AFFINITY = Reject("node(s) didn't satisfy anti-affinity", True)
INSUFFICIENT = {
    "cpu": Reject("insufficient cpu", True),
    "memory": Reject("insufficient memory", True),
    "pids": Reject("insufficient pids", True),
}

Filter = Callable[[Request, NodeView], Reject | None]


def is_ready(req: Request, node: NodeView) -> Reject | None:
    return None if node.ready else NOT_READY


def is_schedulable(req: Request, node: NodeView) -> Reject | None:
    return None if node.schedulable else CORDONED


def matches_selector(req: Request, node: NodeView) -> Reject | None:
    labels = node.labels
    for key, value in req.selector:
        if labels.get(key) != value:
            return SELECTOR_MISMATCH
    return None


def fits_resources(req: Request, node: NodeView) -> Reject | None:
    cpu_cap, mem_cap, pids_cap = node.allocatable  # 0 = the node does not limit it
    if cpu_cap and req.cpu and node.cpu + req.cpu > cpu_cap:
        return INSUFFICIENT["cpu"]
    if mem_cap and req.memory and node.memory + req.memory > mem_cap:
        return INSUFFICIENT["memory"]
    if pids_cap and req.pids and node.pids + req.pids > pids_cap:
        return INSUFFICIENT["pids"]
    return None


def has_free_host_ports(req: Request, node: NodeView) -> Reject | None:
    return PORTS_IN_USE if req.host_ports and not req.host_ports.isdisjoint(node.host_ports) else None


def allows_host_ports(req: Request, node: NodeView) -> Reject | None:
    """The node's own --host-port-range (it refuses the rest itself; this only avoids it)."""
    first, last = node.host_port_range
    if not req.host_ports or (first, last) == (0, 0):  # an agent that does not report one
        return None
    return None if all(first <= port <= last for port, _ in req.host_ports) else PORTS_NOT_ALLOWED


def allows_host_paths(req: Request, node: NodeView) -> Reject | None:
    """Every hostPath volume under a directory the node allows (it re-checks on disk itself)."""
    allowed = node.host_paths
    return None if all(allowed_by(path, allowed) for path in req.host_paths) else HOST_PATH_NOT_ALLOWED


def satisfies_anti_affinity(req: Request, node: NodeView) -> Reject | None:
    apps = node.apps
    return ANTI_AFFINITY if any(apps[a] for a in req.anti_affinity) else None


# Cheap, common rejections first.
FILTERS: tuple[Filter, ...] = (
    is_ready,
    is_schedulable,
    matches_selector,
    fits_resources,
    allows_host_ports,
    allows_host_paths,
    has_free_host_ports,
    satisfies_anti_affinity,
)


# When a filter can reject at all: a request without host ports, host paths, a selector,
# anti-affinity or resources passes it on every node.
MAY_REJECT: dict[Filter, Callable[[Request], bool]] = {
    matches_selector: lambda req: bool(req.selector),
    fits_resources: lambda req: bool(req.cpu or req.memory or req.pids),
    allows_host_ports: lambda req: bool(req.host_ports),
    allows_host_paths: lambda req: bool(req.host_paths),
    has_free_host_ports: lambda req: bool(req.host_ports),
    satisfies_anti_affinity: lambda req: bool(req.anti_affinity),
}


def filters_for(req: Request) -> tuple[Filter, ...]:
    """FILTERS without those that pass req on any node: placing one instance visits up to 50
    nodes, and most apps ask for none of ports, paths, selectors or anti-affinity."""
    return tuple(f for f in FILTERS if f not in MAY_REJECT or MAY_REJECT[f](req))


def first_reject(req: Request, node: NodeView, filters: tuple[Filter, ...] = FILTERS) -> Reject | None:
    for check in filters:
        if (reject := check(req, node)) is not None:
            return reject
    return None
