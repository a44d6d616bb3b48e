"""Scores: higher is better, 0-100. A strategy is a ranking: the first
score decides, the next ones break ties, then the node's name does.

Each strategy is also written as one `rank_*` function returning the whole
key, because scoring is the pipeline's hot loop (100 nodes per placement);
the `score_*` functions are the readable definitions and the tests pin the
two together."""

from __future__ import annotations

from collections.abc import Callable

from orch.v1 import types_pb2 as pb
from scheduler.placement.nodes import NodeView
from scheduler.placement.request import Request

Score = Callable[[Request, NodeView], float]


def score_spread(req: Request, node: NodeView) -> float:
    """Fewest instances of the same app wins."""
    return 100.0 / (1 + node.apps[req.app])


def score_least_allocated(req: Request, node: NodeView) -> float:
    return 100.0 * (1 - node.allocated) - min(node.total, 1000) / 1000


def score_binpack(req: Request, node: NodeView) -> float:
    """Most allocated wins, so whole nodes stay free for big instances."""
    return 100.0 * node.allocated + min(node.total, 1000) / 1000


def score_reschedule_penalty(req: Request, node: NodeView) -> float:
    """0 on nodes where this slot kept crashing: any other feasible node wins."""
    return 0.0 if node.name in req.avoid else 100.0


Rank = Callable[[Request, NodeView], tuple[float, ...]]


def rank_spread(req: Request, node: NodeView) -> tuple[float, ...]:
    """(reschedule penalty, spread, least allocated, name) in one call."""
    return (
        0.0 if node.name in req.avoid else 100.0,
        100.0 / (1 + node.apps[req.app]),
        100.0 * (1 - node.allocated) - min(node.total, 1000) / 1000,
        -node.order,
    )


def rank_binpack(req: Request, node: NodeView) -> tuple[float, ...]:
    return (
        0.0 if node.name in req.avoid else 100.0,
        100.0 * node.allocated + min(node.total, 1000) / 1000,
        -node.order,
    )


# The readable form of each ranking (the tests check rank_* against these).
STRATEGIES: dict[int, tuple[Score, ...]] = {
    pb.PLACEMENT_STRATEGY_SPREAD: (score_reschedule_penalty, score_spread, score_least_allocated),
    pb.PLACEMENT_STRATEGY_BINPACK: (score_reschedule_penalty, score_binpack),
}
RANKS: dict[int, Rank] = {
    pb.PLACEMENT_STRATEGY_UNSPECIFIED: rank_spread,
    pb.PLACEMENT_STRATEGY_SPREAD: rank_spread,
    pb.PLACEMENT_STRATEGY_BINPACK: rank_binpack,
}
