from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.manifest import LoadedApp, ManifestError, load_manifests
from orch.v1 import types_pb2

FULL = """\
apiVersion: orch/v1
kind: App
metadata: {name: web, labels: {tier: frontend}}
spec:
  replicas: 3
  image: 127.0.0.1:5000/library/busybox:1.36
  command: ["httpd", "-f", "-p", "8080"]
  args: [-v]
  env: {GREETING: hello, PORT: 8080, DEBUG: true, RATIO: 1.50}
  resources: {cpu: 250m, memory: 64Mi, pids: 128}
  ports: [{name: http, containerPort: 8080, hostPort: 18080, protocol: TCP}]
  restartPolicy: OnFailure
  nodeSelector: {disk: ssd}
  placement: binpack
  update: {maxUnavailable: 2}
  readiness: {http: {port: 8080, path: /}, periodSeconds: 5, timeoutSeconds: 500ms}
  stopGracePeriod: 1m30s
  user: 1000:1000
  workingDir: /srv
  readOnlyRootFilesystem: true
  hostUsers: false
  init: true
  capabilities: {add: [NET_ADMIN], drop: [CAP_CHOWN]}
  antiAffinity: [full, db]
"""

MINIMAL = "apiVersion: orch/v1\nkind: App\nmetadata:\n  name: {name}\nspec:\n  image: busybox\n"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # messages then name files as the user typed them


def write(name: str, text: str) -> str:
    Path(name).write_text(textwrap.dedent(text))
    return name


def problems(*paths: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifests(paths)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_full_manifest() -> None:
    [app] = load_manifests([write("app.yaml", FULL)])
    assert isinstance(app, LoadedApp) and app.source == "app.yaml:1"
    s = app.spec
    assert (s.name, dict(s.labels), s.replicas, s.image) == ("web", {"tier": "frontend"}, 3, s.image)
    assert list(s.command) == ["httpd", "-f", "-p", "8080"] and list(s.args) == ["-v"]
    # Scalars keep their source text (see the module docstring).
    assert dict(s.env) == {"GREETING": "hello", "PORT": "8080", "DEBUG": "true", "RATIO": "1.50"}
    assert s.resources == types_pb2.Resources(cpu_millis=250, memory_bytes=64 << 20, pids=128)
    assert s.ports[0] == types_pb2.Port(name="http", container_port=8080, host_port=18080, protocol="tcp")
    assert s.restart_policy == types_pb2.RESTART_POLICY_ON_FAILURE
    assert s.placement == types_pb2.PLACEMENT_STRATEGY_BINPACK
    assert dict(s.node_selector) == {"disk": "ssd"}
    assert (s.update.max_surge, s.update.max_unavailable) == (1, 2)
    assert s.readiness == types_pb2.Readiness(
        http=types_pb2.HttpProbe(port=8080, path="/"), period_ms=5000, timeout_ms=500
    )
    assert (s.stop_grace_period_ms, s.user, s.working_dir) == (90_000, "1000:1000", "/srv")
    assert s.read_only_root_fs is True
    assert s.user_namespace is True  # hostUsers: false
    assert s.init is True
    assert (list(s.capabilities.add), list(s.capabilities.drop)) == (["CAP_NET_ADMIN"], ["CAP_CHOWN"])
    assert list(s.anti_affinity) == ["full", "db"]


def test_minimal_manifest_gets_defaults() -> None:
    [app] = load_manifests([Path(write("app.yaml", MINIMAL.format(name="web")))])
    s = app.spec
    assert s.replicas == 1
    assert s.restart_policy == types_pb2.RESTART_POLICY_ALWAYS
    assert s.placement == types_pb2.PLACEMENT_STRATEGY_SPREAD
    assert (s.update.max_surge, s.update.max_unavailable, s.stop_grace_period_ms) == (1, 0, 10_000)
    assert not s.HasField("readiness")
    assert s.init is False  # the command is PID 1, as under Docker


def test_multi_document_sources() -> None:
    text = "# apps\n" + MINIMAL.format(name="a") + "---\n" + MINIMAL.format(name="b") + "---\n"
    apps = load_manifests([write("apps.yaml", text)])
    assert [(a.spec.name, a.source) for a in apps] == [("a", "apps.yaml:2"), ("b", "apps.yaml:9")]


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(MINIMAL.format(name="web")))
    [app] = load_manifests(["-"])
    assert app.source == "<stdin>:1"


def test_scale_to_zero_and_exec_probe() -> None:
    text = MINIMAL.format(name="web") + "  replicas: 0\n  readiness: {exec: [test, -f, /ready]}\n"
    [app] = load_manifests([write("app.yaml", text)])
    assert app.spec.replicas == 0 and list(app.spec.readiness.exec.command) == ["test", "-f", "/ready"]


HEAD = "apiVersion: orch/v1\nkind: App\nmetadata: {name: web}\nspec:\n  image: busybox\n"


def test_liveness_and_startup_probes() -> None:
    text = HEAD + (
        "  liveness: {exec: [cat, /tmp/healthy], periodSeconds: 2, initialDelaySeconds: 5s, failureThreshold: 4}\n"
        "  startup: {http: {port: 8080, path: /started}}\n"
        "  readiness: {tcp: 8080, initialDelaySeconds: 1500ms}\n"
    )
    (app,) = load_manifests([write("app.yaml", text)])
    s = app.spec
    assert s.liveness == types_pb2.Readiness(
        exec=types_pb2.ExecProbe(command=["cat", "/tmp/healthy"]),
        period_ms=2000,
        timeout_ms=1000,
        failure_threshold=4,
        initial_delay_ms=5000,
    )
    assert s.startup == types_pb2.Readiness(
        http=types_pb2.HttpProbe(port=8080, path="/started"), period_ms=10_000, timeout_ms=1000, failure_threshold=3
    )  # Kubernetes' defaults
    assert s.readiness.initial_delay_ms == 1500 and s.readiness.failure_threshold == 0  # orch's 1, unstored


BAD: list[tuple[str, str, str]] = [
    (
        "memory",
        HEAD + "  resources: {memory: 64Mb}\n",
        '6 spec.resources.memory: "64Mb" is not a quantity; did you mean 64Mi?',
    ),
    (
        "cpu",
        HEAD + "  resources:\n    cpu: 250M\n",
        '7 spec.resources.cpu: "250M" is not a CPU quantity; did you mean 250m?',
    ),
    (
        "typo",
        HEAD + "  replica: 3\n",
        "6 spec.replica: unknown field; did you mean replicas?",
    ),
    (
        "case",
        HEAD + "  Replicas: 3\n",
        "6 spec.Replicas: unknown field; did you mean replicas?",
    ),
    (
        "unknown",
        HEAD + "  zzz: 1\n",
        (
            "6 spec.zzz: unknown field; expected one of replicas, image, command, args, env, resources, ports, "
            "restartPolicy, nodeSelector, antiAffinity, placement, update, progressDeadline, readiness, liveness, "
            "startup, stopGracePeriod, user, workingDir, readOnlyRootFilesystem, hostUsers, capabilities, seccomp, "
            "service, onNodeLost, init, volumes, volumeMounts"
        ),
    ),
    (
        "type",
        HEAD + "  replicas: three\n",
        '6 spec.replicas: expected an integer, got "three"',
    ),
    (
        "quoted int",
        HEAD + '  replicas: "3"\n',
        '6 spec.replicas: expected an integer, got "3"',
    ),
    (
        "float",
        HEAD + "  replicas: 1.5\n",
        "6 spec.replicas: expected an integer, got 1.5",
    ),
    (
        "big int",
        HEAD + "  replicas: 99999999999\n",
        "6 spec.replicas: 99999999999 is out of range",
    ),
    (
        "range",
        HEAD + "  replicas: 10001\n",
        "6 spec.replicas: must be between 0 and 10000, got 10001",
    ),
    (
        "list",
        HEAD + "  command: httpd -f\n",
        '6 spec.command: expected a list, got "httpd -f"',
    ),
    (
        "map",
        HEAD + "  env: [A]\n",
        '6 spec.env[0]: expected a mapping, got "A"',
    ),
    (
        "string",
        HEAD + "  user: {a: 1}\n",
        "6 spec.user: expected a string, got a mapping",
    ),
    (
        "bool",
        HEAD + "  readOnlyRootFilesystem: maybe\n",
        '6 spec.readOnlyRootFilesystem: expected true or false, got "maybe"',
    ),
    (
        "init",
        HEAD + "  init: yes please\n",
        '6 spec.init: expected true or false, got "yes please"',
    ),
    (
        "enum",
        HEAD + "  restartPolicy: Sometimes\n",
        '6 spec.restartPolicy: expected one of Always, OnFailure, Never, got "Sometimes"',
    ),
    (
        "duration",
        HEAD + "  stopGracePeriod: 10 seconds\n",
        '6 spec.stopGracePeriod: "10 seconds" is not a duration; did you mean 10s?',
    ),
    (
        "grace",
        HEAD + "  stopGracePeriod: 2h\n",
        "6 spec.stopGracePeriod: must be between 0s and 1h, got 2h",
    ),
    (
        "deadline-zero",
        HEAD + "  progressDeadline: 0\n",
        "6 spec.progressDeadline: must be at least 1s (leave it out for the default, 2m)",
    ),
    (
        "deadline-long",
        HEAD + "  progressDeadline: 25h\n",
        "6 spec.progressDeadline: must be between 1s and 24h, got 25h",
    ),
    (
        "deadline-unit",
        HEAD + "  progressDeadline: 10 secs\n",
        '6 spec.progressDeadline: "10 secs" is not a duration; did you mean 10s?',
    ),
    (
        "port",
        HEAD + "  ports:\n  - name: http\n    containerPort: 70000\n",
        "8 spec.ports[0].containerPort: must be between 1 and 65535, got 70000",
    ),
    (
        "port missing",
        HEAD + "  ports:\n  - {hostPort: 80}\n",
        "7 spec.ports[0].containerPort: required field is missing",
    ),
    (
        "host dup",
        HEAD + "  ports:\n  - {containerPort: 1, hostPort: 80}\n  - {containerPort: 2, hostPort: 80}\n",
        "8 spec.ports[1].hostPort: 80/tcp is already published by spec.ports[0]",
    ),
    (
        "two probes",
        HEAD + "  readiness:\n    tcp: 80\n    exec: [ls]\n",
        "6 spec.readiness: set only one of tcp, exec or http, not tcp and exec",
    ),
    (
        "no probe",
        HEAD + "  readiness: {periodSeconds: 5}\n",
        "6 spec.readiness: needs one of tcp, exec or http",
    ),
    (
        "liveness two probes",
        HEAD + "  liveness:\n    http: {port: 80}\n    exec: [ls]\n",
        "6 spec.liveness: set only one of tcp, exec or http, not exec and http",
    ),
    (
        "startup no probe",
        HEAD + "  startup: {failureThreshold: 30}\n",
        "6 spec.startup: needs one of tcp, exec or http",
    ),
    (
        "failure threshold 0",
        HEAD + "  liveness:\n    tcp: 80\n    failureThreshold: 0\n",
        "8 spec.liveness.failureThreshold: must be at least 1, got 0",
    ),
    (
        "failure threshold text",
        HEAD + "  startup: {tcp: 80, failureThreshold: many}\n",
        '6 spec.startup.failureThreshold: expected an integer, got "many"',
    ),
    (
        "initial delay",
        HEAD + "  readiness:\n    tcp: 80\n    initialDelaySeconds: 5 min\n",
        '8 spec.readiness.initialDelaySeconds: "5 min" is not a duration; did you mean 5m?',
    ),
    (
        "initial delay too long",
        HEAD + "  liveness: {tcp: 80, initialDelaySeconds: 2h}\n",
        "6 spec.liveness.initialDelaySeconds: must be between 0s and 1h, got 2h",
    ),
    (
        "liveness typo",
        HEAD + "  liveness:\n    exec: [true]\n    initialDelay: 5\n",
        "8 spec.liveness.initialDelay: unknown field; did you mean initialDelaySeconds?",
    ),
    (
        "liveness port",
        HEAD + "  liveness:\n    tcp: 0\n",
        "7 spec.liveness.tcp: must be between 1 and 65535, got 0",
    ),
    (
        "cap",
        HEAD + "  capabilities:\n    add:\n    - NET_ADMN\n",
        '8 spec.capabilities.add[0]: unknown capability "NET_ADMN"; did you mean NET_ADMIN?',
    ),
    (
        "update",
        HEAD + "  update: {maxSurge: 0}\n",
        "6 spec.update: maxSurge and maxUnavailable cannot both be 0: a rollout could never progress",
    ),
    (
        "env name",
        HEAD + "  env:\n    A: 1\n    2B: x\n",
        '8 spec.env.2B: "2B" is not a valid variable name: letters, digits and "_", not starting with a digit',
    ),
    (
        "dup key",
        HEAD + "  replicas: 1\n  replicas: 2\n",
        "7 spec.replicas: duplicate field (first at line 6)",
    ),
    (
        "empty cmd",
        HEAD + '  command: [sh, ""]\n',
        "6 spec.command[1]: must not be empty",
    ),
    (
        "image",
        HEAD.replace("busybox", "Busy Box"),
        (
            '5 spec.image: "Busy Box" is not a valid image reference: contains whitespace; expected '
            "[HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST], oci-archive:/path, docker-archive:/path, oci:/path[:tag] or "
            "rootfs:/dir"
        ),
    ),
    (
        "no image",
        HEAD.replace("  image: busybox\n", "  replicas: 2\n"),
        "4 spec.image: required field is missing",
    ),
    (
        "null image",
        HEAD.replace("  image: busybox\n", "  image:\n"),
        "4 spec.image: required field is missing",
    ),
    (
        "no spec",
        HEAD.split("spec:")[0],
        "1 spec.image: required field is missing",
    ),
    (
        "spec list",
        HEAD.split("spec:")[0] + "spec: [1]\n",
        "4 spec: expected a mapping, got a list",
    ),
    (
        "no name",
        HEAD.replace("{name: web}", "{labels: {a: b}}"),
        "3 metadata.name: required field is missing",
    ),
    (
        "bad name",
        HEAD.replace("web", "Web"),
        (
            '3 metadata.name: "Web" is not a DNS label: use lowercase letters, digits and "-", starting and ending '
            "with a letter or digit"
        ),
    ),
    (
        "label",
        HEAD.replace("{name: web}", "{name: web, labels: {a: -x}}"),
        (
            '3 metadata.labels.a: invalid value "-x": at most 63 letters, digits, "-", "_" or ".", starting and '
            "ending with a letter or digit"
        ),
    ),
    (
        "apiVersion",
        HEAD.replace("orch/v1", "v1"),
        '1 apiVersion: expected "orch/v1", got "v1"',
    ),
    (
        "kind",
        HEAD.replace("App", "Deployment"),
        '2 kind: expected "App", got "Deployment"',
    ),
    (
        "no kind",
        HEAD.replace("kind: App\n", ""),
        '1 kind: required field is missing (expected "App")',
    ),
    (
        "top typo",
        HEAD + "metdata: {}\n",
        "6 metdata: unknown field; did you mean metadata?",
    ),
    (
        "not a map",
        "- a\n- b\n",
        "1 expected an App manifest (a mapping), got a list",
    ),
    (
        "scalar",
        "hello\n",
        '1 expected an App manifest (a mapping), got "hello"',
    ),
    (
        "syntax",
        HEAD + "  command: [a, b\n",
        "7 invalid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 6)",
    ),
    (
        "tab",
        HEAD + "\treplicas: 1\n",
        "6 invalid YAML: found character '\\t' that cannot start any token",
    ),
    (
        "empty",
        "",
        "1 file is empty: expected an App manifest (apiVersion: orch/v1)",
    ),
    (
        "comments",
        "# nothing\n---\n",
        "1 file is empty: expected an App manifest (apiVersion: orch/v1)",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_manifests(text: str, expected: str) -> None:
    assert problems(write("app.yaml", text)) == [f"app.yaml:{expected}"]


def test_all_problems_of_all_files_at_once() -> None:
    a = write("a.yaml", HEAD + "  replicas: -1\n  resources: {memory: 1GB, cpu: 1.5m}\n")
    b = write("b.yaml", MINIMAL.format(name="web") + "---\n" + HEAD.replace("orch/v1", "orch/v2"))
    assert problems(a, b, "missing.yaml") == [
        "a.yaml:6 spec.replicas: must be between 0 and 10000, got -1",
        'a.yaml:7 spec.resources.memory: "1GB" is not a quantity; did you mean 1Gi?',
        'a.yaml:7 spec.resources.cpu: "1.5m" is not a CPU quantity; use cores like 0.5 or millicores like 500m',
        'b.yaml:4 metadata.name: app "web" is also defined at a.yaml:3',
        'b.yaml:8 apiVersion: expected "orch/v1", got "orch/v2"',
        'b.yaml:10 metadata.name: app "web" is also defined at a.yaml:3',
        "missing.yaml: cannot read: No such file or directory",
    ]


def test_duplicate_within_one_file() -> None:
    text = MINIMAL.format(name="web") + "---\n" + MINIMAL.format(name="web")
    assert problems(write("app.yaml", text)) == ['app.yaml:11 metadata.name: app "web" is also defined at app.yaml:4']


def test_not_utf8() -> None:
    Path("bin.yaml").write_bytes(b"\xff\xfe\x00")
    assert problems("bin.yaml") == ["bin.yaml: cannot read: not UTF-8 text"]


def test_control_character() -> None:
    assert problems(write("app.yaml", HEAD + "  user: a\x01b\n")) == [
        "app.yaml:6 invalid YAML: special characters are not allowed"
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*"ab:-[]{},'\"\n #&*!|>?%@`\t0.", "spec", "  ", "App"]), max_size=40).map("".join))
def test_never_raises_anything_else(text: str) -> None:
    sys.stdin, saved = io.StringIO(text), sys.stdin
    try:
        load_manifests(["-"])
    except ManifestError as exc:
        assert exc.problems and all("\n" not in p for p in exc.problems)
    finally:
        sys.stdin = saved


def test_nul_bytes_and_bad_env_names_are_refused_with_file_and_line() -> None:
    # Issue 9 item 8: before, these were applied and crashed every start of the instance.
    text = HEAD + (
        '  command: ["sh", "-c", "echo\\0hi"]\n'
        "  args:\n"
        '    - "a\\x00b"\n'
        "  env:\n"
        '    GOOD: "fine"\n'
        '    SECRET: "x\\0y"\n'
        '    "A=B": "v"\n'
        '    "": "empty name"\n'
        '  workingDir: "/tmp\\0x"\n'
        '  user: "root\\0"\n'
    )
    assert problems(write("app.yaml", text)) == [
        "app.yaml:6 spec.command[2]: must not contain a NUL byte (at offset 4)",
        "app.yaml:8 spec.args[0]: must not contain a NUL byte (at offset 1)",
        "app.yaml:11 spec.env.SECRET: must not contain a NUL byte (at offset 1)",
        'app.yaml:12 spec.env.A=B: "A=B" is not a valid variable name: letters, digits and "_", '
        "not starting with a digit",
        "app.yaml:13 spec.env: field names must not be empty",
        "app.yaml:14 spec.workingDir: must not contain a NUL byte (at offset 4)",
        'app.yaml:15 spec.user: "root\\x00" is not UID[:GID]; use numbers or names, e.g. "1000:1000"',
    ]
