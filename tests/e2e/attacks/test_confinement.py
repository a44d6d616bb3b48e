"""A container against the kernel, on a real `orch up` (issue 9 items 5 and 6): the seccomp
filter denies keyctl, unshare(CLONE_NEWUSER) and bpf with EPERM; `seccomp: unconfined` opts
out; with capabilities.add [MKNOD] an app can make a node for a host disk but not read it.

The apps run tests/fixtures/sysprobe.c (raw syscalls, one result per line) from a rootfs image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import instances, orch
from tests.fixtures.devices import readable_block_device
from tests.fixtures.processes import wait_for
from tests.fixtures.rootfs import SysprobeUnavailable, build_sysprobe_rootfs

pytestmark = pytest.mark.root

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  image: rootfs:%(root)s
  command: %(command)s
  restartPolicy: Never
  stopGracePeriod: 1s
"""


@pytest.fixture(scope="module")
def probe_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_sysprobe_rootfs(tmp_path_factory.mktemp("confine-rootfs"))
    except SysprobeUnavailable as exc:
        pytest.skip(f"sysprobe: {exc}")


def ours(info: dict[str, Any], app: str) -> list[dict[str, Any]]:
    return [i for i in instances(info) if i["app"] == app]


def run_app(info: dict[str, Any], root: Path, name: str, command: list[str], extra: str = "") -> list[str]:
    """Apply a run-once app, wait until it has ended, return its output lines, delete it."""
    doc = APP % {"name": name, "root": root, "command": json.dumps(command)} + extra
    r = orch(info, "apply", "-", stdin=doc)
    assert r.returncode == 0, r.stderr
    try:
        ended = wait_for(
            lambda: next((i for i in ours(info, name) if i["state"] in ("Succeeded", "Failed")), None), 60, name
        )
        assert ended["state"] == "Succeeded", ended
        logs = orch(info, "logs", ended["name"])
        assert logs.returncode == 0, logs.stderr
        return logs.stdout.splitlines()
    finally:
        assert orch(info, "delete", "app", name).returncode == 0
        wait_for(lambda: not ours(info, name), 30, f"{name} removed")


def results(lines: list[str]) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in lines if " " in line and not line.startswith("Seccomp"))


def test_an_app_is_denied_keyring_user_namespaces_and_bpf(cluster: dict[str, Any], probe_image: Path) -> None:
    probes = "keyctl add_key unshare-user clone-user bpf mount clone3 getpid"
    lines = run_app(
        cluster, probe_image, "confine-filtered", ["sh", "-c", f"grep Seccomp: /proc/self/status; sysprobe {probes}"]
    )
    assert lines[0].split() == ["Seccomp:", "2"]
    assert results(lines) == {
        "keyctl": "EPERM",
        "add_key": "EPERM",
        "unshare-user": "EPERM",
        "clone-user": "EPERM",
        "bpf": "EPERM",
        "mount": "EPERM",
        "clone3": "ENOSYS",
        "getpid": "OK",
    }


def test_seccomp_unconfined_opts_out(cluster: dict[str, Any], probe_image: Path) -> None:
    lines = run_app(
        cluster,
        probe_image,
        "confine-free",
        ["sh", "-c", "grep Seccomp: /proc/self/status; sysprobe keyctl clone3"],
        extra="  seccomp: unconfined\n",
    )
    assert lines[0].split() == ["Seccomp:", "0"]
    assert results(lines) == {"keyctl": "OK", "clone3": "OK"}  # the filter was what said no


def test_mknod_does_not_reach_a_host_disk(cluster: dict[str, Any], probe_image: Path, tmp_path: Path) -> None:
    found = readable_block_device(tmp_path)  # readable by the host's root: the control
    if isinstance(found, str):
        pytest.skip(found)
    major, minor, _ = found
    probes = [f"mknod=/dev/hostdisk,b,{major},{minor}", "read=/dev/hostdisk", "read=/dev/null", "write=/dev/null"]
    lines = run_app(
        cluster, probe_image, "confine-mknod", ["sysprobe", *probes], extra="  capabilities: {add: [MKNOD]}\n"
    )
    assert lines == ["mknod OK", "read EPERM", "read OK", "write OK"], f"device {major}:{minor}"
