"""The agent's Prometheus metrics (prefix orch_node_).

Per-instance resource usage is read from the containers' cgroups at scrape
time by a collector, so there is no sampling loop and no stale series for
instances that are gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from node.runtime import CgroupStats, ContainerError
from orch.v1 import types_pb2 as pb

log = logging.getLogger(__name__)

# (instance, app) pairs of the instances running on this node
Running = Callable[[], Iterable[tuple[str, str]]]


class InstanceUsage(Collector):
    def __init__(self, running: Running, stats: Callable[[str], CgroupStats]) -> None:
        self._running = running
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        # Not "instance": Prometheus sets that label to the scrape target and would
        # rename ours to exported_instance.
        labels = ["instance_name", "app"]
        cpu = CounterMetricFamily("orch_node_instance_cpu_seconds", "CPU time used by the instance.", labels=labels)
        mem = GaugeMetricFamily("orch_node_instance_memory_bytes", "Memory in use, page cache included.", labels=labels)
        ws = GaugeMetricFamily(
            "orch_node_instance_memory_working_set_bytes", "Memory in use minus inactive file cache.", labels=labels
        )
        pids = GaugeMetricFamily("orch_node_instance_pids", "Processes and threads of the instance.", labels=labels)
        ooms = CounterMetricFamily("orch_node_instance_oom_kills", "OOM kills in the instance's cgroup.", labels=labels)
        for name, app in self._running():
            try:
                s = self._stats(name)
            except (ContainerError, OSError):
                continue  # it ended between listing and reading
            cpu.add_metric([name, app], s.cpu_usage_ns / 1e9)
            mem.add_metric([name, app], s.memory_bytes)
            ws.add_metric([name, app], s.memory_working_set_bytes)
            pids.add_metric([name, app], s.pids)
            ooms.add_metric([name, app], s.oom_kills)
        yield from (cpu, mem, ws, pids, ooms)


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

    def watch_usage(self, running: Running, stats: Callable[[str], CgroupStats]) -> None:
        self.registry.register(InstanceUsage(running, stats))

    def observe(self, status: pb.InstanceStatus) -> None:
        name = pb.InstanceState.Name(status.state).removeprefix("INSTANCE_STATE_").lower()
        self.transitions.labels(name).inc()
