"""Filters: each returns None when the node can take the instance, else a
`Reject` whose reason reads well in "0/3 nodes available: 2 <reason>"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orch.v1 import types_pb2 as pb
from scheduler.placement.nodes import NodeView, host_ports


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str
    resolvable: bool  # could go away without the user changing the app


NOT_READY = Reject("node(s) not ready", True)
CORDONED = Reject("node(s) cordoned", True)
SELECTOR_MISMATCH = Reject("node(s) didn't match node selector", False)
PORTS_IN_USE = Reject("node(s) didn't have free host ports", True)
INSUFFICIENT = {
    "cpu": Reject("insufficient cpu", True),
    "memory": Reject("insufficient memory", True),
    "pids": Reject("insufficient pids", True),
}

Filter = Callable[[pb.AppSpec, NodeView], Reject | None]


def is_ready(spec: pb.AppSpec, node: NodeView) -> Reject | None:
    return None if node.ready else NOT_READY


def is_schedulable(spec: pb.AppSpec, node: NodeView) -> Reject | None:
    return None if node.schedulable else CORDONED


def matches_selector(spec: pb.AppSpec, node: NodeView) -> Reject | None:
    ok = all(node.labels.get(k) == v for k, v in spec.node_selector.items())
    return None if ok else SELECTOR_MISMATCH


def fits_resources(spec: pb.AppSpec, node: NodeView) -> Reject | None:
    req = spec.resources
    cpu_cap, mem_cap, pids_cap = node.allocatable
    for name, used, want, cap in (
        ("cpu", node.cpu, req.cpu_millis, cpu_cap),
        ("memory", node.memory, req.memory_bytes, mem_cap),
        ("pids", node.pids, req.pids, pids_cap),
    ):
        if cap and want and used + want > cap:
            return INSUFFICIENT[name]
    return None


def has_free_host_ports(spec: pb.AppSpec, node: NodeView) -> Reject | None:
    return PORTS_IN_USE if host_ports(spec) & node.host_ports else None


# Cheap, common rejections first.
FILTERS: tuple[Filter, ...] = (
    is_ready,
    is_schedulable,
    matches_selector,
    fits_resources,
    has_free_host_ports,
)


def first_reject(spec: pb.AppSpec, node: NodeView) -> Reject | None:
    for check in FILTERS:
        if (reject := check(spec, node)) is not None:
            return reject
    return None
