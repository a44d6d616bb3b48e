"""An AppSpec back into the manifest it came from: the inverse of manifest.py, for
`orch diff`, `orch apply --dry-run` and `orch get app NAME -o yaml` (which can be
applied again). Fields at their zero value are left out, as a user leaves them out."""

from __future__ import annotations

from typing import Any

import yaml

from cli.manifest import API_VERSION, KIND, NODE_LOST_ACTIONS, PLACEMENTS, RESTART_POLICIES
from orch.quantity import format_cpu, format_duration, format_memory
from orch.v1 import types_pb2 as pb
from orch.validation import PROBES

_RESTART_NAMES = {v: k for k, v in RESTART_POLICIES.items()}
_PLACEMENT_NAMES = {v: k for k, v in PLACEMENTS.items()}
_NODE_LOST_NAMES = {v: k for k, v in NODE_LOST_ACTIONS.items() if v}  # Keep, the default, is left out


def manifest(spec: pb.AppSpec) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": spec.name}
    if spec.labels:
        metadata["labels"] = dict(sorted(spec.labels.items()))
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": _spec(spec)}


def manifest_yaml(spec: pb.AppSpec) -> str:
    return yaml.safe_dump(manifest(spec), sort_keys=False, default_flow_style=False, width=1000)


def _env(s: pb.AppSpec) -> dict[str, str] | list[dict[str, Any]]:
    """A mapping, or Kubernetes' list when some variables come from secrets."""
    if not s.secret_env:
        return dict(sorted(s.env.items()))
    items: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(s.env.items())]
    refs = [{"name": v.name, "valueFrom": {"secretKeyRef": {"name": v.secret, "key": v.key}}} for v in s.secret_env]
    return sorted(items + refs, key=lambda item: item["name"])


def _spec(s: pb.AppSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"replicas": s.replicas, "image": s.image}
    _put(out, "command", list(s.command))
    _put(out, "args", list(s.args))
    _put(out, "env", _env(s))
    r = s.resources
    resources = {
        "cpu": format_cpu(r.cpu_millis) if r.cpu_millis else None,
        "memory": format_memory(r.memory_bytes) if r.memory_bytes else None,
        "pids": r.pids or None,
    }
    _put(out, "resources", {k: v for k, v in resources.items() if v is not None})
    _put(out, "ports", [_port(p) for p in s.ports])
    _put(out, "restartPolicy", _RESTART_NAMES.get(s.restart_policy))
    _put(out, "nodeSelector", dict(sorted(s.node_selector.items())))
    _put(out, "antiAffinity", list(s.anti_affinity))
    _put(out, "placement", _PLACEMENT_NAMES.get(s.placement))
    if s.HasField("update"):
        out["update"] = {"maxSurge": s.update.max_surge, "maxUnavailable": s.update.max_unavailable}
    _put(out, "progressDeadline", format_duration(s.progress_deadline_ms) if s.progress_deadline_ms else None)
    for name in PROBES:
        if s.HasField(name):
            out[name] = _probe(getattr(s, name))
    _put(out, "stopGracePeriod", format_duration(s.stop_grace_period_ms) if s.stop_grace_period_ms else None)
    _put(out, "user", s.user)
    _put(out, "workingDir", s.working_dir)
    _put(out, "readOnlyRootFilesystem", s.read_only_root_fs or None)
    _put(out, "hostUsers", False if s.user_namespace else None)
    caps = {"add": list(s.capabilities.add), "drop": list(s.capabilities.drop)}
    _put(out, "capabilities", {k: v for k, v in caps.items() if v})
    _put(out, "seccomp", s.seccomp)
    if s.HasField("service"):
        out["service"] = {"port": s.service.port, "targetPort": s.service.target_port, "protocol": s.service.protocol}
    _put(out, "onNodeLost", _NODE_LOST_NAMES.get(s.on_node_lost))
    _put(out, "init", s.init or None)
    _put(out, "volumes", [_volume(v) for v in s.volumes])
    _put(out, "volumeMounts", [_volume_mount(m) for m in s.volume_mounts])
    return out


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value not in (None, "", [], {}):
        out[key] = value


def _port(p: pb.Port) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _put(out, "name", p.name)
    out["containerPort"] = p.container_port
    _put(out, "hostPort", p.host_port or None)
    _put(out, "protocol", p.protocol)
    return out


def _probe(r: pb.Readiness) -> dict[str, Any]:
    out: dict[str, Any] = {}
    which = r.WhichOneof("probe")
    if which == "tcp":
        out["tcp"] = r.tcp
    elif which == "exec":
        out["exec"] = list(r.exec.command)
    elif which == "http":
        out["http"] = {"port": r.http.port, **({"path": r.http.path} if r.http.path else {})}
    _put(out, "periodSeconds", format_duration(r.period_ms) if r.period_ms else None)
    _put(out, "timeoutSeconds", format_duration(r.timeout_ms) if r.timeout_ms else None)
    _put(out, "failureThreshold", r.failure_threshold or None)
    _put(out, "initialDelaySeconds", format_duration(r.initial_delay_ms) if r.initial_delay_ms else None)
    return out


def _volume(v: pb.Volume) -> dict[str, Any]:
    out: dict[str, Any] = {"name": v.name}
    if v.HasField("empty_dir"):
        empty: dict[str, Any] = {}
        _put(empty, "medium", v.empty_dir.medium)
        _put(empty, "sizeLimit", format_memory(v.empty_dir.size_limit_bytes) if v.empty_dir.size_limit_bytes else None)
        out["emptyDir"] = empty
    elif v.HasField("host_path"):
        out["hostPath"] = {"path": v.host_path.path, **({"type": v.host_path.type} if v.host_path.type else {})}
    elif v.HasField("secret"):
        out["secret"] = _secret_volume(v.secret)
    return out


def _secret_volume(s: pb.SecretVolume) -> dict[str, Any]:
    """Names only: a secret's values are never in a spec."""
    out: dict[str, Any] = {"secretName": s.secret_name}
    items = []
    for item in s.items:
        items.append({"key": item.key, "path": item.path, **({"mode": item.mode} if item.HasField("mode") else {})})
    _put(out, "items", items)
    if s.HasField("default_mode"):
        out["defaultMode"] = s.default_mode
    return out


def _volume_mount(m: pb.VolumeMount) -> dict[str, Any]:
    out: dict[str, Any] = {"name": m.name, "mountPath": m.mount_path}
    _put(out, "readOnly", m.read_only or None)
    return out
