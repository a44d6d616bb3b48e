"""spec.service: the manifest field, its defaults and its validation (file, line, field), and
that changing it rolls no instance (issue 11 item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.manifest import ManifestError, load_manifests
from orch.v1 import types_pb2
from orch.validation import normalize_app_spec, validate_app_spec
from scheduler.api import runtime_part

APP = "apiVersion: orch/v1\nkind: App\nmetadata:\n  name: web\nspec:\n  image: busybox\n"


def load(tmp_path: Path, extra: str) -> types_pb2.AppSpec:
    path = tmp_path / "app.yaml"
    path.write_text(APP + extra)
    [app] = load_manifests([path])
    return app.spec


def problems(tmp_path: Path, extra: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load(tmp_path, extra)
    return [p.replace(f"{tmp_path / 'app.yaml'}", "app.yaml") for p in info.value.problems]


def test_target_port_and_protocol_default_as_in_kubernetes(tmp_path: Path) -> None:
    assert not load(tmp_path, "").HasField("service")
    assert load(tmp_path, "  service: {port: 80, targetPort: 8080}\n").service == types_pb2.ServicePort(
        port=80, target_port=8080, protocol="tcp"
    )
    assert load(tmp_path, "  service: {port: 53, protocol: UDP}\n").service == types_pb2.ServicePort(
        port=53, target_port=53, protocol="udp"
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "  service: {targetPort: 8080}\n",
            "app.yaml:7 spec.service.port: required field is missing (the port the app's virtual IP listens on)",
        ),
        ("  service:\n    port: 80\n    targetPort: 70000\n", "app.yaml:9 spec.service.targetPort: must be between"),
        ("  service:\n    port: 80\n    protocol: sctp\n", "app.yaml:9 spec.service.protocol: must be tcp or udp"),
        ("  service:\n    port: 80\n    targtPort: 8080\n", "app.yaml:9 spec.service.targtPort: unknown field; did"),
        ("  service: 80\n", "app.yaml:7 spec.service: expected a mapping, got 80"),
        ("  service: {port: http}\n", 'app.yaml:7 spec.service.port: expected an integer, got "http"'),
    ],
)
def test_bad_services_name_file_line_and_field(tmp_path: Path, extra: str, expected: str) -> None:
    [problem] = problems(tmp_path, extra)
    assert problem.startswith(expected), problem


def test_the_scheduler_checks_it_too() -> None:
    spec = types_pb2.AppSpec(
        name="web", replicas=1, image="busybox", service=types_pb2.ServicePort(port=-1, target_port=80)
    )
    assert [str(e) for e in validate_app_spec(normalize_app_spec(spec))] == [
        "spec.service.port: must be between 1 and 65535, got -1",
    ]


def test_a_new_service_rolls_no_instance() -> None:
    before = types_pb2.AppSpec(name="web", replicas=1, image="busybox")
    after = types_pb2.AppSpec(name="web", replicas=1, image="busybox", service=types_pb2.ServicePort(port=80))
    assert runtime_part(before) == runtime_part(after)
