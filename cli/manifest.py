"""Load `orch apply` manifests: multi-document YAML files → normalized AppSpecs.

Every problem in every document of every file is collected and raised at once
as one `ManifestError`, one line each: ``FILE:LINE PATH: MESSAGE``, so nothing
is half-applied and no traceback reaches the user.

Structure and types are checked here while walking PyYAML *nodes* (composed,
not constructed, so every key and value keeps its line). Meaning (names,
ranges, image references) is checked by `orch.validation`, the same code the
scheduler runs; its field paths are mapped back to the lines seen in the walk.

Deliberately more lenient than Kubernetes, which rejects these:
- string fields, list entries and the values of env, labels and nodeSelector
  accept any YAML scalar and keep its source text, so ``PORT: 8080`` gives
  "8080", ``DEBUG: true`` gives "true" and ``user: 1000:1000`` (a YAML 1.1
  base-60 integer!) stays "1000:1000";
- restartPolicy, placement, onNodeLost and protocol are case-insensitive;
- a null value (``replicas:``) counts as absent.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from google.protobuf.message import Message

from orch.quantity import QuantityError, parse_cpu, parse_duration, parse_memory
from orch.v1 import types_pb2
from orch.validation import normalize_app_spec, validate_app_spec

__all__ = ["API_VERSION", "KIND", "LoadedApp", "ManifestError", "load_manifests"]

API_VERSION = "orch/v1"
KIND = "App"

_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
RESTART_POLICIES = {
    "Always": types_pb2.RESTART_POLICY_ALWAYS,
    "OnFailure": types_pb2.RESTART_POLICY_ON_FAILURE,
    "Never": types_pb2.RESTART_POLICY_NEVER,
}
PLACEMENTS = {"spread": types_pb2.PLACEMENT_STRATEGY_SPREAD, "binpack": types_pb2.PLACEMENT_STRATEGY_BINPACK}
# Keep (the default) is stored as unset: re-applying an older manifest starts no rollout.
NODE_LOST_ACTIONS = {"Keep": types_pb2.NODE_LOST_ACTION_UNSPECIFIED, "Stop": types_pb2.NODE_LOST_ACTION_STOP}


class ManifestError(Exception):
    """Manifests that cannot be applied; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class LoadedApp:
    """One App document: its normalized spec and where it came from ("app.yaml:1")."""

    spec: types_pb2.AppSpec
    source: str


def load_manifests(paths: Sequence[str | Path]) -> list[LoadedApp]:
    """Every App in `paths` ("-" reads stdin), or `ManifestError` listing all problems."""
    problems: list[str] = []
    apps: list[LoadedApp] = []
    first_seen: dict[str, str] = {}
    for path in paths:
        for doc, spec in _load_file(str(path), problems):
            here = f"{doc.file}:{doc.line_of('metadata.name')}"
            earlier = first_seen.setdefault(spec.name, here) if spec.name else here
            if earlier != here:
                doc.problem(
                    doc.line_of("metadata.name"), "metadata.name", f'app "{spec.name}" is also defined at {earlier}'
                )
            problems.extend(doc.report())
            if not doc.problems:
                apps.append(LoadedApp(spec, f"{doc.file}:{doc.line}"))
    if problems:
        raise ManifestError(problems)
    return apps


def _load_file(path: str, problems: list[str]) -> Iterator[tuple[_Doc, types_pb2.AppSpec]]:
    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{name}: cannot read: {exc.strerror or exc}")
        return
    except UnicodeDecodeError:
        problems.append(f"{name}: cannot read: not UTF-8 text")
        return
    found = False
    try:
        for root in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if root is None or _is_null(root):
                continue  # an empty document, e.g. after a trailing "---"
            found = True
            doc = _Doc(name, root.start_mark.line + 1)
            try:
                spec = _load_document(doc, root)
            except Exception as exc:  # a bug must still surface as one line, never as a traceback
                doc.problem(doc.line, "", f"internal error: {exc!r}")
                spec = types_pb2.AppSpec()
            yield doc, spec
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(name, text, exc))
        return
    if not found:
        problems.append(f"{name}:1 file is empty: expected an App manifest (apiVersion: {API_VERSION})")


def _yaml_problem(name: str, text: str, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context} at line {exc.context_mark.line + 1})"
        return f"{name}:{exc.problem_mark.line + 1} invalid YAML: {exc.problem}{context}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{name}:{text.count(chr(10), 0, exc.position) + 1} invalid YAML: {exc.reason}"
    return f"{name}: invalid YAML: {str(exc).splitlines()[0]}"


class _Doc:
    """The walk of one document: problems found and the line of every field path."""

    def __init__(self, file: str, line: int) -> None:
        self.file = file
        self.line = line
        self.lines: dict[str, int] = {}
        self.problems: list[tuple[int, str, str]] = []
        self.blocked: set[str] = set()  # paths whose value is missing or mistyped: validation is moot there

    def line_of(self, path: str) -> int:
        """The line of `path`, else of its nearest ancestor, else of the document."""
        while path and path not in self.lines:
            cut = max(path.rfind("."), path.rfind("["))
            path = path[: max(cut, 0)]
        return self.lines.get(path, self.line)

    def problem(self, where: yaml.Node | int, path: str, message: str, *, blocks: bool = True) -> None:
        """blocks=False: a problem with a key, which leaves the values under `path` worth validating."""
        line = where if isinstance(where, int) else where.start_mark.line + 1
        self.problems.append((line, path, message))
        if blocks:
            self.blocked.add(path)

    def report(self) -> list[str]:
        ordered = sorted(self.problems, key=lambda p: p[0])  # stable: keeps field order within a line
        return [f"{self.file}:{line} {path + ': ' if path else ''}{msg}" for line, path, msg in ordered]

    def fields(self, node: yaml.Node, path: str, allowed: Collection[str] | None) -> dict[str, yaml.Node]:
        """The entries of a mapping, reporting duplicate and (unless `allowed` is None) unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, f"expected a mapping, got {_describe(node)}")
            return {}
        found: dict[str, yaml.Node] = {}
        for key_node, value in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
            child = f"{path}.{key}" if path else key
            if not isinstance(key_node, yaml.ScalarNode) or _is_null(key_node):
                self.problem(key_node, path, f"field names must be strings, got {_describe(key_node)}", blocks=False)
            elif not key:
                self.problem(key_node, path, "field names must not be empty", blocks=False)
            elif key in found:
                self.problem(key_node, child, f"duplicate field (first at line {self.lines[child]})", blocks=False)
            elif allowed is not None and key not in allowed:
                self.problem(key_node, child, f"unknown field{_did_you_mean(key, allowed)}", blocks=False)
            else:
                self.lines[child] = key_node.start_mark.line + 1
                found[key] = value
        return found

    def items(self, node: yaml.Node, path: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, path, f"expected a list, got {_describe(node)}")
            return []
        for i, item in enumerate(node.value):
            self.lines[f"{path}[{i}]"] = item.start_mark.line + 1
        return list(node.value)

    def string(self, node: yaml.Node, path: str) -> str | None:
        if isinstance(node, yaml.ScalarNode):
            return "" if node.tag == _NULL else str(node.value)  # source text: see module docstring
        self.problem(node, path, f"expected a string, got {_describe(node)}")
        return None

    def integer(self, node: yaml.Node, path: str) -> int | None:
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _INT):
            self.problem(node, path, f"expected an integer, got {_describe(node)}")
            return None
        value = int(_CONSTRUCTOR.construct_yaml_int(node))
        if -(2**31) <= value < 2**31:  # every integer field of the API is int32
            return value
        self.problem(node, path, f"{node.value} is out of range")
        return None

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
            return bool(_CONSTRUCTOR.construct_yaml_bool(node))
        self.problem(node, path, f"expected true or false, got {_describe(node)}")
        return None

    def choice(self, node: yaml.Node, path: str, choices: Mapping[str, int]) -> int | None:
        text = self.string(node, path)
        if text is None:
            return None
        for name, value in choices.items():
            if name.lower() == text.lower():
                return value
        self.problem(node, path, f'expected one of {", ".join(choices)}, got "{text}"')
        return None

    def quantity(self, node: yaml.Node, path: str, parse: Callable[[str], int]) -> int | None:
        text = self.string(node, path)
        try:
            return None if text is None else parse(text)
        except QuantityError as exc:
            self.problem(node, path, str(exc))
            return None

    def strings(self, node: yaml.Node, path: str) -> list[str]:
        # Keeps indexes aligned with the YAML; a bad entry is already reported.
        return [self.string(item, f"{path}[{i}]") or "" for i, item in enumerate(self.items(node, path))]


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    # One problem is one line: control characters in the value are escaped.
    text = str(node.value).encode("unicode_escape").decode("ascii")
    return f'"{text}"' if node.tag == _STR else ("null" if node.tag == _NULL else text)


def _did_you_mean(key: str, allowed: Collection[str]) -> str:
    by_lower = {name.lower(): name for name in allowed}
    guesses = [by_lower[key.lower()]] if key.lower() in by_lower else []
    guesses = guesses or difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f"; did you mean {guesses[0]}?" if guesses else f"; expected one of {', '.join(allowed)}"


# A setter reads one YAML value at `path` and stores it into a protobuf message.
_Setter = Callable[[_Doc, yaml.Node, str, Message], None]
_Reader = Callable[[_Doc, yaml.Node, str], object]


def _fill(
    doc: _Doc, node: yaml.Node, path: str, msg: Message, table: Mapping[str, _Setter], required: Collection[str] = ()
) -> None:
    if not isinstance(node, yaml.MappingNode):
        doc.problem(node, path, f"expected a mapping, got {_describe(node)}")
        return
    fields = doc.fields(node, path, table)
    for key in required:
        if key not in fields or _is_null(fields[key]):
            doc.problem(doc.line_of(path), f"{path}.{key}" if path else key, "required field is missing")
    for key, value in fields.items():
        if _is_null(value):
            continue
        child = f"{path}.{key}" if path else key
        try:
            table[key](doc, value, child, msg)
        except ValueError:  # protobuf's own range check, e.g. an int32 of milliseconds
            doc.problem(
                value, child, f"{value.value if isinstance(value, yaml.ScalarNode) else 'value'} is out of range"
            )


def _scalar(attr: str, read: _Reader) -> _Setter:
    def setter(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
        value = read(doc, node, path)
        if value is not None:
            setattr(msg, attr, value)

    return setter


def _not(read: Callable[[_Doc, yaml.Node, str], bool | None]) -> _Reader:
    """Kubernetes' `hostUsers: false` is our user_namespace = True."""

    def inverted(doc: _Doc, node: yaml.Node, path: str) -> bool | None:
        value = read(doc, node, path)
        return None if value is None else not value

    return inverted


def _list(attr: str) -> _Setter:
    def setter(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
        getattr(msg, attr).extend(doc.strings(node, path))

    return setter


def _map(attr: str) -> _Setter:
    def setter(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
        target = getattr(msg, attr)
        for key, value in doc.fields(node, path, None).items():
            text = doc.string(value, f"{path}.{key}")
            if text is not None:
                target[key] = text

    return setter


def _message(attr: str, table: Mapping[str, _Setter], defaults: Mapping[str, int] | None = None) -> _Setter:
    """A nested message: present (even if empty) once mentioned, then filled from `table`."""

    def setter(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
        sub = getattr(msg, attr)
        sub.SetInParent()
        for field, value in (defaults or {}).items():
            setattr(sub, field, value)
        _fill(doc, node, path, sub, table)

    return setter


def _quantity(attr: str, parse: Callable[[str], int]) -> _Setter:
    return _scalar(attr, lambda d, n, p: d.quantity(n, p, parse))


def _choice(attr: str, choices: Mapping[str, int]) -> _Setter:
    return _scalar(attr, lambda d, n, p: d.choice(n, p, choices))


def _lower(attr: str) -> _Setter:
    return _scalar(attr, lambda d, n, p: (d.string(n, p) or "").lower() or None)


def _deadline(text: str) -> int:
    """A duration that cannot be 0: stored 0 means the default, which is not what 0 says."""
    ms = parse_duration(text)
    if ms == 0:
        raise QuantityError("must be at least 1s (leave it out for the default, 2m)")
    return ms


def _ports(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
    assert isinstance(msg, types_pb2.AppSpec)
    for i, item in enumerate(doc.items(node, path)):
        _fill(doc, item, f"{path}[{i}]", msg.ports.add(), _PORT, required=("containerPort",))


def _env(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
    """A mapping NAME: value, or Kubernetes' list of {name, value} and
    {name, valueFrom: {secretKeyRef: {name, key}}}; each variable's path is spec.env.NAME."""
    assert isinstance(msg, types_pb2.AppSpec)
    if not isinstance(node, yaml.SequenceNode):
        _map("env")(doc, node, path, msg)
        return
    for i, item in enumerate(doc.items(node, path)):
        here = f"{path}[{i}]"
        if not isinstance(item, yaml.MappingNode):
            doc.problem(item, here, f"expected a mapping, got {_describe(item)}")
            continue
        fields = doc.fields(item, here, ("name", "value", "valueFrom"))
        name = doc.string(fields["name"], f"{here}.name") if "name" in fields else None
        if not name:
            doc.problem(item, f"{here}.name", "required field is missing")
            continue
        doc.lines[f"{path}.{name}"] = item.start_mark.line + 1
        if ("value" in fields) == ("valueFrom" in fields):
            doc.problem(item, f"{path}.{name}", "set exactly one of value or valueFrom")
        elif "value" in fields:
            value = doc.string(fields["value"], f"{path}.{name}")
            if value is not None:
                msg.env[name] = value
        else:
            _secret_ref(doc, fields["valueFrom"], f"{path}.{name}.valueFrom", msg.secret_env.add(name=name))


def _secret_ref(doc: _Doc, node: yaml.Node, path: str, var: types_pb2.SecretEnvVar) -> None:
    ref = doc.fields(node, path, ("secretKeyRef",)).get("secretKeyRef")
    if ref is None:
        doc.problem(node, f"{path}.secretKeyRef", "required field is missing")
        return
    fields = doc.fields(ref, f"{path}.secretKeyRef", ("name", "key"))
    for field in ("name", "key"):
        if field not in fields:
            doc.problem(ref, f"{path}.secretKeyRef.{field}", "required field is missing")
    var.secret = doc.string(fields["name"], f"{path}.secretKeyRef.name") or "" if "name" in fields else ""
    var.key = doc.string(fields["key"], f"{path}.secretKeyRef.key") or "" if "key" in fields else ""


def _probe(attr: str) -> _Setter:
    """readiness, liveness and startup: one shape (types_pb2.Readiness)."""

    def setter(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
        _message(attr, _PROBE)(doc, node, path, msg)
        probes = [key for key in ("tcp", "exec", "http") if f"{path}.{key}" in doc.lines]
        if len(probes) > 1:
            doc.problem(doc.line_of(path), path, f"set only one of tcp, exec or http, not {' and '.join(probes)}")

    return setter


def _at_least_one(doc: _Doc, node: yaml.Node, path: str) -> int | None:
    """failureThreshold: 0 would mean "the default" in the API; in a manifest it is a mistake."""
    value = doc.integer(node, path)
    if value is not None and value < 1:
        doc.problem(node, path, f"must be at least 1, got {value}")
        return None
    return value


def _exec(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
    assert isinstance(msg, types_pb2.Readiness)
    msg.exec.SetInParent()
    msg.exec.command.extend(doc.strings(node, path))


def _volumes(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
    assert isinstance(msg, types_pb2.AppSpec)
    for i, item in enumerate(doc.items(node, path)):
        here = f"{path}[{i}]"
        _fill(doc, item, here, msg.volumes.add(), _VOLUME, required=("name",))
        sources = [key for key in ("emptyDir", "hostPath", "secret") if f"{here}.{key}" in doc.lines]
        if len(sources) > 1:  # a oneof: the second would silently replace the first
            chosen = " and ".join(sources)
            doc.problem(doc.line_of(here), here, f"set only one of emptyDir, hostPath or secret, not {chosen}")


def _secret_items(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
    assert isinstance(msg, types_pb2.SecretVolume)
    for i, item in enumerate(doc.items(node, path)):
        _fill(doc, item, f"{path}[{i}]", msg.items.add(), _KEY_TO_PATH, required=("key", "path"))


def _volume_mounts(doc: _Doc, node: yaml.Node, path: str, msg: Message) -> None:
    assert isinstance(msg, types_pb2.AppSpec)
    for i, item in enumerate(doc.items(node, path)):
        _fill(doc, item, f"{path}[{i}]", msg.volume_mounts.add(), _VOLUME_MOUNT, required=("name", "mountPath"))


_VOLUME: dict[str, _Setter] = {
    "name": _scalar("name", _Doc.string),
    "emptyDir": _message(
        "empty_dir",
        {"medium": _scalar("medium", _Doc.string), "sizeLimit": _quantity("size_limit_bytes", parse_memory)},
    ),
    "hostPath": _message("host_path", {"path": _scalar("path", _Doc.string), "type": _scalar("type", _Doc.string)}),
    "secret": _message(
        "secret",
        {
            "secretName": _scalar("secret_name", _Doc.string),
            "items": _secret_items,
            "defaultMode": _scalar("default_mode", _Doc.integer),  # YAML 1.1: 0400 is octal, as in kubectl
        },
    ),
}
_KEY_TO_PATH: dict[str, _Setter] = {
    "key": _scalar("key", _Doc.string),
    "path": _scalar("path", _Doc.string),
    "mode": _scalar("mode", _Doc.integer),
}
_VOLUME_MOUNT: dict[str, _Setter] = {
    "name": _scalar("name", _Doc.string),
    "mountPath": _scalar("mount_path", _Doc.string),
    "readOnly": _scalar("read_only", _Doc.boolean),
}
_PORT: dict[str, _Setter] = {
    "name": _scalar("name", _Doc.string),
    "containerPort": _scalar("container_port", _Doc.integer),
    "hostPort": _scalar("host_port", _Doc.integer),
    "protocol": _lower("protocol"),
}
_HTTP: dict[str, _Setter] = {"port": _scalar("port", _Doc.integer), "path": _scalar("path", _Doc.string)}
_PROBE: dict[str, _Setter] = {
    "tcp": _scalar("tcp", _Doc.integer),
    "exec": _exec,
    "http": _message("http", _HTTP),
    "periodSeconds": _quantity("period_ms", parse_duration),
    "timeoutSeconds": _quantity("timeout_ms", parse_duration),
    "failureThreshold": _scalar("failure_threshold", _at_least_one),
    "initialDelaySeconds": _quantity("initial_delay_ms", parse_duration),
}
_SPEC: dict[str, _Setter] = {
    "replicas": _scalar("replicas", _Doc.integer),
    "image": _scalar("image", _Doc.string),
    "command": _list("command"),
    "args": _list("args"),
    "env": _env,
    "resources": _message(
        "resources",
        {
            "cpu": _quantity("cpu_millis", parse_cpu),
            "memory": _quantity("memory_bytes", parse_memory),
            "pids": _scalar("pids", _Doc.integer),
        },
    ),
    "ports": _ports,
    "restartPolicy": _choice("restart_policy", RESTART_POLICIES),
    "nodeSelector": _map("node_selector"),
    "antiAffinity": _list("anti_affinity"),
    "placement": _choice("placement", PLACEMENTS),
    # Each bound defaults on its own, so {maxUnavailable: 1} keeps maxSurge 1.
    "update": _message(
        "update",
        {"maxSurge": _scalar("max_surge", _Doc.integer), "maxUnavailable": _scalar("max_unavailable", _Doc.integer)},
        defaults={"max_surge": 1, "max_unavailable": 0},
    ),
    "progressDeadline": _quantity("progress_deadline_ms", _deadline),
    "readiness": _probe("readiness"),
    "liveness": _probe("liveness"),
    "startup": _probe("startup"),
    "stopGracePeriod": _quantity("stop_grace_period_ms", parse_duration),
    "user": _scalar("user", _Doc.string),
    "workingDir": _scalar("working_dir", _Doc.string),
    "readOnlyRootFilesystem": _scalar("read_only_root_fs", _Doc.boolean),
    "hostUsers": _scalar("user_namespace", _not(_Doc.boolean)),
    "capabilities": _message("capabilities", {"add": _list("add"), "drop": _list("drop")}),
    "seccomp": _lower("seccomp"),
    "service": _message(
        "service",
        {
            "port": _scalar("port", _Doc.integer),
            "targetPort": _scalar("target_port", _Doc.integer),
            "protocol": _lower("protocol"),
        },
    ),
    "onNodeLost": _choice("on_node_lost", NODE_LOST_ACTIONS),
    "init": _scalar("init", _Doc.boolean),
    "volumes": _volumes,
    "volumeMounts": _volume_mounts,
}


def _expect(doc: _Doc, top: Mapping[str, yaml.Node], key: str, expected: str) -> None:
    node = top.get(key)
    if node is None:
        doc.problem(doc.line, key, f'required field is missing (expected "{expected}")')
    elif not (isinstance(node, yaml.ScalarNode) and node.value == expected):
        doc.problem(node, key, f'expected "{expected}", got {_describe(node)}')


def _load_document(doc: _Doc, root: yaml.Node) -> types_pb2.AppSpec:
    spec = types_pb2.AppSpec(replicas=1)
    if not isinstance(root, yaml.MappingNode):
        doc.problem(root, "", f"expected an App manifest (a mapping), got {_describe(root)}")
        return spec
    metadata: dict[str, _Setter] = {"name": _scalar("name", _Doc.string), "labels": _map("labels")}
    top = doc.fields(root, "", ("apiVersion", "kind", "metadata", "spec"))
    _expect(doc, top, "apiVersion", API_VERSION)
    _expect(doc, top, "kind", KIND)
    for section, table, required in (("metadata", metadata, "name"), ("spec", _SPEC, "image")):
        if section in top:
            _fill(doc, top[section], section, spec, table, required=(required,))
        else:
            doc.problem(doc.line, f"{section}.{required}", "required field is missing")
    spec = normalize_app_spec(spec)
    for error in validate_app_spec(spec):
        # Skip what the walk already reported (a missing or mistyped field looks empty here).
        if not any(error.path == p or error.path.startswith((p + ".", p + "[")) for p in doc.blocked):
            doc.problem(doc.line_of(error.path), error.path, error.message)
    return spec
