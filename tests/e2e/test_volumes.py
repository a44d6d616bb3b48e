"""Volumes on a real `orch up` (issue 13 item 5): emptyDir and hostPath mounts visible inside, a
write in a hostPath read on the host, readOnly enforced, an emptyDir kept across a container
restart and gone with its instance (tmpfs unmounted), a hostPath no node allows refused at
placement with the reason `orch explain` names, and a disk emptyDir over its sizeLimit evicted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import instances, orch, orch_up
from tests.fixtures.processes import wait_for

pytestmark = pytest.mark.root

VOLS = """
apiVersion: orch/v1
kind: App
metadata: {name: vols}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command:
    - sh
    - -c
    - echo run >> /cache/runs; while [ ! -f /cache/stop ]; do sleep 1; done; busybox rm /cache/stop; exit 3
  stopGracePeriod: 1s
  volumes:
    - {name: cache, emptyDir: {}}
    - {name: mem, emptyDir: {medium: Memory, sizeLimit: 1Mi}}
    - {name: data, hostPath: {path: %(allowed)s/web, type: DirectoryOrCreate}}
    - {name: conf, hostPath: {path: %(allowed)s/conf}}
  volumeMounts:
    - {name: cache, mountPath: /cache}
    - {name: mem, mountPath: /mem}
    - {name: data, mountPath: /data}
    - {name: conf, mountPath: /etc/app, readOnly: true}
"""

FORBIDDEN = """
apiVersion: orch/v1
kind: App
metadata: {name: forbidden}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  volumes: [{name: etc, hostPath: {path: /etc}}]
  volumeMounts: [{name: etc, mountPath: /host-etc, readOnly: true}]
"""

HOG = """
apiVersion: orch/v1
kind: App
metadata: {name: hog}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["sh", "-c", "busybox dd if=/dev/zero of=/scratch/f bs=1024 count=2048; exec sleep 100000"]
  restartPolicy: Never
  stopGracePeriod: 1s
  volumes: [{name: scratch, emptyDir: {sizeLimit: 1Mi}}]
  volumeMounts: [{name: scratch, mountPath: /scratch}]
"""


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    top = tmp_path_factory.mktemp("hostpaths") / "allowed"
    (top / "conf").mkdir(parents=True)
    (top / "conf" / "setting").write_text("from the host\n")
    return top


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path, allowed: Path) -> Iterator[dict[str, Any]]:
    with orch_up(tmp_path_factory.mktemp("cluster"), "--nodes", "2", "--allow-host-path", str(allowed)) as info:
        yield info


def apply(info: dict[str, Any], tmp_path: Path, text: str) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(text)
    r = orch(info, "apply", str(path))
    assert r.returncode == 0, r.stderr


def one(info: dict[str, Any], app: str, **want: Any) -> dict[str, Any]:
    found = [i for i in instances(info) if i["app"] == app and all(i.get(k) == v for k, v in want.items())]
    return found[0] if found else {}


def sh(info: dict[str, Any], inst: str, script: str) -> str:
    r = orch(info, "exec", inst, "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    return r.stdout


def mounted(text: str) -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if text in line]


def test_empty_dir_and_host_path_mounts(
    cluster: dict[str, Any], busybox_rootfs: Path, allowed: Path, tmp_path: Path
) -> None:
    apply(cluster, tmp_path, VOLS % {"root": busybox_rootfs, "allowed": allowed})
    inst = wait_for(lambda: one(cluster, "vols", state="Running"), 30, "vols running")
    name = inst["name"]
    # hostPath: what the host wrote is there, what the container writes is on the host
    assert sh(cluster, name, "cat /etc/app/setting; echo hi > /data/hello") == "from the host\n"
    assert (allowed / "web" / "hello").read_text() == "hi\n"
    # readOnly: no write, and no way to remount it writable
    out = sh(cluster, name, "busybox touch /etc/app/x 2>&1; mount -o remount,rw /etc/app 2>&1 || echo REFUSED")
    lines = out.splitlines()
    assert (lines[0], lines[-1]) == ("touch: /etc/app/x: Read-only file system", "REFUSED"), out
    assert not (allowed / "conf" / "x").exists()
    # medium Memory: a tmpfs of its sizeLimit
    out = sh(
        cluster,
        name,
        "grep ' /mem ' /proc/mounts; busybox dd if=/dev/zero of=/mem/big bs=1024 count=2048 2>&1;busybox rm /mem/big",
    )
    assert out.startswith("tmpfs /mem tmpfs ") and "No space left on device" in out, out
    # the emptyDir is the node's, per instance
    state = Path(cluster["stateDir"]) / "nodes" / inst["node"] / "volumes" / name
    assert (state / "cache" / "runs").read_text() == "run\n"
    assert mounted(str(state / "mem"))  # the tmpfs, on the host: it outlives the container

    # A container restart keeps both emptyDirs (as a pod's survive its container's restarts)
    sh(cluster, name, "echo m > /mem/m; echo c > /cache/c; busybox touch /cache/stop")
    wait_for(lambda: one(cluster, "vols", state="Running", restarts=1), 30, "a restart")
    assert sh(cluster, name, "cat /cache/runs /mem/m /cache/c") == "run\nrun\nm\nc\n"

    # Deleted with its instance: the directory, and the tmpfs unmounted
    assert orch(cluster, "delete", "app", "vols").returncode == 0
    wait_for(lambda: not one(cluster, "vols"), 30, "vols removed")
    wait_for(lambda: not state.exists(), 10, "the emptyDirs removed")
    assert not mounted(str(state))
    assert (allowed / "web" / "hello").exists()  # a hostPath is the node's: it stays


def test_a_host_path_no_node_allows_is_refused_at_placement(
    cluster: dict[str, Any], busybox_rootfs: Path, tmp_path: Path
) -> None:
    apply(cluster, tmp_path, FORBIDDEN % {"root": busybox_rootfs})
    pending = wait_for(lambda: one(cluster, "forbidden", state="Pending"), 30, "forbidden pending")
    reason = "0/2 nodes available: 2 node(s) didn't allow the host path"
    assert pending["message"] == reason, pending
    explained = json.loads(orch(cluster, "explain", pending["name"], "-o", "json").stdout)
    assert explained["summary"] == f"Pending: {reason}"
    assert {n["rejected"] for n in explained["nodes"]} == {"node(s) didn't allow the host path"}
    assert reason in orch(cluster, "explain", pending["name"]).stdout
    assert orch(cluster, "delete", "app", "forbidden").returncode == 0
    wait_for(lambda: not one(cluster, "forbidden"), 30, "forbidden removed")


def test_a_bad_host_path_is_refused_at_apply(cluster: dict[str, Any], busybox_rootfs: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text((FORBIDDEN % {"root": busybox_rootfs}).replace("path: /etc", "path: ../etc"))
    r = orch(cluster, "apply", str(path))
    assert r.returncode != 0
    assert f'{path}:9 spec.volumes[0].hostPath.path: "../etc" must be an absolute path' in r.stderr, r.stderr


def test_a_disk_empty_dir_over_its_size_limit_is_evicted(
    cluster: dict[str, Any], busybox_rootfs: Path, tmp_path: Path
) -> None:
    apply(cluster, tmp_path, HOG % {"root": busybox_rootfs})
    evicted = wait_for(lambda: one(cluster, "hog", reason="Evicted"), 60, "hog evicted")
    assert evicted["state"] == "Failed"
    assert evicted["message"].startswith('Usage of EmptyDir volume "scratch" exceeds the limit "1Mi"'), evicted
    assert orch(cluster, "delete", "app", "hog").returncode == 0
    wait_for(lambda: not one(cluster, "hog"), 30, "hog removed")
