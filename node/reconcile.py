"""Pure diff of the desired set against the workers the agent has, whether a
desired set is older than the one applied, and its instances' specs put back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from orch.templates import template_key
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


def with_templates(desired: apb.DesiredSet) -> list[pb.Instance]:
    """Put each instance's template back on it (DesiredSet.templates, one per app/generation)
    before anything else sees the set; returns the instances whose template the set lacks
    (a set with any is refused whole). An instance that has a spec already came from a
    scheduler older than the templates map: it is taken as it is."""
    lacking = []
    for inst in desired.instances:
        if inst.HasField("spec"):
            continue
        key = template_key(inst.app, inst.app_generation)
        if key in desired.templates:
            inst.spec.CopyFrom(desired.templates[key])
        else:
            lacking.append(inst)
    desired.ClearField("templates")  # each instance holds its own now
    return lacking


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
