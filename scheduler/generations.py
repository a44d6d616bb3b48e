"""Each generation's template, stored once: `<prefix>generations/<app>/<n>` (AppGeneration).

Written in the same transaction as the app whenever an apply bumps its generation
(api.py); that transaction also deletes what falls out of the history: all but the
newest HISTORY, except a generation an instance of the app still runs (its record
exists). Deleted with the app. `orch rollout history` lists them; `orch rollout undo`
applies one's template again, as a new generation, as kubectl does.

Instances still carry a full copy of their spec (Instance.spec): referring to the
template by (app, generation) instead is the rest of issue 12 item 1.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from orch.templates import changed_fields, template_of
from orch.v1 import types_pb2 as pb
from scheduler.errors import NotFound, Refused
from scheduler.store import Delete, Put, Store, Write
from scheduler.timeutil import ts

HISTORY = 10  # generations kept, the current one included (kubectl's revisionHistoryLimit)
CREATED = "created"
RECORDED_LATE = "recorded late (stored before rollout history)"


def prune(kept: Iterable[int], new: int, live: Collection[int], keep: int = HISTORY) -> list[int]:
    """The generations to delete once `new` is stored: all but the newest `keep` (new among
    them), and never one that an instance still runs."""
    newest = set(sorted({*kept, new}, reverse=True)[:keep])
    return sorted(g for g in set(kept) if g not in newest and g not in live and g != new)


def change_cause(before: pb.App | None, app: pb.App, cause: str = "") -> str:
    """What the new generation changed, as kubectl's CHANGE-CAUSE column: "env, command"."""
    if before is None:
        return cause or CREATED
    what = ", ".join(changed_fields(before.spec, app.spec)) or "nothing in the template"
    return f"{cause}: {what}" if cause else what


def record(app: pb.App, cause: str, now: float) -> pb.AppGeneration:
    return pb.AppGeneration(
        template=template_of(app.spec), generation=app.generation, created_at=ts(now), change_cause=cause
    )


def generation_writes(store: Store, before: pb.App | None, app: pb.App, cause: str, now: float) -> list[Write]:
    """What goes into the transaction that stores `app` at a new generation: its template, the
    previous generation's if it was never recorded, and the deletes of what falls out."""
    keys, name = store.keys, app.spec.name
    found = {v.value.generation: v for v in store.list_prefix(pb.AppGeneration, keys.generations(name))}
    stale = found.get(app.generation)  # left over (a failed delete): replaced
    writes: list[Write] = [
        Put(keys.generation(name, app.generation), record(app, cause, now), stale.mod_revision if stale else 0)
    ]
    if before is None:  # a new app: anything under its name belonged to an earlier one
        earlier = [Delete(keys.generation(name, g), v.mod_revision) for g, v in found.items() if g != app.generation]
        return writes + earlier
    gens = set(found)
    if before.generation not in gens:  # an app stored before there was a history: the newest but one, so kept
        gens.add(before.generation)
        late = pb.AppGeneration(
            template=template_of(before.spec),
            generation=before.generation,
            created_at=before.updated_at,
            change_cause=RECORDED_LATE,
        )
        writes.append(Put(keys.generation(name, before.generation), late, 0))
    live = {v.value.app_generation for v in store.list_prefix(pb.Instance, keys.instances(name))}
    doomed = [g for g in prune(gens, app.generation, live) if g in found]
    return writes + [Delete(keys.generation(name, g), found[g].mod_revision) for g in doomed]


def deletes(store: Store, name: str) -> list[Write]:
    """The app's whole history, to go with the app's own delete."""
    found = store.list_prefix(pb.AppGeneration, store.keys.generations(name))
    return [Delete(store.keys.generation(name, v.value.generation), v.mod_revision) for v in found]


def history(store: Store, name: str) -> tuple[pb.App, list[pb.AppGeneration]]:
    """The app and its kept generations, oldest first."""
    app = store.get(pb.App, store.keys.app(name))  # an app that exists: its name is a valid one
    if app is None:
        raise NotFound("app", name)
    found = [v.value for v in store.list_prefix(pb.AppGeneration, store.keys.generations(name))]
    return app.value, sorted(found, key=lambda g: g.generation)


def undo_target(app: pb.App, kept: Mapping[int, pb.AppGeneration], to: int) -> pb.AppGeneration:
    """The generation `orch rollout undo --to-generation to` puts back (0: the newest before the
    current one), or Refused saying why none can be."""
    name, current = app.spec.name, app.generation
    if to == 0:
        earlier = [g for g in kept if g < current]
        if not earlier:
            raise Refused("NoHistory", f'app "{name}" has no earlier generation kept to go back to')
        to = max(earlier)
    if to == current:
        raise Refused("SameGeneration", f'generation {to} is app "{name}"\'s current one: nothing to undo')
    if not 0 < to < current:
        raise Refused("NoSuchGeneration", f'app "{name}" has no generation {to} (its current one is {current})')
    if to not in kept:
        listed = ", ".join(str(g) for g in sorted(kept)) or "none"
        raise Refused("GenerationGone", f'generation {to} of app "{name}" is no longer kept (kept: {listed})')
    target = kept[to]
    if template_of(target.template) == template_of(app.spec):
        raise Refused(
            "SameTemplate", f'app "{name}" already runs generation {to}\'s template (as generation {current})'
        )
    return target
