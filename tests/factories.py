"""Small factories for scheduler tests."""

from __future__ import annotations

from collections.abc import Sequence

from orch.v1 import types_pb2 as pb
from scheduler.snapshot import ClusterSnapshot, Versioned
from scheduler.timeutil import ts


def make_spec(name: str = "web", replicas: int = 3, cpu: int = 0, memory: int = 0, **kw: object) -> pb.AppSpec:
    spec = pb.AppSpec(name=name, replicas=replicas, image="rootfs:/x", **kw)  # type: ignore[arg-type]
    spec.resources.cpu_millis = cpu
    spec.resources.memory_bytes = memory
    return spec


def make_app(spec: pb.AppSpec, generation: int = 1, rollout: pb.RolloutStatus | None = None) -> pb.App:
    """rollout: the app's rollout status; by default its generation's is settled (Complete), so
    that a test of scaling or migration sees no status write (scheduler/rollout.py)."""
    settled = pb.RolloutStatus(generation=generation, reason="Complete")
    return pb.App(spec=spec, generation=generation, rollout=rollout or settled)


def make_node(
    name: str, cpu: int = 4000, memory: int = 8 << 30, labels: dict[str, str] | None = None, unschedulable: bool = False
) -> pb.Node:
    node = pb.Node(name=name, labels=labels or {}, unschedulable=unschedulable)
    node.capacity.cpu_millis = cpu
    node.capacity.memory_bytes = memory
    node.allocatable.CopyFrom(node.capacity)
    return node


def make_instance(
    app: pb.App,
    name: str,
    node: str = "",
    state: int = pb.INSTANCE_STATE_RUNNING,
    generation: int | None = None,
    created: float = 1000.0,
    ready: bool = True,
) -> pb.Instance:
    inst = pb.Instance(
        name=name,
        app=app.spec.name,
        node=node,
        desired=pb.DESIRED_STATE_RUN,
        app_generation=app.generation if generation is None else generation,
        created_at=ts(created),
        updated_at=ts(created),
    )
    inst.spec.CopyFrom(app.spec)
    inst.status.state = state  # type: ignore[assignment]
    inst.status.ready = ready
    return inst


def make_snapshot(
    apps: Sequence[pb.App] = (),
    nodes: Sequence[pb.Node] = (),
    instances: Sequence[pb.Instance] = (),
    live: set[str] | None = None,
) -> ClusterSnapshot:
    return ClusterSnapshot(
        revision=1,
        apps={a.spec.name: Versioned(a, 10) for a in apps},
        instances={i.name: Versioned(i, 20) for i in instances},
        nodes={n.name: Versioned(n, 30) for n in nodes},
        live_nodes=frozenset({n.name for n in nodes} if live is None else live),
    )
