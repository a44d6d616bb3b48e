"""spec.seccomp: the manifest field, its validation and normalization, and what the agent hands
the runtime (issue 9: per-app `seccomp: unconfined`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.client import CliError
from cli.commands import agent_config
from cli.manifest import ManifestError, load_manifests
from node.images import PreparedImage
from node.images.process import ImageConfig
from node.runtime.model import SECCOMP_DEFAULT, SECCOMP_UNCONFINED
from node.worker import container_config
from orch.v1 import types_pb2
from orch.validation import normalize_app_spec, validate_app_spec

APP = "apiVersion: orch/v1\nkind: App\nmetadata:\n  name: web\nspec:\n  image: busybox\n"


def load(tmp_path: Path, extra: str) -> types_pb2.AppSpec:
    path = tmp_path / "app.yaml"
    path.write_text(APP + extra)
    [app] = load_manifests([path])
    return app.spec


@pytest.mark.parametrize(
    ("text", "stored"), [("", ""), ("  seccomp: Unconfined\n", "unconfined"), ("  seccomp: default\n", "")]
)
def test_manifest_values(tmp_path: Path, text: str, stored: str) -> None:
    assert load(tmp_path, text).seccomp == stored


def test_an_unknown_mode_names_file_line_and_field(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load(tmp_path, "  seccomp: strict\n")
    assert info.value.problems == [
        f'{tmp_path / "app.yaml"}:7 spec.seccomp: "strict" is not a seccomp mode: '
        'use "unconfined" (or "default", the node\'s profile)'
    ]


def test_the_scheduler_checks_it_too() -> None:
    spec = types_pb2.AppSpec(name="web", replicas=1, image="busybox", seccomp="off")
    assert [str(e) for e in validate_app_spec(normalize_app_spec(spec))] == [
        'spec.seccomp: "off" is not a seccomp mode: use "unconfined" (or "default", the node\'s profile)'
    ]
    assert normalize_app_spec(types_pb2.AppSpec(seccomp="DEFAULT")).seccomp == ""  # no new generation


@pytest.mark.parametrize(("mode", "runtime_mode"), [("", SECCOMP_DEFAULT), ("unconfined", SECCOMP_UNCONFINED)])
def test_the_agent_maps_it_for_the_runtime(tmp_path: Path, mode: str, runtime_mode: str) -> None:
    inst = types_pb2.Instance(name="web-abcde", app="web", spec=types_pb2.AppSpec(image="x", seccomp=mode))
    image = PreparedImage("x", "sha256:" + "0" * 64, (tmp_path,), ImageConfig(cmd=("true",)))
    assert container_config(inst, image, tmp_path).seccomp == runtime_mode


def test_orch_node_checks_its_profile_at_start(tmp_path: Path) -> None:
    args = ("n1", tmp_path / "state", ("127.0.0.1:7070",), (), "", "", "", "", "")
    assert agent_config(*args).seccomp_profile.name == "default.json"
    mine = tmp_path / "mine.json"
    mine.write_text('{"defaultAction": "SCMP_ACT_ALLOW"}')
    assert agent_config(*args, seccomp_profile=mine).seccomp_profile == mine
    mine.write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL"},'
        ' {"names": ["read"], "action": "SCMP_ACT_ERRNO"}]}'
    )
    with pytest.raises(CliError, match=r"--seccomp-profile: seccomp profile .*mine.json: syscalls\[1\]: read already"):
        agent_config(*args, seccomp_profile=mine)
    with pytest.raises(CliError, match="cannot read it"):
        agent_config(*args, seccomp_profile=tmp_path / "missing.json")
