"""Volumes: the manifest's shape checks, the hostPath rule and the placement filter (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.manifest import ManifestError, load_manifests
from orch.v1 import types_pb2 as pb
from orch.validation import validate_app_spec
from orch.volumes import allowed_by, mount_path_problem
from scheduler.placement import Unschedulable, node_views, place, request_for
from scheduler.placement.explain import verdicts
from scheduler.placement.filters import first_reject
from tests.factories import make_node, make_snapshot, make_spec

HEAD = "apiVersion: orch/v1\nkind: App\nmetadata: {name: web}\nspec:\n  image: busybox\n"


def problems(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "app.yaml"
    path.write_text(HEAD + body)
    try:
        load_manifests([path])
    except ManifestError as e:
        return [p.removeprefix(f"{path}:") for p in e.problems]
    return []


def test_a_good_manifest_loads(tmp_path: Path) -> None:
    body = (
        "  volumes:\n"
        "    - {name: cache, emptyDir: {}}\n"
        "    - {name: shm, emptyDir: {medium: Memory, sizeLimit: 16Mi}}\n"
        "    - {name: data, hostPath: {path: /srv/data, type: DirectoryOrCreate}}\n"
        "  volumeMounts:\n"
        "    - {name: cache, mountPath: /cache}\n"
        "    - {name: data, mountPath: /data, readOnly: true}\n"
    )
    path = tmp_path / "app.yaml"
    path.write_text(HEAD + body)
    (app,) = load_manifests([path])
    cache, shm, data = app.spec.volumes
    assert cache.HasField("empty_dir") and not cache.empty_dir.medium
    assert (shm.empty_dir.medium, shm.empty_dir.size_limit_bytes) == ("Memory", 16 << 20)
    assert (data.host_path.path, data.host_path.type) == ("/srv/data", "DirectoryOrCreate")
    assert [(m.name, m.mount_path, m.read_only) for m in app.spec.volume_mounts] == [
        ("cache", "/cache", False),
        ("data", "/data", True),
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "  volumes: [{name: a, hostPath: {path: srv/data}}]\n",
            '6 spec.volumes[0].hostPath.path: "srv/data" must be an absolute path',
        ),
        (
            "  volumes: [{name: a, hostPath: {path: /srv/../etc}}]\n",
            '6 spec.volumes[0].hostPath.path: "/srv/../etc" must be a plain absolute path: '
            'no "..", "." or empty components, no trailing "/"',
        ),
        (
            '  volumes: [{name: a, hostPath: {path: "/srv/\\0x"}}]\n',
            '6 spec.volumes[0].hostPath.path: "/srv/\\x00x" must not contain a NUL byte (at offset 5)',
        ),
        (
            "  volumes: [{name: a, hostPath: {path: /srv, type: File}}]\n",
            '6 spec.volumes[0].hostPath.type: must be Directory or DirectoryOrCreate, got "File"',
        ),
        (
            "  volumes: [{name: a, emptyDir: {medium: disk}}]\n",
            '6 spec.volumes[0].emptyDir.medium: must be "Memory" or left out (the node\'s disk), got "disk"',
        ),
        (
            "  volumes: [{name: a, emptyDir: {sizeLimit: 1GB}}]\n",
            '6 spec.volumes[0].emptyDir.sizeLimit: "1GB" is not a quantity; did you mean 1Gi?',
        ),
        ("  volumes: [{name: a}]\n", "6 spec.volumes[0]: needs one of emptyDir, hostPath or secret"),
        (
            "  volumes: [{name: a, emptyDir: {}, hostPath: {path: /srv}}]\n",
            "6 spec.volumes[0]: set only one of emptyDir, hostPath or secret, not emptyDir and hostPath",
        ),
        (
            "  volumes: [{name: A_b, emptyDir: {}}]\n",
            '6 spec.volumes[0].name: "A_b" is not a DNS label (lowercase letters, digits, "-")',
        ),
        (
            "  volumes: [{name: a, emptyDir: {}}, {name: a, emptyDir: {}}]\n",
            '6 spec.volumes[1].name: "a" is already used by spec.volumes[0]',
        ),
        (
            "  volumeMounts: [{name: nope, mountPath: /x}]\n",
            '6 spec.volumeMounts[0].name: no volume named "nope" in spec.volumes',
        ),
        ("  volumeMounts: [{name: a}]\n", "6 spec.volumeMounts[0].mountPath: required field is missing"),
    ],
    ids=["relative", "dotdot", "nul", "type", "medium", "size", "none", "both", "name", "dup", "unknown", "missing"],
)
def test_bad_volumes_name_the_field_and_line(tmp_path: Path, body: str, expected: str) -> None:
    found = problems(tmp_path, body)
    assert expected in found, found


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/data", True),
        ("/var/lib/app", True),
        ("/", False),
        ("/proc", False),
        ("/proc/sys", False),
        ("/sys/fs/cgroup", False),
        ("/dev", False),
        ("/dev/shm", False),
        ("/devices", True),  # a prefix of the name is not the directory
        ("/etc/hosts", False),
        ("/etc/app", True),
        ("data", False),
        ("/data/", False),
        ("/data//x", False),
        ("/data/./x", False),
        ("/data/../etc", False),
    ],
)
def test_mount_paths(path: str, ok: bool) -> None:
    assert (mount_path_problem(path) is None) == ok


def test_duplicate_and_forbidden_mount_paths_are_reported_per_mount() -> None:
    spec = make_spec(volumes=[pb.Volume(name="a", empty_dir=pb.EmptyDirVolume())])
    spec.volume_mounts.add(name="a", mount_path="/x")
    spec.volume_mounts.add(name="a", mount_path="/x")
    spec.volume_mounts.add(name="a", mount_path="/proc/self")
    assert [str(e) for e in validate_app_spec(spec)] == [
        "spec.volumeMounts[1].mountPath: is already mounted by spec.volumeMounts[0]",
        'spec.volumeMounts[2].mountPath: "/proc/self" must not be /proc, /sys, /dev or below them',
    ]


@pytest.mark.parametrize(
    ("path", "allowed", "by"),
    [
        ("/srv/data", ("/srv/data",), "/srv/data"),
        ("/srv/data/web", ("/tmp", "/srv/data"), "/srv/data"),
        ("/srv/database", ("/srv/data",), None),  # a sibling sharing a prefix
        ("/srv", ("/srv/data",), None),  # above it
        ("/anything", ("/",), "/"),
        ("/srv/data", (), None),
    ],
)
def test_allowed_by(path: str, allowed: tuple[str, ...], by: str | None) -> None:
    assert allowed_by(path, allowed) == by


def host_path_spec(path: str) -> pb.AppSpec:
    return make_spec(replicas=1, volumes=[pb.Volume(name="d", host_path=pb.HostPathVolume(path=path))])


def node_allowing(name: str, *paths: str) -> pb.Node:
    node = make_node(name)
    node.allowed_host_paths.extend(paths)
    return node


def test_the_filter_rejects_nodes_that_do_not_allow_the_host_path() -> None:
    nodes = [node_allowing("a"), node_allowing("b", "/srv/data"), node_allowing("c", "/srv/other")]
    views = node_views(make_snapshot(nodes=nodes))
    spec = host_path_spec("/srv/data/web")
    rejects = {n: first_reject(request_for(spec), v) for n, v in views.items()}
    assert {n: r.reason if r else None for n, r in rejects.items()} == {
        "a": "node(s) didn't allow the host path",
        "b": None,
        "c": "node(s) didn't allow the host path",
    }
    assert first_reject(request_for(make_spec()), views["a"]) is None  # no hostPath: any node


def test_pending_reason_and_explain_name_the_host_path() -> None:
    views = node_views(make_snapshot(nodes=[node_allowing("a"), node_allowing("b", "/srv/other")]))
    req = request_for(host_path_spec("/srv/data"))
    result = place(req, list(views.values()))
    assert isinstance(result, Unschedulable)
    assert result.message == "0/2 nodes available: 2 node(s) didn't allow the host path"
    assert [v.rejected for v in verdicts(req, list(views.values()))] == ["node(s) didn't allow the host path"] * 2
