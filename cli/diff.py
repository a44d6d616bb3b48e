"""What an apply would change, from the scheduler's dry run: a unified diff of the stored
spec against the file's (both as manifests), and whether the instances roll."""

from __future__ import annotations

import difflib

from cli.render import manifest_yaml
from orch.v1 import api_pb2 as api


def unified(result: api.ApplyResult, source: str) -> str:
    """The diff, "" when nothing changes. A new app is all additions."""
    if result.action == api.APPLY_ACTION_UNCHANGED:
        return ""
    before = manifest_yaml(result.previous).splitlines(keepends=True) if result.previous_generation else []
    after = manifest_yaml(result.spec).splitlines(keepends=True)
    stored = f"app/{result.name} (stored, generation {result.previous_generation})"
    lines = difflib.unified_diff(before, after, stored if before else "/dev/null", f"app/{result.name} ({source})")
    return "".join(lines)


def summary(result: api.ApplyResult) -> str:
    """One line: what happens to the app's instances."""
    name, new = f"app/{result.name}", result.spec
    if result.action == api.APPLY_ACTION_CREATED:
        return f"{name}: created, generation 1, {new.replicas} replicas"
    if result.action == api.APPLY_ACTION_UNCHANGED:
        return f"{name}: unchanged"
    old = result.previous
    scales = f"scales {old.replicas} → {new.replicas}" if old.replicas != new.replicas else ""
    if result.generation != result.previous_generation:
        rolls = f"rolls its instances (generation {result.previous_generation} → {result.generation})"
        return f"{name}: {rolls}" + (f" and {scales}" if scales else "")
    stays = f"instances stay (generation {result.generation})"
    return f"{name}: {scales}, {stays}" if scales else f"{name}: changes settings only, {stays}"
