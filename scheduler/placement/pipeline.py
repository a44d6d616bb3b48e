"""place(): filter, sample, score. Pure over the given node views.
place_all(): a pass's pending instances, in order, each placement recorded on its view."""

from __future__ import annotations

import heapq
import itertools
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


def place_all(reqs: Sequence[Request], nodes: Sequence[NodeView]) -> list[Placement | Unschedulable]:
    """Place each request in turn, recording each placement on its node's view (`add`), so one
    pass never overcommits a node.

    A run of requests that ask the same (the replicas of an apply or a scale) is placed with one
    heap of every feasible node's rank when that visits fewer nodes than sampling each: a
    placement changes only its own node's rank, so the heap stays exact, and each replica goes
    to the best node of all, where a sample finds the best of 50. Up to SCORE_ALL_BELOW nodes
    every node is scored either way, with the same result."""
    out: list[Placement | Unschedulable] = []
    n = len(nodes)
    by_name = {node.name: node for node in nodes}
    for req, run in itertools.groupby(reqs):
        count = sum(1 for _ in run)
        if count > 1 and count * feasible_limit(n) > n:
            out.extend(_place_run(req, nodes, count))
            continue
        for _ in range(count):
            result = place(req, nodes, start=len(out) % max(1, n))
            if isinstance(result, Placement):
                by_name[result.node].add(req)
            out.append(result)
    return out


def _place_run(req: Request, nodes: Sequence[NodeView], count: int) -> list[Placement | Unschedulable]:
    filters = filters_for(req)
    rank = RANKS.get(req.strategy, rank_spread)

    def entry(i: int) -> tuple[tuple[float, ...], int]:
        return tuple(-x for x in rank(req, nodes[i])), i  # smallest first: the best rank

    heap = [entry(i) for i, node in enumerate(nodes) if first_reject(req, node, filters) is None]
    heapq.heapify(heap)
    out: list[Placement | Unschedulable] = []
    while heap and len(out) < count:
        _, i = heapq.heappop(heap)
        node = nodes[i]
        node.add(req)
        out.append(Placement(node.name))
        if first_reject(req, node, filters) is None:
            heapq.heappush(heap, entry(i))
    if len(out) < count:  # no node takes another: each says why, as place() does
        out.extend([place(req, nodes)] * (count - len(out)))
    return out
