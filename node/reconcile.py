"""Pure diff of the desired set against the workers the agent has, and
whether a desired set is older than the one applied."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb


@dataclass(frozen=True, slots=True)
class Diff:
    added: tuple[pb.Instance, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]


def diff(desired: Iterable[pb.Instance], actual: Mapping[str, object]) -> Diff:
    want = {i.name: i for i in desired}
    return Diff(
        added=tuple(want[n] for n in sorted(want) if n not in actual),
        removed=tuple(sorted(n for n in actual if n not in want)),
        unchanged=tuple(sorted(n for n in want if n in actual)),
    )


@dataclass(frozen=True, slots=True)
class Applied:
    cluster_id: int  # etcd's
    generation: int  # the etcd revision the set was computed from


def is_stale(desired: apb.DesiredSet, applied: Applied | None) -> bool:
    """Older than what was applied from the same etcd cluster: a scheduler whose
    cache lags after a failover. Revisions of another cluster say nothing."""
    if applied is None or desired.cluster_id != applied.cluster_id:
        return False
    return desired.generation < applied.generation
