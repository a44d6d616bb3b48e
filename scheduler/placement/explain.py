"""Why an instance is where it is (or nowhere): every node's verdict from the same filters and
scores `place` uses, for `orch explain`. Pure over node views, like the pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orch.v1 import types_pb2 as pb
from scheduler.placement.filters import first_reject
from scheduler.placement.nodes import NodeView
from scheduler.placement.pipeline import Unschedulable
from scheduler.placement.request import Request
from scheduler.placement.scores import RANKS, STRATEGIES, rank_spread


@dataclass(frozen=True, slots=True)
class Verdict:
    node: str
    rejected: str  # the first filter's reason; "" when the node is feasible
    scores: tuple[tuple[str, float], ...] = ()  # feasible only, most important first


def verdicts(req: Request, nodes: Sequence[NodeView]) -> list[Verdict]:
    """Feasible nodes best first (as `place` ranks them), then the rejected by name. Every node
    is judged, where `place` scores a sample above 100 nodes."""
    strategy = STRATEGIES.get(req.strategy, STRATEGIES[pb.PLACEMENT_STRATEGY_SPREAD])
    rank = RANKS.get(req.strategy, rank_spread)
    feasible: list[tuple[tuple[float, ...], Verdict]] = []
    rejected: list[Verdict] = []
    for node in nodes:
        reject = first_reject(req, node)
        if reject is not None:
            rejected.append(Verdict(node.name, reject.reason))
            continue
        scores = tuple((_name(score.__name__), round(score(req, node), 2)) for score in strategy)
        feasible.append((rank(req, node), Verdict(node.name, "", scores)))
    feasible.sort(key=lambda pair: pair[0], reverse=True)
    return [v for _, v in feasible] + sorted(rejected, key=lambda v: v.node)


def _name(function: str) -> str:
    return function.removeprefix("score_").replace("_", " ")


def summary(inst: pb.Instance, judged: Sequence[Verdict]) -> str:
    """One line: why it is on its node, why it is Pending, or why it is leaving."""
    feasible = [v for v in judged if not v.rejected]
    if inst.desired == pb.DESIRED_STATE_STOP:
        why = f"{inst.status.reason}: {inst.status.message}" if inst.status.reason else "it is being stopped"
        return f"leaving {inst.node or 'no node'}: {why}"
    if not inst.node:
        if not feasible:
            return "Pending: " + Unschedulable({v.node: v.rejected for v in judged}).message
        return f"Pending, but {len(feasible)} node(s) fit now (best: {feasible[0].node}): the next pass places it"
    here = next((v for v in judged if v.node == inst.node), None)
    if here is None:
        return f"on {inst.node}, a node the cluster no longer lists"
    if here.rejected:
        return f"on {inst.node}, which would not take it now ({here.rejected}); running instances are not moved"
    if feasible[0].node == inst.node:
        return f"on {inst.node}: the best-ranked of {len(feasible)} feasible node(s)"
    return (
        f"on {inst.node}, one of {len(feasible)} feasible node(s); {feasible[0].node} ranks higher now "
        "(placements are not revisited while an instance runs)"
    )
