"""place(): filter, sample, score. Pure over the given node views."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from orch.v1 import types_pb2 as pb
from scheduler.placement.filters import first_reject
from scheduler.placement.nodes import NodeView
from scheduler.placement.scores import STRATEGIES, score_reschedule_penalty

# Below this many nodes every node is scored; above it a bounded sample of
# feasible nodes is (as Kubernetes' percentageOfNodesToScore does).
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


def feasible_limit(total: int) -> int:
    return total if total <= SCORE_ALL_BELOW else max(SCORE_ALL_BELOW, total // 20)


def place(
    spec: pb.AppSpec, nodes: Sequence[NodeView], start: int = 0, avoid: frozenset[str] = frozenset()
) -> Placement | Unschedulable:
    """Pick a node for one instance of spec.

    `nodes` is visited from `start` (rotating it spreads the sample between
    calls); the first `feasible_limit` feasible nodes are scored. Nodes in
    `avoid` (where this slot kept crashing) rank below all others.
    """
    limit = feasible_limit(len(nodes))
    feasible: list[NodeView] = []
    diagnosis: dict[str, str] = {}
    n = len(nodes)
    for i in range(n):
        node = nodes[(start + i) % n]
        reject = first_reject(spec, node)
        if reject is None:
            feasible.append(node)
            if len(feasible) >= limit:
                break
        else:
            diagnosis[node.name] = reject.reason
    if not feasible:
        return Unschedulable(diagnosis)
    scores = STRATEGIES.get(spec.placement, STRATEGIES[pb.PLACEMENT_STRATEGY_SPREAD])
    best = max(
        feasible,
        key=lambda nd: (score_reschedule_penalty(nd, avoid), *(s(spec, nd) for s in scores), _tiebreak(nd.name)),
    )
    return Placement(best.name)


def _tiebreak(name: str) -> tuple[int, ...]:
    # Deterministic: on equal scores the lexically smallest name wins.
    return tuple(-ord(c) for c in name)
