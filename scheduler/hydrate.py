"""An instance's spec comes from its app's generation, never from its own record.

etcd stores each generation's template once (`generations/<app>/<n>`, generations.py); an
instance record names it (app + app_generation) and carries no spec: the Store clears it on
every Put (`stored`). Whoever reads an instance gets its spec back from here, the one place
that knows where a template is found (`Templates.template`), and so the one place that says
when it is not: the spec stays unset and `missing` says why, never an empty spec in silence.

A hydrated spec is the template inside the app's current replicas, labels, service and
progress deadline (orch.templates.with_template): what `orch scale` or a label change wrote
last, not what the app said when the instance was created.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from orch.templates import template_of, with_template
from orch.v1 import types_pb2 as pb

log = logging.getLogger(__name__)

MISSING = "TemplateMissing"  # the reason of an instance stopped for it, and of an agent's refusal

Key = tuple[str, int]  # (app, generation)


def missing(inst: pb.Instance) -> str:
    return (
        f'instance "{inst.name}" runs generation {inst.app_generation} of app "{inst.app}",'
        f" whose template is not stored (generations/{inst.app}/{inst.app_generation})"
    )


def stored(inst: pb.Instance) -> pb.Instance:
    """What etcd holds of an instance: all of it but its spec."""
    if not inst.HasField("spec"):
        return inst
    out = pb.Instance()
    out.CopyFrom(inst)
    out.ClearField("spec")
    return out


class Templates:
    """The stored templates by (app, generation), as read from generations/ (a snapshot's
    pages, or the watch that keeps the cache's copy current)."""

    def __init__(self) -> None:
        self._by_key: dict[Key, pb.AppSpec] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def copy(self) -> Templates:
        """Another index of the same templates (they are never changed in place)."""
        out = Templates()
        out._by_key = dict(self._by_key)
        return out

    def put(self, app: str, generation: int, record: pb.AppGeneration) -> None:
        self._by_key[(app, generation)] = record.template

    def drop(self, app: str, generation: int) -> None:
        self._by_key.pop((app, generation), None)

    def shared(self, app: str, generation: int, record: pb.App | None) -> bool:
        """Every instance of this (app, generation) gets one template from template(): its stored
        record, or its app record at that generation. Otherwise each may carry its own spec."""
        return (app, generation) in self._by_key or (record is not None and record.generation == generation)

    def template(self, inst: pb.Instance, app: pb.App | None) -> pb.AppSpec | None:
        """The template inst runs, or None. Its generation's record; else the app's own spec when
        inst runs the app's current generation (the two are written in one transaction: this
        also covers an app stored before there was a history); else the spec on the record
        itself, written by a scheduler older than this one (a rolling upgrade)."""
        found = self._by_key.get((inst.app, inst.app_generation))
        if found is not None:
            return found
        if app is not None and app.generation == inst.app_generation:
            return template_of(app.spec)
        if inst.HasField("spec"):
            return template_of(inst.spec)
        return None

    def hydrate(self, inst: pb.Instance, app: pb.App | None, specs: dict[Key, pb.AppSpec] | None = None) -> pb.Instance:
        """A copy of inst with its spec; without one (and logged) when its template is missing.
        specs: the specs made so far for one read (hydrate_all), each made once."""
        out = pb.Instance()
        out.CopyFrom(inst)
        key = (inst.app, inst.app_generation)
        spec = specs.get(key) if specs is not None and not inst.HasField("spec") else None
        if spec is None:
            spec = self.spec_of(inst, app)
            if spec is not None and specs is not None and not inst.HasField("spec"):
                specs[key] = spec
        if spec is None:
            out.ClearField("spec")
            log.error("%s", missing(inst))
        else:
            out.spec.CopyFrom(spec)
        return out

    def hydrate_all(self, instances: Iterable[pb.Instance], apps: Mapping[str, pb.App]) -> list[pb.Instance]:
        """hydrate() of many, each (app, generation)'s spec made once."""
        specs: dict[Key, pb.AppSpec] = {}
        return [self.hydrate(inst, apps.get(inst.app), specs) for inst in instances]

    def spec_of(self, inst: pb.Instance, app: pb.App | None) -> pb.AppSpec | None:
        """The spec hydrate() gives inst (its template inside app's current spec), without a copy
        of inst: for a reader that needs the spec of many instances of one generation once."""
        template = self.template(inst, app)
        if template is None:
            return None
        if app is not None:
            return with_template(app.spec, template)
        return with_template(inst.spec, template)  # its app is gone (it is being stopped): the template alone
