"""Semantic checks and defaults for an `AppSpec`, shared by the scheduler's API
(the authority) and the CLI (early, friendlier errors with line numbers).

Field paths in `FieldError` use the manifest's spelling (``metadata.name``,
``spec.ports[0].hostPort``, ``spec.env.GREETING``), so the CLI can map them back
to YAML lines and the API can return them verbatim.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from orch.capabilities import LINUX_CAPABILITIES
from orch.imageref import BadReference, parse_reference
from orch.quantity import format_duration
from orch.secretrefs import secret_key_problem
from orch.v1 import types_pb2
from orch.volumes import volume_problems

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_PROGRESS_DEADLINE_MS",
    "LINUX_CAPABILITIES",
    "MAX_APP_NAME",
    "MAX_REPLICAS",
    "PROBES",
    "SECCOMP_MODES",
    "FieldError",
    "canonical_capability",
    "normalize_app_spec",
    "validate_app_spec",
]

MAX_APP_NAME = 57  # instance names are "<app>-<5 chars>" and must stay DNS labels (63)
MAX_REPLICAS = 10_000
MAX_DURATION_MS = 3_600_000  # stopGracePeriod and probe timings
MAX_FAILURE_THRESHOLD = 10_000
# The probes of an AppSpec (one shape, types_pb2.Readiness), by field name.
ProbeField = Literal["readiness", "liveness", "startup"]
PROBES: tuple[ProbeField, ...] = ("readiness", "liveness", "startup")
# failureThreshold when unset: Kubernetes' 3 for liveness and startup (normalized into the spec);
# readiness keeps orch's 1 (not ready at the first failure), applied by the node, not stored.
DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_PROGRESS_DEADLINE_MS = 120_000  # Nomad's default (Kubernetes' is 600 s)
MAX_PROGRESS_DEADLINE_MS = 86_400_000  # a big image on a slow link may take hours; days mean a typo


# spec.seccomp: "" = the node's profile; "default" is normalized to "".
SECCOMP_MODES = ("", "unconfined")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER_PART = r"(\d+|[A-Za-z_][A-Za-z0-9_.-]*\$?)"
_USER = re.compile(rf"{_USER_PART}(:{_USER_PART})?")

_IMAGE_HELP = (
    "expected [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], "
    "oci-archive:/path, docker-archive:/path, oci:/path[:tag] or rootfs:/dir"
)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field; `path` is in manifest spelling."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def validate_app_spec(spec: types_pb2.AppSpec) -> list[FieldError]:
    """Every problem with `spec`, in field order; an empty list means valid."""
    return [
        *_check_name(spec.name),
        *_check_labels("metadata.labels", spec.labels),
        *_check_range("spec.replicas", spec.replicas, 0, MAX_REPLICAS),
        *_check_image(spec.image),
        *_check_strings("spec.command", spec.command),
        *_check_strings("spec.args", spec.args),
        *_check_env(spec.env),
        *_check_secret_env(spec),
        *_check_resources(spec),
        *_check_ports(spec.ports),
        *_check_enums(spec),
        *_check_labels("spec.nodeSelector", spec.node_selector),
        *_check_app_names("spec.antiAffinity", spec.anti_affinity),
        *_check_update(spec),
        *_check_probes(spec),
        *_check_duration("spec.stopGracePeriod", spec.stop_grace_period_ms),
        *_check_progress_deadline(spec.progress_deadline_ms),
        *_check_process(spec),
        *_check_capabilities(spec.capabilities),
        *_check_seccomp(spec.seccomp),
        *_check_service(spec),
        *(FieldError(path, message) for path, message in volume_problems(spec)),
    ]


def normalize_app_spec(spec: types_pb2.AppSpec) -> types_pb2.AppSpec:
    """A copy of `spec` with defaults filled in and spellings made canonical.

    Unset means default, since proto3 cannot tell 0 from absent: restart ALWAYS,
    placement SPREAD, update maxSurge 1 / maxUnavailable 0, stopGracePeriod 10s, progressDeadline 120s,
    probes period 10s / timeout 1s, liveness and startup failureThreshold 3 (as Kubernetes),
    port protocol "tcp",
    service targetPort = its port and protocol "tcp" (as Kubernetes).
    Capabilities become "CAP_NET_ADMIN" (or "ALL"); seccomp "default" becomes "". Idempotent.
    """
    out = types_pb2.AppSpec()
    out.CopyFrom(spec)
    if out.restart_policy == types_pb2.RESTART_POLICY_UNSPECIFIED:
        out.restart_policy = types_pb2.RESTART_POLICY_ALWAYS
    if out.placement == types_pb2.PLACEMENT_STRATEGY_UNSPECIFIED:
        out.placement = types_pb2.PLACEMENT_STRATEGY_SPREAD
    if not out.HasField("update"):
        out.update.max_surge, out.update.max_unavailable = 1, 0
    out.stop_grace_period_ms = out.stop_grace_period_ms or 10_000
    out.progress_deadline_ms = out.progress_deadline_ms or DEFAULT_PROGRESS_DEADLINE_MS
    for name in PROBES:
        if out.HasField(name):
            probe = getattr(out, name)
            probe.period_ms = probe.period_ms or 10_000
            probe.timeout_ms = probe.timeout_ms or 1_000
            if name != "readiness":  # readiness's stays unset: specs stored before it existed roll nothing
                probe.failure_threshold = probe.failure_threshold or DEFAULT_FAILURE_THRESHOLD
    for port in out.ports:
        port.protocol = port.protocol.lower() or "tcp"
    if out.HasField("service"):
        out.service.target_port = out.service.target_port or out.service.port
        out.service.protocol = out.service.protocol.lower() or "tcp"
    for caps in (out.capabilities.add, out.capabilities.drop):
        caps[:] = [canonical_capability(c) or c for c in caps]
    out.seccomp = "" if out.seccomp.lower() == "default" else out.seccomp.lower()
    out.secret_env.sort(key=lambda v: v.name)  # the order means nothing: no rollout for it
    return out


def canonical_capability(name: str) -> str | None:
    """``"net_admin"``/``"CAP_NET_ADMIN"`` → ``"CAP_NET_ADMIN"``; ``"ALL"``; None if unknown."""
    upper = name.upper()
    if upper == "ALL":
        return upper
    bare = upper.removeprefix("CAP_")
    return f"CAP_{bare}" if bare in LINUX_CAPABILITIES else None


def _check_name(name: str) -> Iterator[FieldError]:
    if not name:
        yield FieldError("metadata.name", "must not be empty")
    elif not _DNS_LABEL.fullmatch(name):
        yield FieldError(
            "metadata.name",
            f'"{name}" is not a DNS label: use lowercase letters, digits and "-", '
            "starting and ending with a letter or digit",
        )
    elif len(name) > MAX_APP_NAME:
        yield FieldError(
            "metadata.name",
            f"must be at most {MAX_APP_NAME} characters (instance names add a 6-character suffix), got {len(name)}",
        )


def _check_labels(path: str, labels: Mapping[str, str]) -> Iterator[FieldError]:
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
            yield FieldError(f"{path}.{key}", f'key prefix "{prefix}" must be a lowercase DNS subdomain')
        elif len(name) > 63 or not _LABEL_NAME.fullmatch(name):
            yield FieldError(
                f"{path}.{key}",
                f'invalid key "{key}": at most 63 letters, digits, "-", "_" or ".", '
                "starting and ending with a letter or digit (optionally PREFIX/ before it)",
            )
        if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
            yield FieldError(
                f"{path}.{key}",
                f'invalid value "{value}": at most 63 letters, digits, "-", "_" or ".", '
                "starting and ending with a letter or digit",
            )


def _check_range(path: str, value: int, low: int, high: int) -> Iterator[FieldError]:
    if not low <= value <= high:
        yield FieldError(path, f"must be between {low} and {high}, got {value}")


def _check_duration(path: str, ms: int) -> Iterator[FieldError]:
    if not 0 <= ms <= MAX_DURATION_MS:
        yield FieldError(path, f"must be between 0s and {format_duration(MAX_DURATION_MS)}, got {format_duration(ms)}")


def _check_progress_deadline(ms: int) -> Iterator[FieldError]:
    """0 is the default (normalize_app_spec); the manifest refuses an explicit 0 (cli/manifest.py)."""
    if ms and not 1000 <= ms <= MAX_PROGRESS_DEADLINE_MS:
        limit = format_duration(MAX_PROGRESS_DEADLINE_MS)
        yield FieldError("spec.progressDeadline", f"must be between 1s and {limit}, got {format_duration(ms)}")


def _check_image(image: str) -> Iterator[FieldError]:
    if not image:
        yield FieldError("spec.image", "must not be empty")
        return
    try:
        parse_reference(image)  # the node's own grammar: what passes here, the node can pull
    except BadReference as e:
        yield FieldError("spec.image", f'"{image}" is not a valid image reference: {e.reason}; {_IMAGE_HELP}')


def _check_app_names(path: str, names: Iterable[str]) -> Iterator[FieldError]:
    for i, name in enumerate(names):
        if len(name) > MAX_APP_NAME or not _DNS_LABEL.fullmatch(name):
            yield FieldError(f"{path}[{i}]", f'"{name}" is not an app name (a DNS-1123 label)')


def _check_strings(path: str, values: Iterable[str]) -> Iterator[FieldError]:
    for i, value in enumerate(values):
        if not value:
            yield FieldError(f"{path}[{i}]", "must not be empty")
        yield from _check_nul(f"{path}[{i}]", value)


def _check_nul(path: str, value: str) -> Iterator[FieldError]:
    """execve() takes C strings: a NUL would cut the value short, or fail every start."""
    if (at := value.find("\0")) >= 0:
        yield FieldError(path, f"must not contain a NUL byte (at offset {at})")


def _printable(text: str) -> str:
    """One line of an error message: control characters escaped."""
    return text.encode("unicode_escape").decode("ascii")


def _check_env(env: Mapping[str, str]) -> Iterator[FieldError]:
    for name, value in env.items():
        shown = _printable(name)
        path = f"spec.env.{shown}"
        if not _ENV_NAME.fullmatch(name):  # also refuses "", "=" and NUL: "NAME=value" must split back
            yield FieldError(
                path, f'"{shown}" is not a valid variable name: letters, digits and "_", not starting with a digit'
            )
        yield from _check_nul(path, value)


def _check_secret_env(spec: types_pb2.AppSpec) -> Iterator[FieldError]:
    """Variables from secrets: path spec.env.NAME in either manifest form (cli/manifest.py)."""
    seen: set[str] = set()
    for var in spec.secret_env:
        shown = _printable(var.name)
        path = f"spec.env.{shown}"
        if not _ENV_NAME.fullmatch(var.name):
            yield FieldError(
                path, f'"{shown}" is not a valid variable name: letters, digits and "_", not starting with a digit'
            )
        elif var.name in spec.env or var.name in seen:
            yield FieldError(path, "set twice")
        seen.add(var.name)
        if len(var.secret) > 253 or not _DNS_SUBDOMAIN.fullmatch(var.secret):
            yield FieldError(f"{path}.valueFrom.secretKeyRef.name", f'"{_printable(var.secret)}" is not a secret name')
        if (problem := secret_key_problem(var.key)) is not None:
            yield FieldError(f"{path}.valueFrom.secretKeyRef.key", f'"{_printable(var.key)}" {problem}')


def _check_resources(spec: types_pb2.AppSpec) -> Iterator[FieldError]:
    res = spec.resources
    for field, value in (("cpu", res.cpu_millis), ("memory", res.memory_bytes), ("pids", res.pids)):
        if value < 0:
            yield FieldError(f"spec.resources.{field}", f"must not be negative, got {value}")


def _check_ports(ports: Iterable[types_pb2.Port]) -> Iterator[FieldError]:
    names: dict[str, int] = {}
    published: dict[tuple[int, str], int] = {}
    for i, port in enumerate(ports):
        path = f"spec.ports[{i}]"
        protocol = port.protocol.lower() or "tcp"
        yield from _check_range(f"{path}.containerPort", port.container_port, 1, 65535)
        yield from _check_range(f"{path}.hostPort", port.host_port, 0, 65535)
        if protocol not in ("tcp", "udp"):
            yield FieldError(f"{path}.protocol", f'must be tcp or udp, got "{port.protocol}"')
        if port.name and (len(port.name) > 15 or not _DNS_LABEL.fullmatch(port.name)):
            yield FieldError(f"{path}.name", f'"{port.name}" must be a DNS label of at most 15 characters')
        elif port.name in names:
            yield FieldError(f"{path}.name", f'"{port.name}" is already used by spec.ports[{names[port.name]}]')
        if port.name:
            names.setdefault(port.name, i)
        key = (port.host_port, protocol)
        if port.host_port and key in published:
            yield FieldError(
                f"{path}.hostPort",
                f"{port.host_port}/{protocol} is already published by spec.ports[{published[key]}]",
            )
        published.setdefault(key, i)


def _check_enums(spec: types_pb2.AppSpec) -> Iterator[FieldError]:
    if spec.restart_policy not in types_pb2.RestartPolicy.values():
        yield FieldError("spec.restartPolicy", f"unknown restart policy {spec.restart_policy}")
    if spec.placement not in types_pb2.PlacementStrategy.values():
        yield FieldError("spec.placement", f"unknown placement strategy {spec.placement}")
    if spec.on_node_lost not in types_pb2.NodeLostAction.values():
        yield FieldError("spec.onNodeLost", f"unknown action {spec.on_node_lost}: use Keep or Stop")


def _check_update(spec: types_pb2.AppSpec) -> Iterator[FieldError]:
    if not spec.HasField("update"):
        return  # the defaults (1, 0) apply
    update = spec.update
    for field, value in (("maxSurge", update.max_surge), ("maxUnavailable", update.max_unavailable)):
        if value < 0:
            yield FieldError(f"spec.update.{field}", f"must not be negative, got {value}")
    if spec.replicas > 0 and update.max_surge == 0 and update.max_unavailable == 0:
        yield FieldError("spec.update", "maxSurge and maxUnavailable cannot both be 0: a rollout could never progress")


def _check_probes(spec: types_pb2.AppSpec) -> Iterator[FieldError]:
    for name in PROBES:
        if spec.HasField(name):
            yield from _check_probe(f"spec.{name}", getattr(spec, name))


def _check_probe(path: str, probe: types_pb2.Readiness) -> Iterator[FieldError]:
    kind = probe.WhichOneof("probe")
    if kind is None:
        yield FieldError(path, "needs one of tcp, exec or http")
    elif kind == "tcp":
        yield from _check_range(f"{path}.tcp", probe.tcp, 1, 65535)
    elif kind == "http":
        yield from _check_range(f"{path}.http.port", probe.http.port, 1, 65535)
        if probe.http.path and not probe.http.path.startswith("/"):
            yield FieldError(f"{path}.http.path", f'must start with "/", got "{probe.http.path}"')
    elif not probe.exec.command:
        yield FieldError(f"{path}.exec", "needs a command")
    else:
        yield from _check_strings(f"{path}.exec", probe.exec.command)
    yield from _check_duration(f"{path}.periodSeconds", probe.period_ms)
    yield from _check_duration(f"{path}.timeoutSeconds", probe.timeout_ms)
    yield from _check_duration(f"{path}.initialDelaySeconds", probe.initial_delay_ms)
    yield from _check_range(f"{path}.failureThreshold", probe.failure_threshold, 0, MAX_FAILURE_THRESHOLD)


def _check_process(spec: types_pb2.AppSpec) -> Iterator[FieldError]:
    match = _USER.fullmatch(spec.user)
    if spec.user and match is None:  # the grammar has no room for a NUL either
        yield FieldError(
            "spec.user", f'"{_printable(spec.user)}" is not UID[:GID]; use numbers or names, e.g. "1000:1000"'
        )
    elif match is not None and any(p.isdigit() and int(p) >= 2**32 - 1 for p in spec.user.split(":")):
        yield FieldError("spec.user", f'"{spec.user}": IDs must be below 4294967295')
    if spec.working_dir and not spec.working_dir.startswith("/"):
        yield FieldError("spec.workingDir", f'must be an absolute path, got "{_printable(spec.working_dir)}"')
    yield from _check_nul("spec.workingDir", spec.working_dir)


def _check_capabilities(caps: types_pb2.Capabilities) -> Iterator[FieldError]:
    for field, names in (("add", caps.add), ("drop", caps.drop)):
        for i, name in enumerate(names):
            if canonical_capability(name) is not None:
                continue
            guess = difflib.get_close_matches(name.upper().removeprefix("CAP_"), LINUX_CAPABILITIES, n=1)
            hint = f"; did you mean {guess[0]}?" if guess else " (see capabilities(7))"
            yield FieldError(f"spec.capabilities.{field}[{i}]", f'unknown capability "{name}"{hint}')


def _check_seccomp(mode: str) -> Iterator[FieldError]:
    if mode not in SECCOMP_MODES and mode.lower() != "default":
        yield FieldError(
            "spec.seccomp", f'"{mode}" is not a seccomp mode: use "unconfined" (or "default", the node\'s profile)'
        )


def _check_service(spec: types_pb2.AppSpec) -> Iterator[FieldError]:
    if not spec.HasField("service"):
        return
    service = spec.service
    if service.port == 0:
        yield FieldError("spec.service.port", "required field is missing (the port the app's virtual IP listens on)")
    else:
        yield from _check_range("spec.service.port", service.port, 1, 65535)
    yield from _check_range("spec.service.targetPort", service.target_port, 0, 65535)  # 0: the port
    if (service.protocol.lower() or "tcp") not in ("tcp", "udp"):
        yield FieldError("spec.service.protocol", f'must be tcp or udp, got "{service.protocol}"')
