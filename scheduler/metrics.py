"""The scheduler's Prometheus metrics (prefix orch_scheduler_)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconcile_passes = Counter(
            "orch_scheduler_reconcile_passes_total", "Reconcile passes.", ["result"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "orch_scheduler_reconcile_duration_seconds", "Reconcile pass duration.", registry=r
        )
        self.placements = Counter("orch_scheduler_placements_total", "Instances assigned to nodes.", registry=r)
        self.is_leader = Gauge("orch_scheduler_leader", "1 while this scheduler is the leader.", registry=r)
        self.sessions = Gauge("orch_scheduler_agent_sessions", "Open agent sessions.", registry=r)
