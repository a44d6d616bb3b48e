"""Unit (no root): the mount_volumes step with RecordingSyscalls, and the config's round trip."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import pytest

from node.runtime import init, staged
from node.runtime import sys as sc
from node.runtime.model import ContainerConfig, Mount
from node.runtime.spec import _config_from_json, _config_to_json
from node.runtime.sys import RecordingSyscalls

DATA = Mount(Path("/srv/data"), "web", "/data")
PLAN = init.InitPlan(
    lower="/img",
    upper="/st/c/upper",
    work="/st/c/work",
    merged="/st/c/rootfs",
    hostname="web-1",
    working_dir="/",
    argv=("sh",),
    env={},
    mounts=(DATA,),
)
PLAIN = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV


def volume_calls(calls: RecordingSyscalls) -> list[tuple[object, ...]]:
    return [c for c in calls.calls if c[0] in ("open_in_root", "bind_tree", "chown_beneath", "close")]


def test_a_volume_is_bound_on_a_directory_opened_in_the_rootfs_then_closed() -> None:
    calls = RecordingSyscalls()
    init.run_setup(calls, PLAN)
    (opened, bound, closed) = volume_calls(calls)
    assert opened == ("open_in_root", "/st/c/rootfs", "/data")
    fd = bound[3]
    assert bound == ("bind_tree", "/srv/data", "web", fd, PLAIN, -1)
    assert closed == ("close", fd)
    names = calls.names()
    assert names.index("bind_tree") < names.index("pivot_root")  # host paths: before the pivot


def test_read_only_is_an_attribute_of_the_mount_before_it_is_attached() -> None:
    calls = RecordingSyscalls()
    init.run_setup(calls, dataclasses.replace(PLAN, mounts=(dataclasses.replace(DATA, read_only=True),)))
    (bound,) = [c for c in calls.calls if c[0] == "bind_tree"]
    assert bound[4] == PLAIN | sc.MOUNT_ATTR_RDONLY


@pytest.mark.parametrize("inside", ["/proc/sys", "/sys", "/dev", "/", "/etc/hosts"])
def test_a_link_in_the_image_leading_to_a_forbidden_place_is_refused(inside: str) -> None:
    """`/data -> /proc/sys` in the image: resolved in the rootfs, then refused as the path would be."""
    calls = RecordingSyscalls(resolved={"/data": inside})
    with pytest.raises(OSError) as info:
        init.run_setup(calls, PLAN)
    assert info.value.errno == errno.EPERM
    assert f"leads to {inside} in the image" in str(info.value)
    assert "container init step mount_volumes" in info.value.__notes__
    assert "bind_tree" not in calls.names() and calls.names()[-1] == "close"


def test_an_emptydir_is_idmapped_in_a_user_namespace_only() -> None:
    owned = dataclasses.replace(DATA, owned=True)
    calls = RecordingSyscalls()
    init.run_setup(calls, dataclasses.replace(PLAN, mounts=(owned, DATA), userns_fd=7, userns_root=1 << 30))
    binds = [c[5] for c in calls.calls if c[0] == "bind_tree"]
    assert binds == [7, -1]  # the hostPath keeps the node's ids
    calls = RecordingSyscalls()
    init.run_setup(calls, dataclasses.replace(PLAN, mounts=(owned,)))
    assert [c[5] for c in calls.calls if c[0] == "bind_tree"] == [-1]  # no user namespace: nothing to map


class NoIdmap(RecordingSyscalls):
    def bind_tree(self, root: str, path: str, target_fd: int, attrs: int, userns_fd: int) -> None:
        super().bind_tree(root, path, target_fd, attrs, userns_fd)
        if userns_fd >= 0:
            raise OSError(errno.EINVAL, "mount_setattr: Invalid argument")


def test_a_filesystem_that_cannot_be_idmapped_is_given_to_container_root() -> None:
    calls = NoIdmap()
    plan = dataclasses.replace(PLAN, mounts=(dataclasses.replace(DATA, owned=True),), userns_fd=7, userns_root=4242)
    init.run_setup(calls, plan)
    kinds = [(c[0], c[-1]) for c in volume_calls(calls)]
    assert kinds[1:4] == [("bind_tree", 7), ("chown_beneath", 4242), ("bind_tree", -1)]


def test_the_staged_path_mounts_volumes_too_but_a_container_with_volumes_is_not_staged() -> None:
    names = [name for name, _ in staged.ROOTFS_STEPS]
    assert names.index("bind_etc_files") < names.index("mount_volumes") < names.index("pivot_root")
    assert staged.usable(False) and not staged.usable(False, volumes=True) and not staged.usable(True)


def test_mounts_survive_spec_json() -> None:
    config = ContainerConfig(
        id="c",
        rootfs=Path("/img"),
        argv=("sh",),
        env={},
        log_path=Path("/l"),
        mounts=(DATA, Mount(Path("/st/v/c/cache"), "", "/cache", read_only=True, owned=True)),
    )
    assert _config_from_json(_config_to_json(config)) == config
