"""Unit (no root): the order of the container init steps, with RecordingSyscalls."""

from __future__ import annotations

import dataclasses
import errno

import pytest

from node.runtime import init
from node.runtime import sys as sc
from node.runtime.sys import RecordedExec, RecordingSyscalls

PLAN = init.InitPlan(
    lower="/img",
    upper="/st/c/upper",
    work="/st/c/work",
    merged="/st/c/rootfs",
    hostname="web-1",
    working_dir="/app",
    argv=("server", "--port", "80"),
    env={"PATH": "/bin"},
)


def run_all(calls: RecordingSyscalls, plan: init.InitPlan = PLAN) -> None:
    init.run_setup(calls, plan)
    with pytest.raises(RecordedExec):
        init.exec_command(calls, plan)


def test_step_names_are_in_the_documented_order() -> None:
    assert [name for name, _ in init.SETUP_STEPS] == [
        "unshare_namespaces",
        "make_mounts_private",
        "mount_overlay",
        "bind_rootfs",
        "mount_proc",
        "mount_dev",
        "mount_sys",
        "pivot_root",
        "umount_old_root",
        "set_hostname",
        "chdir_working_dir",
    ]


def test_calls_happen_in_order_from_private_propagation_to_exec() -> None:
    calls = RecordingSyscalls()
    run_all(calls)
    mounts = [c for c in calls.calls if c[0] == "mount"]
    # private propagation is the very first mount, before anything could leak to the host
    assert mounts[0] == ("mount", None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)
    assert mounts[1][1:4] == ("overlay", "/st/c/rootfs", "overlay")
    assert mounts[1][5] == "lowerdir=/img,upperdir=/st/c/upper,workdir=/st/c/work"
    assert mounts[2] == ("mount", "/st/c/rootfs", "/st/c/rootfs", None, sc.MS_BIND | sc.MS_REC, None)
    names = calls.names()
    order = [names.index(n) for n in ("unshare", "pivot_root", "umount2", "sethostname", "execvpe")]
    assert order == sorted(order)
    # every mount into the new root happens before pivot_root
    assert max(i for i, n in enumerate(names) if n == "mount") < names.index("pivot_root")
    assert calls.calls[-1] == ("execvpe", "server", ("server", "--port", "80"), {"PATH": "/bin"})
    assert ("chdir", "/app") in calls.calls[names.index("sethostname") :]


def test_unshare_flags_include_net_only_when_networked() -> None:
    base = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP
    with_net, without = RecordingSyscalls(), RecordingSyscalls()
    run_all(with_net)
    run_all(without, dataclasses.replace(PLAN, network=False))
    assert with_net.calls[0] == ("unshare", base | sc.CLONE_NEWNET)
    assert without.calls[0] == ("unshare", base)


def test_dev_gets_tmpfs_device_binds_pts_and_shm() -> None:
    calls = RecordingSyscalls()
    run_all(calls)
    targets = {c[2]: c for c in calls.calls if c[0] == "mount"}
    assert targets["/st/c/rootfs/dev"][3] == "tmpfs"
    for dev in init.DEVICES:
        assert targets[f"/st/c/rootfs/dev/{dev}"][1] == f"/dev/{dev}"
    assert targets["/st/c/rootfs/dev/pts"][3] == "devpts"
    assert targets["/st/c/rootfs/dev/shm"][3] == "tmpfs"
    sys_flags = targets["/st/c/rootfs/sys"][4]
    assert isinstance(sys_flags, int) and sys_flags & sc.MS_RDONLY


def test_pivot_root_uses_dot_dot_and_detaches_old_root() -> None:
    calls = RecordingSyscalls()
    run_all(calls)
    i = calls.names().index("pivot_root")
    assert calls.calls[i - 1 : i + 3] == [
        ("chdir", "/st/c/rootfs"),
        ("pivot_root", ".", "."),
        ("umount2", ".", sc.MNT_DETACH),
        ("chdir", "/"),
    ]


def test_failure_names_the_step_and_stops() -> None:
    calls = RecordingSyscalls(fail_on="pivot_root")
    with pytest.raises(OSError) as info:
        init.run_setup(calls, PLAN)
    assert "container init step pivot_root" in info.value.__notes__
    assert "sethostname" not in calls.names()


@pytest.mark.parametrize(
    ("err", "code", "text"),
    [(errno.ENOENT, 127, "no such file or directory"), (errno.EACCES, 126, "permission denied")],
)
def test_exec_failure_follows_shell_convention(err: int, code: int, text: str) -> None:
    assert init.exec_failure("/bin/nope", OSError(err, "x")) == (code, f'exec "/bin/nope": {text}')
