"""The agent's Prometheus metrics (prefix orch_node_).

Per-instance resource usage is read from the containers' cgroups at scrape
time by a collector, so there is no sampling loop and no stale series for
instances that are gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from node.network.counters import LinkCounters, container_view, read_link_counters
from node.runtime import CgroupStats, ContainerError
from orch.states import state_name
from orch.v1 import types_pb2 as pb

log = logging.getLogger(__name__)

# (instance, app) pairs of the instances running on this node
Running = Callable[[], Iterable[tuple[str, str]]]


Limits = Callable[[str], pb.Resources | None]  # an instance's resources (its limits), if known
VethOf = Callable[[str], str | None]  # an instance's host veth; None: the node has no container network


class InstanceUsage(Collector):
    def __init__(self, running: Running, stats: Callable[[str], CgroupStats], limits: Limits) -> None:
        self._running = running
        self._stats = stats
        self._limits = limits

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
        periods = CounterMetricFamily(
            "orch_node_instance_cpu_cfs_periods", "CFS periods that elapsed under a CPU limit.", labels=labels
        )
        throttled = CounterMetricFamily(
            "orch_node_instance_cpu_cfs_throttled_periods", "CFS periods in which the CPU limit was hit.", labels=labels
        )
        throttled_s = CounterMetricFamily(
            "orch_node_instance_cpu_cfs_throttled_seconds", "Time throttled by the CPU limit.", labels=labels
        )
        cpu_limit = GaugeMetricFamily("orch_node_instance_cpu_limit_cores", "The instance's CPU limit.", labels=labels)
        mem_limit = GaugeMetricFamily(
            "orch_node_instance_memory_limit_bytes", "The instance's memory limit.", labels=labels
        )
        for name, app in self._running():
            try:
                s = self._stats(name)
            except (ContainerError, OSError):
                continue  # it ended between listing and reading
            key = [name, app]
            cpu.add_metric(key, s.cpu_usage_ns / 1e9)
            mem.add_metric(key, s.memory_bytes)
            ws.add_metric(key, s.memory_working_set_bytes)
            pids.add_metric(key, s.pids)
            ooms.add_metric(key, s.oom_kills)
            periods.add_metric(key, s.cpu_periods)
            throttled.add_metric(key, s.cpu_throttled_periods)
            throttled_s.add_metric(key, s.cpu_throttled_ns / 1e9)
            if (res := self._limits(name)) is not None:  # only limits that are set: 0 means none
                if res.cpu_millis:
                    cpu_limit.add_metric(key, res.cpu_millis / 1000)
                if res.memory_bytes:
                    mem_limit.add_metric(key, res.memory_bytes)
        yield from (cpu, mem, ws, pids, ooms, periods, throttled, throttled_s, cpu_limit, mem_limit)


_NETWORK = (  # (name, help, the counter of the container's eth0)
    ("receive_bytes", "Bytes the instance received on its eth0.", "rx_bytes"),
    ("transmit_bytes", "Bytes the instance sent from its eth0.", "tx_bytes"),
    ("receive_packets", "Packets the instance received on its eth0.", "rx_packets"),
    ("transmit_packets", "Packets the instance sent from its eth0.", "tx_packets"),
    ("receive_packets_dropped", "Packets for the instance its veth could not hand over.", "rx_dropped"),
    ("transmit_packets_dropped", "Packets from the instance its veth could not take.", "tx_dropped"),
)


class InstanceNetwork(Collector):
    """Per-instance traffic from the veths' host ends: one read of /proc/net/dev per scrape
    (node/network/counters.py says why that end, and what the drops count)."""

    def __init__(
        self, running: Running, veth_of: VethOf, read: Callable[[], dict[str, LinkCounters]] = read_link_counters
    ) -> None:
        self._running = running
        self._veth_of = veth_of
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        labels = ["instance_name", "app"]
        families = [
            CounterMetricFamily(f"orch_node_instance_network_{name}", text, labels=labels) for name, text, _ in _NETWORK
        ]
        links: dict[str, LinkCounters] | None = None
        for name, app in self._running():
            veth = self._veth_of(name)
            if veth is None:
                continue  # no container network on this node: the instance has only lo
            if links is None:
                try:
                    links = self._read()
                except OSError as e:
                    log.warning("network counters: %s", e)
                    return
            # A veth not there (yet) counts 0: the series lives as long as the instance runs.
            seen = container_view(links.get(veth, LinkCounters()))
            for family, (_, _, field) in zip(families, _NETWORK, strict=True):
                family.add_metric([name, app], getattr(seen, field))
        yield from families


class NodeMetrics:
    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.instances = Gauge("orch_node_instances", "Instances this agent manages.", registry=r)
        self.transitions = Counter(
            "orch_node_instance_transitions_total", "Instance state changes, by new state.", ["state"], registry=r
        )
        # Counted by the agent when it sees the exit, so an OOM kill is never missed because the
        # instance's cgroup (and its oom_kill count) was gone before the next scrape.
        self.exits = Counter(
            "orch_instance_exits_total",
            "Exits of instances' main processes, by app and reason.",
            ["app", "reason"],
            registry=r,
        )
        # The node's name is the scrape target's `node` label (file_sd, static_configs); a label
        # of the same name here would come out as exported_node.
        self.info = Gauge("orch_node_info", "Constant 1, labelled with the agent's version.", ["version"], registry=r)
        self.info.labels(version).set(1)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...

    def watch_usage(self, running: Running, stats: Callable[[str], CgroupStats], limits: Limits) -> None:
        self.registry.register(InstanceUsage(running, stats, limits))

    def watch_network(self, running: Running, veth_of: VethOf) -> None:
        self.registry.register(InstanceNetwork(running, veth_of))

    def observe(self, status: pb.InstanceStatus) -> None:
        self.transitions.labels(state_name(status.state)).inc()  # as `orch get` spells it

    def started(self, app: str) -> None:
        """An instance of app runs here: its exit series exist from now on, at 0, so the first
        exit is an increase Prometheus sees (a series born at 1 shows no increase)."""
        for reason in EXIT_REASONS:
            self.exits.labels(app, reason)

    def exited(self, app: str, reason: str) -> None:
        self.exits.labels(app, reason).inc()


EXIT_REASONS = ("Completed", "Error", "OOMKilled", "LivenessFailed", "StartupFailed")
