"""An app's template: the part of its spec that its instances run.

Changing the template bumps the app's generation and rolls its instances;
changing the rest (replicas, labels, the service's virtual IP, the progress
deadline) does not, as a Deployment's pod template against its other fields.
The scheduler stores each generation's template once (`orch rollout history`)
and `orch rollout undo` puts an old one back under the current rest.
"""

from __future__ import annotations

from typing import Final

from orch.v1 import types_pb2 as pb

__all__ = ["NOT_TEMPLATE", "changed_fields", "template_key", "template_of", "with_template"]

# AppSpec fields outside the template. service: the VIP's rules live on the nodes, not in the instances.
NOT_TEMPLATE: Final = ("replicas", "labels", "service", "progress_deadline_ms")

# The manifest's spelling where it is not the field's camelCase (cli/manifest.py).
_MANIFEST_NAMES = {
    "stop_grace_period_ms": "stopGracePeriod",
    "read_only_root_fs": "readOnlyRootFilesystem",
    "user_namespace": "hostUsers",
    "secret_env": "env",  # env entries with valueFrom.secretKeyRef
}


def template_key(app: str, generation: int) -> str:
    """A template's key in a desired set (DesiredSet.templates): its app and generation."""
    return f"{app}/{generation}"


def template_of(spec: pb.AppSpec) -> pb.AppSpec:
    """A copy of spec without the fields outside the template."""
    out = pb.AppSpec()
    out.CopyFrom(spec)
    for name in NOT_TEMPLATE:
        out.ClearField(name)
    return out


def with_template(current: pb.AppSpec, template: pb.AppSpec) -> pb.AppSpec:
    """current's replicas, labels, service and progress deadline around template's everything else."""
    out = template_of(template)
    out.replicas = current.replicas
    out.labels.update(current.labels)
    if current.HasField("service"):
        out.service.CopyFrom(current.service)
    out.progress_deadline_ms = current.progress_deadline_ms
    return out


def changed_fields(before: pb.AppSpec, after: pb.AppSpec) -> list[str]:
    """The template fields that differ, in the manifest's spelling and the spec's order."""
    a, b = template_of(before), template_of(after)
    out: dict[str, None] = {}  # ordered, and env once for both its kinds of entry
    for field in pb.AppSpec.DESCRIPTOR.fields:
        if getattr(a, field.name) != getattr(b, field.name):
            out[_MANIFEST_NAMES.get(field.name, field.json_name)] = None
    return list(out)
