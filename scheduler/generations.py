"""Each generation's template, stored once: `<prefix>generations/<app>/<n>` (AppGeneration).

Written in the same transaction as the app whenever an apply bumps its generation
(api.py); that transaction also deletes what falls out of the history: all but the
newest HISTORY, except a generation an instance of the app still runs (its record
exists). `orch rollout history` lists them; `orch rollout undo` applies one's template
again, as a new generation, as kubectl does.

This is where an instance's spec lives: its record names (app, app_generation) and
carries no spec (hydrate.py puts it back when read). So no path deletes a generation an
instance runs: not apply or undo (prune), not an app's delete (it leaves the generations
its stopping instances run; the reconciler deletes them after the last one, and prunes
what an apply had to keep: reconcile.unused_generations), and an app created again
under the name of one whose instances still stop numbers its generations on from the
old ones' (`first`), so an old instance never takes a new template for its own.
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


def first(store: Store, name: str) -> int:
    """A new app's first generation: 1, or past any generation still stored under its name."""
    found = store.list_prefix(pb.AppGeneration, store.keys.generations(name))
    return max((v.value.generation for v in found), default=0) + 1


def _live(store: Store, name: str) -> set[int]:
    """The generations the app's instances run (their records' app_generation)."""
    found = store.list_prefix(pb.Instance, store.keys.instances(name), hydrate=False)
    return {v.value.app_generation for v in found}


def generation_writes(store: Store, before: pb.App | None, app: pb.App, cause: str, now: float) -> list[Write]:
    """What goes into the transaction that stores `app` at a new generation: its template, the
    previous generation's if it was never recorded, and the deletes of what falls out."""
    keys, name = store.keys, app.spec.name
    found = {v.value.generation: v for v in store.list_prefix(pb.AppGeneration, keys.generations(name))}
    stale = found.get(app.generation)  # left over (a failed delete): replaced
    writes: list[Write] = [
        Put(keys.generation(name, app.generation), record(app, cause, now), stale.mod_revision if stale else 0)
    ]
    if before is None:  # a new app: anything under its name belonged to an earlier one (kept while it runs)
        live = _live(store, name)
        gone = [Delete(keys.generation(name, g), v.mod_revision) for g, v in found.items() if g != app.generation]
        return writes + [d for d in gone if int(d.key.rsplit("/", 1)[1]) not in live]
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
    doomed = [g for g in prune(gens, app.generation, _live(store, name)) if g in found]
    return writes + [Delete(keys.generation(name, g), found[g].mod_revision) for g in doomed]


def deletes(store: Store, name: str) -> list[Write]:
    """The app's history, to go with the app's own delete, but for the generations its
    instances still run: the reconciler deletes those after them."""
    found = store.list_prefix(pb.AppGeneration, store.keys.generations(name))
    live = _live(store, name)
    return [
        Delete(store.keys.generation(name, v.value.generation), v.mod_revision)
        for v in found
        if v.value.generation not in live
    ]


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
