"""place(): filter, sample, score. Pure over the given node views."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.placement.filters import filters_for, first_reject
from scheduler.placement.nodes import NodeView
from scheduler.placement.request import Request
from scheduler.placement.scores import RANKS, rank_spread

# Up to this many nodes every node is scored; above it a bounded sample of
# feasible nodes is (as Kubernetes' percentageOfNodesToScore and Nomad's
# candidate limit do).
SCORE_ALL_BELOW = 100


@dataclass(frozen=True, slots=True)
class Placement:
    node: str


@dataclass(frozen=True, slots=True)
class Unschedulable:
    diagnosis: dict[str, str]  # node -> reason

    @property
    def message(self) -> str:
        """Kubernetes style: "0/3 nodes available: 2 insufficient memory, 1 node(s) cordoned"."""
        total = len(self.diagnosis)
        if total == 0:
            return "0/0 nodes available: no nodes registered"
        counts = Counter(self.diagnosis.values())
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"0/{total} nodes available: {parts}"


SAMPLE = 50


def feasible_limit(total: int) -> int:
    # A fixed-size sample keeps a placement O(1) in the cluster size; the
    # rotating start makes successive placements look at different nodes.
    return total if total <= SCORE_ALL_BELOW else SAMPLE


def place(req: Request, nodes: Sequence[NodeView], start: int = 0) -> Placement | Unschedulable:
    """Pick a node for one instance.

    `nodes` is visited from `start` (rotating it spreads the sample between
    calls); the first `feasible_limit` feasible nodes are scored.
    """
    limit = feasible_limit(len(nodes))
    feasible: list[NodeView] = []
    diagnosis: dict[str, str] = {}
    n = len(nodes)
    filters = filters_for(req)
    for i in range(n):
        node = nodes[(start + i) % n]
        reject = first_reject(req, node, filters)
        if reject is None:
            feasible.append(node)
            if len(feasible) >= limit:
                break
        else:
            diagnosis[node.name] = reject.reason
    if not feasible:
        return Unschedulable(diagnosis)
    rank = RANKS.get(req.strategy, rank_spread)
    best = max(feasible, key=lambda nd: rank(req, nd))
    return Placement(best.name)
