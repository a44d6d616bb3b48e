"""Registry images end to end: a real docker-registry, a two-layer image pushed by skopeo, and
`orch up` agents pulling and running it with the image's own Cmd, Env and WorkingDir; an unknown
tag stays Pulling (ErrImagePull, then ImagePullBackOff) without hurting the agent."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import instances as all_instances
from tests.e2e.cluster import orch, orch_up
from tests.fixtures.oci_image import BUSYBOX, build_busybox_layout
from tests.fixtures.processes import wait_for
from tests.fixtures.registry import Registry, start_registry

pytestmark = pytest.mark.root

Info = dict[str, Any]
# The image decides everything: no command in the manifest. Layer 2 wrote /etc/motd; Env has GREETING.
CMD = ("sh", "-c", 'echo "$GREETING from $(pwd)"; cat /etc/motd; exec sleep 1000')

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: %(replicas)d
  image: %(image)s
  resources: {cpu: 50m, memory: 16Mi, pids: 16}
  stopGracePeriod: 1s
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The two-layer busybox test image with CMD, pushed to a fresh loopback registry: its reference."""
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        pytest.skip("docker-registry and skopeo are not installed")
    layout = tmp_path_factory.mktemp("oci") / "layout"
    build_busybox_layout(layout, "1", cmd=CMD)
    registry: Registry = start_registry()
    try:
        yield registry.push(layout, "1", "orch/e2e")
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Info]:
    tmp_path = tmp_path_factory.mktemp("images-cluster")
    with orch_up(tmp_path, "--nodes", "2", cidr_start=240) as info:
        yield info
    assert not (tmp_path / "up" / "nodes").exists()  # agent state, image stores included


def instances(info: Info, app: str | None = None) -> list[dict[str, Any]]:
    return [i for i in all_instances(info) if app is None or i["app"] == app]


def apply(info: Info, name: str, image: str, replicas: int = 1) -> None:
    r = orch(info, "apply", "-", stdin=APP % {"name": name, "image": image, "replicas": replicas})
    assert r.returncode == 0, r.stderr


def shims_of(state_dir: str) -> list[int]:
    """PIDs of this cluster's container shims."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if state_dir in cmd and ("node.runtime.shim" in cmd or cmd.startswith("orch-shim ")):
                pids.append(int(p.name))
    return pids


def test_registry_image_runs_with_its_config_and_a_missing_tag_backs_off(cluster: Info, image: str) -> None:
    info = cluster
    apply(info, "greet", image, replicas=2)

    def both_running() -> list[dict[str, Any]] | None:
        insts = instances(info, "greet")
        return insts if len(insts) == 2 and all(i["state"] == "Running" for i in insts) else None

    insts = wait_for(both_running, 30, "2 greet instances Running")
    assert {i["node"] for i in insts} == {"node-0", "node-1"}  # each node pulled the image
    assert all(i["image"] == image and i["ip"] for i in insts)
    for inst in insts:

        def logged(name: str = inst["name"]) -> str | None:
            r = orch(info, "logs", name)
            return r.stdout if r.returncode == 0 and r.stdout.count("\n") >= 2 else None

        # Cmd ran (no command in the manifest), with the image's Env and WorkingDir, on both layers.
        assert wait_for(logged, 10, f"logs of {inst['name']}") == "hello from /data\nhello from layer 2\n"

    missing = image.rsplit(":", 1)[0] + ":no-such-tag"
    apply(info, "missing", missing)

    def pull_failed(reasons: tuple[str, ...]) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            insts = instances(info, "missing")
            ok = len(insts) == 1 and insts[0]["state"] == "Pulling" and insts[0]["reason"] in reasons
            return insts[0] if ok else None

        return check

    failed = wait_for(pull_failed(("ErrImagePull", "ImagePullBackOff")), 20, "missing: a failed pull")
    assert missing in (failed["message"] or ""), failed
    assert failed["ip"] is None and failed["startedAt"] is None
    # It keeps retrying, with backoff, and the agent carries on with everything else.
    wait_for(pull_failed(("ImagePullBackOff",)), 20, "missing: ImagePullBackOff")
    agents = [p for p in info["processes"] if p["role"] == "agent"]
    for agent in agents:
        os.kill(agent["pid"], 0)  # still alive
    nodes = json.loads(orch(info, "get", "nodes", "-o", "json").stdout)
    assert len(nodes) == 2 and all(n["state"] == "Ready" for n in nodes), nodes
    assert sorted(i["name"] for i in instances(info, "greet") if i["state"] == "Running") == sorted(
        i["name"] for i in insts
    )
    apps = {a["name"]: a for a in json.loads(orch(info, "get", "apps", "-o", "json").stdout)}
    assert apps["greet"]["image"] == image and apps["greet"]["ready"] == 2
    assert apps["missing"]["image"] == missing and apps["missing"]["ready"] == 0

    for app in ("greet", "missing"):
        r = orch(info, "delete", "app", app)
        assert r.returncode == 0, r.stderr
    wait_for(lambda: not instances(info), 20, "all instances removed")
    wait_for(lambda: not shims_of(info["stateDir"]), 10, "no container processes")
    assert json.loads(orch(info, "get", "apps", "-o", "json").stdout) == []
