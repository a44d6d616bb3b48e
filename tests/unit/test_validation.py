from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

import orch.validation
from orch.v1 import types_pb2
from orch.validation import (
    LINUX_CAPABILITIES,
    FieldError,
    canonical_capability,
    normalize_app_spec,
    validate_app_spec,
)

Spec = types_pb2.AppSpec


def make_spec() -> Spec:
    """A valid spec using most fields; tests break one thing at a time."""
    spec = Spec(
        name="web",
        labels={"tier": "frontend", "app.kubernetes.io/name": "web"},
        replicas=3,
        image="127.0.0.1:5000/library/busybox:1.36",
        command=["httpd", "-f"],
        args=["-p", "8080"],
        env={"GREETING": "hello", "_X1": ""},
        resources=types_pb2.Resources(cpu_millis=250, memory_bytes=64 << 20, pids=128),
        ports=[types_pb2.Port(name="http", container_port=8080, host_port=18080, protocol="tcp")],
        node_selector={"disk": "ssd"},
        stop_grace_period_ms=10_000,
        user="1000:1000",
        working_dir="/",
        capabilities=types_pb2.Capabilities(add=["NET_ADMIN"], drop=["CAP_CHOWN"]),
    )
    spec.readiness.tcp = 8080
    return spec


def test_valid_spec_has_no_errors() -> None:
    assert validate_app_spec(make_spec()) == []
    assert validate_app_spec(normalize_app_spec(make_spec())) == []


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "busybox:1.36",
        "library/busybox",
        "docker.io/library/busybox:latest",
        "localhost:5000/a/b/c:v1.2.3-rc_1",
        "[::1]:5000/busybox",
        "my-registry.example.com/team/app@sha256:" + "a" * 64,
        "busybox:1.36@sha256:" + "0123456789abcdef" * 4,
        "oci-archive:/images/app.tar",
        "docker-archive:/tmp/x.tar",
        "oci:/var/lib/images/app:v1",
        "rootfs:/srv/rootfs",
    ],
)
def test_good_images(image: str) -> None:
    spec = make_spec()
    spec.image = image
    assert validate_app_spec(spec) == []


@pytest.mark.parametrize(
    "image", ["Busybox", "busybox:", "busybox@sha256:abc", "-busybox", "a//b", "busybox:-x", "with space"]
)
def test_bad_images(image: str) -> None:
    spec = make_spec()
    spec.image = image
    [error] = validate_app_spec(spec)
    assert error.path == "spec.image"
    assert "is not a valid image reference" in error.message


def _set(**fields: object) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        for name, value in fields.items():
            setattr(spec, name, value)

    return mutate


def _port(**fields: object) -> Callable[[Spec], None]:
    return lambda spec: spec.ports.append(types_pb2.Port(**fields))  # type: ignore[arg-type]


BAD: list[tuple[str, Callable[[Spec], None], str, str]] = [
    ("empty name", _set(name=""), "metadata.name", "must not be empty"),
    ("upper name", _set(name="Web"), "metadata.name", '"Web" is not a DNS label'),
    ("name ends in -", _set(name="web-"), "metadata.name", "is not a DNS label"),
    ("long name", _set(name="a" * 58), "metadata.name", "must be at most 57 characters"),
    ("label key", lambda s: s.labels.update({"-bad": "x"}), "metadata.labels.-bad", 'invalid key "-bad"'),
    ("label prefix", lambda s: s.labels.update({"Ex.com/a": "x"}), "metadata.labels.Ex.com/a", "key prefix"),
    ("label value", lambda s: s.labels.update({"a": "x y"}), "metadata.labels.a", 'invalid value "x y"'),
    ("long value", lambda s: s.labels.update({"a": "x" * 64}), "metadata.labels.a", "invalid value"),
    ("selector", lambda s: s.node_selector.update({"a": "-"}), "spec.nodeSelector.a", "invalid value"),
    ("negative replicas", _set(replicas=-1), "spec.replicas", "must be between 0 and 10000, got -1"),
    ("many replicas", _set(replicas=10_001), "spec.replicas", "must be between 0 and 10000, got 10001"),
    ("no image", _set(image=""), "spec.image", "must not be empty"),
    ("relative archive", _set(image="oci-archive:x.tar"), "spec.image", "must be absolute"),
    ("empty command", lambda s: s.command.append(""), "spec.command[2]", "must not be empty"),
    ("empty arg", lambda s: s.args.insert(0, ""), "spec.args[0]", "must not be empty"),
    ("env name", lambda s: s.env.update({"1A": "x"}), "spec.env.1A", "is not a valid variable name"),
    ("env dash", lambda s: s.env.update({"A-B": "x"}), "spec.env.A-B", "is not a valid variable name"),
    ("cpu", lambda s: setattr(s.resources, "cpu_millis", -1), "spec.resources.cpu", "must not be negative"),
    ("memory", lambda s: setattr(s.resources, "memory_bytes", -1), "spec.resources.memory", "not be negative"),
    ("pids", lambda s: setattr(s.resources, "pids", -5), "spec.resources.pids", "must not be negative, got -5"),
    ("container port 0", _port(container_port=0), "spec.ports[1].containerPort", "between 1 and 65535"),
    ("container port big", _port(container_port=70000), "spec.ports[1].containerPort", "got 70000"),
    ("host port", _port(container_port=1, host_port=-1), "spec.ports[1].hostPort", "between 0 and 65535"),
    ("protocol", _port(container_port=1, protocol="sctp"), "spec.ports[1].protocol", 'tcp or udp, got "sctp"'),
    ("port name", _port(container_port=1, name="a-very-long-port-name"), "spec.ports[1].name", "at most 15"),
    ("port name dup", _port(container_port=1, name="http"), "spec.ports[1].name", "already used by spec.ports[0]"),
    ("host port dup", _port(container_port=1, host_port=18080), "spec.ports[1].hostPort", "18080/tcp is already"),
    ("restart", _set(restart_policy=9), "spec.restartPolicy", "unknown restart policy 9"),
    ("placement", _set(placement=7), "spec.placement", "unknown placement strategy 7"),
    ("surge", lambda s: setattr(s.update, "max_surge", -1), "spec.update.maxSurge", "must not be negative"),
    ("both zero", lambda s: s.update.SetInParent(), "spec.update", "cannot both be 0"),
    ("tcp probe", lambda s: setattr(s.readiness, "tcp", 0), "spec.readiness.tcp", "between 1 and 65535"),
    ("http probe", lambda s: setattr(s.readiness.http, "port", 99999), "spec.readiness.http.port", "65535"),
    (
        "http path",
        lambda s: s.readiness.http.MergeFrom(types_pb2.HttpProbe(port=80, path="x")),
        "spec.readiness.http.path",
        "/",
    ),
    ("exec probe", lambda s: s.readiness.exec.SetInParent(), "spec.readiness.exec", "needs a command"),
    ("exec entry", lambda s: s.readiness.exec.command.extend(["a", ""]), "spec.readiness.exec[1]", "not be empty"),
    ("no probe", lambda s: s.readiness.ClearField("tcp"), "spec.readiness", "needs one of tcp, exec or http"),
    ("period", lambda s: setattr(s.readiness, "period_ms", -1), "spec.readiness.periodSeconds", "got -1ms"),
    ("liveness kind", lambda s: s.liveness.SetInParent(), "spec.liveness", "needs one of tcp, exec or http"),
    ("startup port", lambda s: setattr(s.startup.http, "port", 0), "spec.startup.http.port", "between 1 and 65535"),
    (
        "liveness threshold",
        lambda s: s.liveness.MergeFrom(types_pb2.Readiness(tcp=80, failure_threshold=-1)),
        "spec.liveness.failureThreshold",
        "between 0 and 10000, got -1",
    ),
    (
        "startup delay",
        lambda s: s.startup.MergeFrom(types_pb2.Readiness(tcp=80, initial_delay_ms=3_600_001)),
        "spec.startup.initialDelaySeconds",
        "between 0s and 1h",
    ),
    ("grace", _set(stop_grace_period_ms=7_200_000), "spec.stopGracePeriod", "between 0s and 1h, got 2h"),
    ("user", _set(user="1000:"), "spec.user", '"1000:" is not UID[:GID]'),
    ("user spaces", _set(user="a b"), "spec.user", "is not UID[:GID]"),
    ("uid range", _set(user="4294967295"), "spec.user", "IDs must be below 4294967295"),
    ("workdir", _set(working_dir="tmp"), "spec.workingDir", 'absolute path, got "tmp"'),
    ("cap typo", lambda s: s.capabilities.add.append("NET_ADMN"), "spec.capabilities.add[1]", "mean NET_ADMIN?"),
    # Issue 9 item 8: execve() takes C strings; a NUL crashed every start of the instance.
    ("nul command", lambda s: s.command.append("a\0b"), "spec.command[2]", "NUL byte (at offset 1)"),
    ("nul arg", lambda s: s.args.insert(0, "\0"), "spec.args[0]", "must not contain a NUL byte"),
    ("nul env value", lambda s: s.env.update({"K": "v\0"}), "spec.env.K", "must not contain a NUL byte"),
    ("nul env name", lambda s: s.env.update({"K\0": "v"}), "spec.env.K\\x00", "not a valid variable name"),
    ("env name =", lambda s: s.env.update({"A=B": "v"}), "spec.env.A=B", "is not a valid variable name"),
    ("empty env name", lambda s: s.env.update({"": "v"}), "spec.env.", '"" is not a valid variable name'),
    ("nul workdir", _set(working_dir="/tmp\0"), "spec.workingDir", "must not contain a NUL byte"),
    ("nul user", _set(user="root\0"), "spec.user", '"root\\x00" is not UID[:GID]'),
    ("nul probe", lambda s: s.readiness.exec.command.append("\0"), "spec.readiness.exec[0]", "NUL byte"),
    ("cap junk", lambda s: s.capabilities.drop.append("xyzzy"), "spec.capabilities.drop[1]", "capabilities(7)"),
]


@pytest.mark.parametrize(("mutate", "path", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_one_error_per_problem(mutate: Callable[[Spec], None], path: str, message: str) -> None:
    spec = make_spec()
    mutate(spec)
    errors = validate_app_spec(spec)
    assert [e.path for e in errors] == [path], errors
    assert message in errors[0].message


@pytest.mark.parametrize("user", ["0", "1000", "1000:1000", "nobody", "www-data:www-data", "app:0", "svc$"])
def test_good_users(user: str) -> None:
    spec = make_spec()
    spec.user = user
    assert validate_app_spec(spec) == []


def test_zero_replicas_allow_a_frozen_update() -> None:
    spec = make_spec()
    spec.replicas = 0
    spec.update.SetInParent()
    assert validate_app_spec(spec) == []


def test_same_host_port_on_tcp_and_udp_is_fine() -> None:
    spec = make_spec()
    spec.ports.append(types_pb2.Port(container_port=53, host_port=18080, protocol="udp"))
    assert validate_app_spec(spec) == []


def test_errors_are_collected_in_field_order() -> None:
    spec = Spec()
    assert [str(e) for e in validate_app_spec(spec)] == [
        "metadata.name: must not be empty",
        "spec.image: must not be empty",
    ]


def test_field_error_is_frozen() -> None:
    error = FieldError("spec.replicas", "bad")
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.path = "x"  # type: ignore[misc]
    assert str(error) == "spec.replicas: bad"


def test_normalize_fills_defaults_on_a_copy() -> None:
    spec = Spec(name="web", image="busybox", replicas=2, ports=[types_pb2.Port(container_port=80, protocol="UDP")])
    spec.readiness.tcp = 80
    spec.capabilities.add.extend(["net_admin", "CAP_SYS_TIME", "all", "bogus"])
    out = normalize_app_spec(spec)
    assert out is not spec and spec.restart_policy == types_pb2.RESTART_POLICY_UNSPECIFIED
    assert out.restart_policy == types_pb2.RESTART_POLICY_ALWAYS
    assert out.placement == types_pb2.PLACEMENT_STRATEGY_SPREAD
    assert (out.update.max_surge, out.update.max_unavailable) == (1, 0)
    assert out.stop_grace_period_ms == 10_000
    assert (out.readiness.period_ms, out.readiness.timeout_ms) == (10_000, 1_000)
    assert out.readiness.failure_threshold == 0  # orch's 1 for readiness, applied by the node
    spec.liveness.tcp = spec.startup.tcp = 80
    out = normalize_app_spec(spec)
    for probe in (out.liveness, out.startup):
        assert (probe.period_ms, probe.timeout_ms, probe.failure_threshold) == (10_000, 1_000, 3)
    assert out.ports[0].protocol == "udp"
    assert list(out.capabilities.add) == ["CAP_NET_ADMIN", "CAP_SYS_TIME", "ALL", "bogus"]
    assert out.replicas == 2
    assert normalize_app_spec(out) == out  # idempotent


def test_normalize_keeps_explicit_values() -> None:
    spec = Spec(
        restart_policy=types_pb2.RESTART_POLICY_NEVER,
        placement=types_pb2.PLACEMENT_STRATEGY_BINPACK,
        update=types_pb2.UpdateStrategy(max_surge=0, max_unavailable=2),
        stop_grace_period_ms=1,
    )
    out = normalize_app_spec(spec)
    assert out.restart_policy == types_pb2.RESTART_POLICY_NEVER
    assert out.placement == types_pb2.PLACEMENT_STRATEGY_BINPACK
    assert (out.update.max_surge, out.update.max_unavailable) == (0, 2)
    assert out.stop_grace_period_ms == 1
    assert not out.HasField("readiness")


def test_capabilities() -> None:
    assert len(LINUX_CAPABILITIES) == 41
    assert LINUX_CAPABILITIES[12] == "NET_ADMIN" and LINUX_CAPABILITIES[21] == "SYS_ADMIN"
    assert canonical_capability("cap_net_raw") == "CAP_NET_RAW"
    assert canonical_capability("NOPE") is None


def test_exports() -> None:
    assert all(hasattr(orch.validation, name) for name in orch.validation.__all__)
