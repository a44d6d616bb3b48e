"""Volumes through a real scheduler with hollow agents: a hostPath is placed only on a node that
allows it (its registration says which), refused with a reason `orch explain` names when none
does, refused at apply when its shape is wrong; and the spec comes back as a manifest that applies
unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.fake_agent import FakeAgent
from tests.fixtures.processes import stop, wait_for
from tests.integration.conftest import instances, orch, start_scheduler

APP = """\
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: 1
  image: rootfs:/nonexistent
  command: [sleep, "1000"]
  volumes:
    - {name: data, hostPath: {path: %(path)s, type: DirectoryOrCreate}}
    - {name: cache, emptyDir: {sizeLimit: 1Mi}}
  volumeMounts:
    - {name: data, mountPath: /data, readOnly: true}
    - {name: cache, mountPath: /cache}
"""


@pytest.fixture
def cluster(etcd, tmp_path: Path) -> Iterator[str]:
    s = start_scheduler(etcd, tmp_path / "scheduler.log", "volumes-0")
    allowed = {"n0": ("/srv/data",), "n1": ("/srv/other", "/var/lib/x"), "n2": ()}
    agents = [FakeAgent(s.address, name, allowed_host_paths=paths) for name, paths in allowed.items()]
    try:
        for a in agents:
            assert a.registered.wait(10)
        yield s.address
    finally:
        for a in agents:
            a.kill()
        stop(s.proc)


def apply(address: str, tmp_path: Path, name: str, path: str) -> Path:
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(APP % {"name": name, "path": path})
    r = orch(address, "apply", str(manifest))
    assert r.returncode == 0, r.stderr
    return manifest


def test_a_host_path_goes_only_to_a_node_that_allows_it(cluster: str, tmp_path: Path) -> None:
    apply(cluster, tmp_path, "web", "/srv/data/web")
    inst = wait_for(lambda: [i for i in instances(cluster) if i["app"] == "web" and i["state"] == "Running"], 20)[0]
    assert inst["node"] == "n0"
    nodes = json.loads(orch(cluster, "get", "nodes", "-o", "json").stdout)
    assert {n["name"]: n["allowedHostPaths"] for n in nodes} == {
        "n0": ["/srv/data"],
        "n1": ["/srv/other", "/var/lib/x"],
        "n2": [],
    }
    e = json.loads(orch(cluster, "explain", inst["name"], "-o", "json").stdout)
    rejected = {n["node"]: n["rejected"] for n in e["nodes"]}
    assert rejected == {
        "n0": None,
        "n1": "node(s) didn't allow the host path",
        "n2": "node(s) didn't allow the host path",
    }


def test_no_node_allows_it_pending_with_the_reason_explain_names(cluster: str, tmp_path: Path) -> None:
    apply(cluster, tmp_path, "nowhere", "/srv/database")  # a sibling of /srv/data, not below it
    pending = wait_for(lambda: [i for i in instances(cluster) if i["app"] == "nowhere" and i["state"] == "Pending"], 20)
    assert pending[0]["reason"] == "Unschedulable", pending
    assert pending[0]["message"] == "0/3 nodes available: 3 node(s) didn't allow the host path", pending
    text = orch(cluster, "explain", pending[0]["name"]).stdout
    assert "Pending: 0/3 nodes available: 3 node(s) didn't allow the host path" in text, text


def test_a_bad_shape_is_refused_at_apply_with_file_and_line(cluster: str, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text((APP % {"name": "bad", "path": "srv/../data"}).replace("/data, readOnly", "/proc/x, readOnly"))
    r = orch(cluster, "apply", str(manifest))
    assert r.returncode != 0
    assert r.stderr.splitlines() == [
        f'{manifest}:9 spec.volumes[0].hostPath.path: "srv/../data" must be an absolute path',
        f'{manifest}:12 spec.volumeMounts[0].mountPath: "/proc/x" must not be /proc, /sys, /dev or below them',
        "nothing was applied",
    ], r.stderr
    assert not [i for i in instances(cluster) if i["app"] == "bad"]


def test_get_o_yaml_applies_back_unchanged(cluster: str, tmp_path: Path) -> None:
    manifest = apply(cluster, tmp_path, "round", "/srv/data/round")
    yaml_text = orch(cluster, "get", "app", "round", "-o", "yaml").stdout
    assert "hostPath: {path: /srv/data/round" in yaml_text or "path: /srv/data/round" in yaml_text, yaml_text
    again = tmp_path / "again.yaml"
    again.write_text(yaml_text)
    assert orch(cluster, "diff", str(again)).returncode == 0  # no difference
    assert orch(cluster, "diff", str(manifest)).returncode == 0
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml_text.replace("readOnly: true", "readOnly: false"))
    r = orch(cluster, "diff", str(changed))
    assert r.returncode == 1 and "-    readOnly: true" in r.stdout, r.stdout
