"""Attacks from an image and from a manifest (issue 9 items 1, 7, 8) on a real `orch up`.

Malicious images pushed to a real docker-registry (and one oci-archive on the node) are applied:
each instance fails with a reason naming the bad digest or the bad /etc/passwd, while the agent
stays healthy (its other instances keep running, the nodes stay Ready) and no host file is
touched. A NUL byte in env is refused by `orch apply` (file:line) and by the API, nothing stored.
An app without a pids limit gets the node's default, and its spec.json is private to root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.client import Client, CliError
from node.images.build import Entry, tar_entries
from node.images.digest import sha256_digest
from orch.tls import TlsFiles
from orch.v1 import api_pb2 as api
from orch.v1 import types_pb2 as pb
from tests.e2e.cluster import instances as all_instances
from tests.e2e.cluster import orch
from tests.fixtures.oci_image import tar_layout
from tests.fixtures.processes import wait_for
from tests.fixtures.registry import Registry, start_registry
from tests.images.crafted import crafted_layout

pytestmark = pytest.mark.root

Info = dict[str, Any]
PREFIX = "atk-img-"
# What each image does, and the reason its instance must show (state, reasons, words of the message).
PULL_FAILED = ("Pulling", ("ErrImagePull", "ImagePullBackOff"))
START_FAILED = ("Failed", ("StartError", "CrashLoopBackOff"))
EXPECTED = {
    "diffid": (*PULL_FAILED, 'config: diff_id "sha256:/etc" is not sha256:<64 hex>'),
    "mismatch": (*PULL_FAILED, "uncompressed content hashes to"),
    "index": (*PULL_FAILED, 'index.json: manifests[0] digest "sha256:../../../etc/passwd" is not sha256:<64 hex>'),
    "fifo": (*START_FAILED, "the image's /etc/passwd is a FIFO, not a regular file"),
    "zero": (*START_FAILED, "user 'app' not found in the image's /etc/passwd"),
}
APP = """\
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: %(replicas)d
  image: %(image)s
  command: ["sleep", "1000"]
  stopGracePeriod: 1s
"""


def layer(*entries: Entry) -> bytes:
    return tar_entries([Entry("bin", is_dir=True, mode=0o755), Entry("etc", is_dir=True, mode=0o755), *entries])


@pytest.fixture(scope="module")
def evil_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Image references by attack name: four in a real registry, one oci-archive on this host."""
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        pytest.skip("docker-registry and skopeo are not installed")
    tmp = tmp_path_factory.mktemp("evil-images")
    plain = layer(Entry("etc/motd", data=b"hi\n"))

    def set_ids(*ids: str) -> Any:
        return lambda cfg: cfg["rootfs"].__setitem__("diff_ids", list(ids))

    layouts = {
        "diffid": crafted_layout(tmp / "diffid", "1", [plain], config=set_ids("sha256:/etc"), compress=True),
        "mismatch": crafted_layout(tmp / "mismatch", "1", [plain], config=set_ids(sha256_digest(b"x")), compress=True),
        "fifo": crafted_layout(tmp / "fifo", "1", [layer(Entry("etc/passwd", kind=tarfile.FIFOTYPE))], compress=True),
        "zero": crafted_layout(tmp / "zero", "1", [layer(Entry("etc/passwd", link="/dev/zero"))], compress=True),
    }
    bad_index = crafted_layout(
        tmp / "index",
        "1",
        [plain],
        index=lambda i: i["manifests"][0].__setitem__("digest", "sha256:../../../etc/passwd"),
    )
    registry: Registry = start_registry()
    try:
        refs = {name: registry.push(path, "1", f"evil/{name}") for name, path in layouts.items()}
        refs["index"] = f"oci-archive:{tar_layout(bad_index, tmp / 'index.tar')}:1"
        yield refs
    finally:
        registry.stop()


def mine(info: Info, app: str | None = None) -> list[dict[str, Any]]:
    return [i for i in all_instances(info) if i["app"].startswith(PREFIX) and (app is None or i["app"] == app)]


def apply(info: Info, name: str, image: str, replicas: int = 1, extra: str = "") -> None:
    r = orch(info, "apply", "-", stdin=APP % {"name": name, "image": image, "replicas": replicas} + extra)
    assert r.returncode == 0, r.stderr


def delete_mine(info: Info) -> None:
    apps = [a["name"] for a in json.loads(orch(info, "get", "apps", "-o", "json").stdout)]
    for app in apps:
        if app.startswith(PREFIX):
            assert orch(info, "delete", "app", app).returncode == 0
    wait_for(lambda: not mine(info), 30, "our instances removed")


def failed(info: Info, app: str, state: str, reasons: tuple[str, ...], words: str) -> Callable[[], Any]:
    """A wait_for check: the app's one instance is in `state` for one of `reasons`, its message has `words`."""

    def check() -> dict[str, Any] | None:
        insts = mine(info, app)
        ok = len(insts) == 1 and insts[0]["state"] == state and insts[0]["reason"] in reasons
        return insts[0] if ok and words in (insts[0]["message"] or "") else None

    return check


def host_files() -> dict[str, tuple[int, int, str]]:
    """(inode, mtime, content hash) of the host files an image attack would reach for."""
    out = {}
    for path in ("/etc", "/etc/passwd", "/etc/shadow", "/etc/group"):
        st = os.stat(path)
        content = "" if stat.S_ISDIR(st.st_mode) else hashlib.sha256(Path(path).read_bytes()).hexdigest()
        out[path] = (st.st_ino, st.st_mtime_ns, content)
    return out


def agent_state_dirs(info: Info) -> list[Path]:
    dirs = []
    for proc in info["processes"]:
        if proc["role"] == "agent":
            argv = proc["argv"]
            dirs.append(Path(argv[argv.index("--state-dir") + 1]))
    assert len(dirs) == 2, info["processes"]
    return dirs


def test_malicious_images_fail_clearly_and_the_agent_carries_on(
    cluster: Info, evil_images: dict[str, str], busybox_rootfs: Path
) -> None:
    info = cluster
    before = host_files()
    apply(info, f"{PREFIX}ok", f"rootfs:{busybox_rootfs}", replicas=2)

    def control_running() -> list[dict[str, Any]] | None:
        insts = mine(info, f"{PREFIX}ok")
        return insts if len(insts) == 2 and all(i["state"] == "Running" for i in insts) else None

    control = wait_for(control_running, 30, "the control app Running on both nodes")
    try:
        for name, image in evil_images.items():
            extra = "  user: app\n" if name == "zero" else ""
            apply(info, f"{PREFIX}{name}", image, extra=extra)
        for name, (state, reasons, words) in EXPECTED.items():
            inst = wait_for(
                failed(info, f"{PREFIX}{name}", state, reasons, words), 30, f"{name}: {state} naming ({words})"
            )
            assert inst["startedAt"] is None and inst["pid"] is None, inst

        # The agents carried on: the same control instances still run, the nodes are Ready.
        still = sorted((i["name"], i["pid"], i["restarts"]) for i in control_running() or [])
        assert still == sorted((i["name"], i["pid"], i["restarts"]) for i in control)
        for proc in info["processes"]:
            if proc["role"] == "agent":
                os.kill(proc["pid"], 0)
        nodes = json.loads(orch(info, "get", "nodes", "-o", "json").stdout)
        assert len(nodes) == 2 and all(n["state"] == "Ready" for n in nodes), nodes
        # Nothing of the host was touched, and no image store took a path for a layer.
        assert host_files() == before
        for state_dir in agent_state_dirs(info):
            for entry in (state_dir / "images" / "layers").iterdir():
                assert len(entry.name) == 64 and not entry.is_symlink() and entry.is_dir(), entry
    finally:
        delete_mine(info)


def test_node_default_pids_limit_and_private_specs(cluster: Info, busybox_rootfs: Path) -> None:
    info = cluster
    app = f"{PREFIX}limits"
    apply(info, app, f"rootfs:{busybox_rootfs}", extra="  env: {DB_PASSWORD: hunter2}\n")
    try:
        inst = wait_for(lambda: next((i for i in mine(info, app) if i["state"] == "Running"), None), 30, "Running")
        # No resources.pids in the app: the node's default (orch node --default-pids-limit) applies.
        assert pids_max(inst["pid"]) == "4096"
        # The spec holds the app's env: root only, at every level.
        [state_dir] = [d for d in agent_state_dirs(info) if (d / "containers" / inst["name"]).is_dir()]
        spec = state_dir / "containers" / inst["name"] / "spec.json"
        assert "hunter2" in spec.read_text()
        for path, mode in ((state_dir, 0o700), (state_dir / "containers", 0o700), (spec.parent, 0o700), (spec, 0o600)):
            assert stat.S_IMODE(path.stat().st_mode) == mode, path
        if shutil.which("setpriv"):
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(spec)]
            denied = subprocess.run(nobody, capture_output=True, text=True)
            assert denied.returncode != 0 and "hunter2" not in denied.stdout, denied
    finally:
        delete_mine(info)


def pids_max(pid: int) -> str:
    """pids.max of the cgroup that `pid` is in (cgroup v1 pids hierarchy, or v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "pids" in controllers.split(","):
            return (Path("/sys/fs/cgroup/pids") / path.lstrip("/") / "pids.max").read_text().strip()
    v2 = next(line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines() if line.startswith("0::"))
    return (Path("/sys/fs/cgroup") / v2[3:].lstrip("/") / "pids.max").read_text().strip()


def test_nul_in_env_is_refused_at_apply(cluster: Info, tmp_path: Path) -> None:
    info = cluster
    app = f"{PREFIX}nul"
    manifest = tmp_path / "nul.yaml"
    manifest.write_text(APP % {"name": app, "image": "busybox", "replicas": 1} + '  env:\n    SECRET: "a\\0b"\n')
    r = orch(info, "apply", str(manifest))
    assert r.returncode != 0
    assert f"{manifest}:10 spec.env.SECRET: must not contain a NUL byte (at offset 1)" in r.stderr, r.stderr
    # An API client that skips the CLI's checks is refused by the scheduler itself.
    spec = pb.AppSpec(name=app, replicas=1, image="busybox", command=["sleep", "1000"], env={"SECRET": "a\0b"})
    client = Client(info["schedulers"], tls=TlsFiles.in_dir(Path(info["tlsDir"]), "admin").load())
    with pytest.raises(CliError, match=r"spec\.env\.SECRET: must not contain a NUL byte"):
        client.call(lambda stub: stub.Apply(api.ApplyRequest(apps=[spec]), timeout=10))
    apps = json.loads(orch(info, "get", "apps", "-o", "json").stdout)
    assert app not in [a["name"] for a in apps]
    assert not mine(info, app)
