"""Scores: higher is better, 0-100. The pipeline ranks by the strategy's
scores in order (the first decides, the next break ties), then by name."""

from __future__ import annotations

from collections.abc import Callable

from orch.v1 import types_pb2 as pb
from scheduler.placement.nodes import NodeView

Score = Callable[[pb.AppSpec, NodeView], float]


def score_spread(spec: pb.AppSpec, node: NodeView) -> float:
    """Fewest instances of the same app wins."""
    return 100.0 / (1 + node.apps[spec.name])


def score_least_allocated(spec: pb.AppSpec, node: NodeView) -> float:
    return 100.0 * (1 - node.allocated_fraction()) - min(node.total, 1000) / 1000


def score_binpack(spec: pb.AppSpec, node: NodeView) -> float:
    """Most allocated wins, so whole nodes stay free for big instances."""
    return 100.0 * node.allocated_fraction() + min(node.total, 1000) / 1000


STRATEGIES: dict[int, tuple[Score, ...]] = {
    pb.PLACEMENT_STRATEGY_UNSPECIFIED: (score_spread, score_least_allocated),
    pb.PLACEMENT_STRATEGY_SPREAD: (score_spread, score_least_allocated),
    pb.PLACEMENT_STRATEGY_BINPACK: (score_binpack,),
}


def score_reschedule_penalty(node: NodeView, avoid: frozenset[str]) -> float:
    """0 on nodes where this slot kept crashing: any other feasible node wins."""
    return 0.0 if node.name in avoid else 100.0
