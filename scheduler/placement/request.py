"""What one instance asks of a node, computed once per placement instead of
once per node visited (the pipeline's hot path)."""

from __future__ import annotations

from dataclasses import dataclass

from orch.v1 import types_pb2 as pb


@dataclass(frozen=True, slots=True)
class Request:
    app: str
    cpu: int
    memory: int
    pids: int
    selector: tuple[tuple[str, str], ...]
    host_ports: frozenset[tuple[int, str]]
    strategy: int
    avoid: frozenset[str]
    anti_affinity: tuple[str, ...] = ()
    host_paths: tuple[str, ...] = ()  # of the app's hostPath volumes


def host_ports(spec: pb.AppSpec) -> frozenset[tuple[int, str]]:
    return frozenset((p.host_port, p.protocol or "tcp") for p in spec.ports if p.host_port)


def request_for(spec: pb.AppSpec, avoid: frozenset[str] = frozenset()) -> Request:
    res = spec.resources
    return Request(
        app=spec.name,
        cpu=res.cpu_millis,
        memory=res.memory_bytes,
        pids=res.pids,
        selector=tuple(sorted(spec.node_selector.items())),
        host_ports=host_ports(spec),
        strategy=spec.placement,
        avoid=avoid,
        anti_affinity=tuple(spec.anti_affinity),
        host_paths=tuple(v.host_path.path for v in spec.volumes if v.HasField("host_path")),
    )
