"""Per-node accounting that placement filters and scores read."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from orch.v1 import types_pb2 as pb
from scheduler.placement.request import Request, request_for
from scheduler.snapshot import ClusterSnapshot, wants_to_run

# States in which an instance no longer holds its node's resources.
RELEASED = frozenset(
    {pb.INSTANCE_STATE_STOPPED, pb.INSTANCE_STATE_SUCCEEDED, pb.INSTANCE_STATE_FAILED, pb.INSTANCE_STATE_LOST}
)


def holds_resources(inst: pb.Instance) -> bool:
    return wants_to_run(inst) or inst.status.state not in RELEASED


@dataclass(slots=True)
class NodeView:
    """One node as placement sees it; `add` records a planned placement."""

    name: str
    ready: bool
    schedulable: bool
    labels: dict[str, str]
    allocatable: tuple[int, int, int]  # cpu millis, memory bytes, pids; 0 = unlimited
    host_port_range: tuple[int, int] = (0, 0)  # what the node publishes; (0, 0): any
    host_paths: tuple[str, ...] = ()  # the directories hostPath volumes may use (--allow-host-path)
    cpu: int = 0
    memory: int = 0
    pids: int = 0
    host_ports: set[tuple[int, str]] = field(default_factory=set)
    apps: Counter[str] = field(default_factory=Counter)
    total: int = 0
    order: int = 0  # position by name: the deterministic tie-break
    allocated: float = 0.0  # mean share of cpu and memory requested, kept current by add()

    def add(self, req: Request) -> None:
        self.cpu += req.cpu
        self.memory += req.memory
        self.pids += req.pids
        if req.host_ports:
            self.host_ports.update(req.host_ports)
        self.apps[req.app] += 1
        self.total += 1
        self.allocated = allocated_fraction(self.cpu, self.memory, self.allocatable)


def allocated_fraction(cpu: int, memory: int, allocatable: tuple[int, int, int]) -> float:
    """Mean share of cpu and memory requested; a resource the node does not limit counts as 0."""
    parts = [used / cap for used, cap in ((cpu, allocatable[0]), (memory, allocatable[1])) if cap]
    return sum(parts) / len(parts) if parts else 0.0


def allocatable(node: pb.Node) -> tuple[int, int, int]:
    res = node.allocatable if node.HasField("allocatable") else node.capacity
    return res.cpu_millis, res.memory_bytes, res.pids


def node_views(snap: ClusterSnapshot, without: str = "") -> dict[str, NodeView]:
    """without: an instance left out, as if it were being placed now (`orch explain`)."""
    views = {
        name: NodeView(
            name=name,
            ready=snap.is_ready(name),
            schedulable=not (v.value.unschedulable or v.value.draining),
            labels=dict(v.value.labels),
            allocatable=allocatable(v.value),
            host_port_range=(v.value.host_port_min, v.value.host_port_max),
            host_paths=tuple(v.value.allowed_host_paths),
        )
        for name, v in snap.nodes.items()
    }
    for order, name in enumerate(sorted(views)):
        views[name].order = order
    # One Request per template, not per instance: building it for each of 50,000 instances was an
    # eighth of a pass. Shared only where hydration gives every instance of that (app,
    # generation) one spec (Templates.shared); a record an older scheduler wrote may carry its own.
    requests: dict[tuple[str, int], Request] = {}
    for v in snap.instances.values():
        inst = v.value
        view = views.get(inst.node)
        if view is None or not holds_resources(inst) or inst.name == without:
            continue
        key = (inst.app, inst.app_generation)
        if (request := requests.get(key)) is None:
            request = request_for(snap.spec_of(inst))  # hydrated or as stored (ListNodes: the cache's)
            record = snap.apps.get(inst.app)
            if snap.templates.shared(inst.app, inst.app_generation, record.value if record else None):
                requests[key] = request
        view.add(request)
    return views
