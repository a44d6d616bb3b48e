"""The scheduler's Prometheus metrics (prefix orch_scheduler_)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orch.v1 import types_pb2 as pb

if TYPE_CHECKING:
    from scheduler.cache import ClusterCache


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.reconcile_passes = Counter(
            "orch_scheduler_reconcile_passes_total", "Reconcile passes.", ["result"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "orch_scheduler_reconcile_duration_seconds", "Reconcile pass duration.", registry=r
        )
        self.placements = Counter("orch_scheduler_placements_total", "Instances assigned to nodes.", registry=r)
        self.is_leader = Gauge("orch_scheduler_leader", "1 while this scheduler is the leader.", registry=r)
        self.sessions = Gauge("orch_scheduler_agent_sessions", "Open agent sessions.", registry=r)
        # Liveness holds (scheduler/liveness.py): NotReady nodes whose instances are kept, by why.
        self.evictions_held = Gauge(
            "orch_scheduler_evictions_held_nodes",
            "NotReady nodes whose instances are not replaced.",
            ["reason"],
            registry=r,
        )
        self.eviction_holds = Counter(
            "orch_scheduler_eviction_holds_total", "Times evictions were held back, by why.", ["reason"], registry=r
        )


def state_name(state: int) -> str:
    """INSTANCE_STATE_CRASH... -> the CLI's spelling (Running, Lost, ...)."""
    name = pb.InstanceState.Name(state).removeprefix("INSTANCE_STATE_")  # type: ignore[arg-type]
    return "".join(part.capitalize() for part in name.split("_"))


class ClusterCollector(Collector):
    """Cluster state as every scheduler's cache sees it, read at scrape time (like
    kube-state-metrics): instances by app and state, and live nodes. All schedulers
    export the same numbers; dashboards take max() over them."""

    def __init__(self, cache: ClusterCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # Runs on the HTTP server's thread: copy before iterating what the event loop mutates.
        instances = [v.value for v in list(self._cache.instances.values())]
        tally = Tally((i.app, state_name(i.status.state)) for i in instances)
        family = GaugeMetricFamily("orch_scheduler_instances", "Instances by app and state.", labels=["app", "state"])
        for (app, state), count in sorted(tally.items()):
            family.add_metric([app, state], count)
        yield family
        yield GaugeMetricFamily(
            "orch_scheduler_live_nodes", "Nodes whose liveness lease is held.", value=len(self._cache.live_nodes)
        )
