"""The agent's Prometheus metrics (prefix orch_node_)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from orch.v1 import types_pb2 as pb


class NodeMetrics:
    def __init__(self, node: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.instances = Gauge("orch_node_instances", "Instances this agent manages.", registry=r)
        self.transitions = Counter(
            "orch_node_instance_transitions_total", "Instance state changes, by new state.", ["state"], registry=r
        )
        self.info = Gauge("orch_node_info", "Constant 1, labelled with the node name.", ["node"], registry=r)
        self.info.labels(node).set(1)

    def observe(self, status: pb.InstanceStatus) -> None:
        name = pb.InstanceState.Name(status.state).removeprefix("INSTANCE_STATE_").lower()
        self.transitions.labels(name).inc()
