"""Unit (no root): the order of the container init steps, with RecordingSyscalls."""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
from pathlib import Path

import pytest

from node.runtime import init
from node.runtime import sys as sc
from node.runtime.security import DEFAULT_CAPS, Identity, cap_mask, cap_names, resolve_user, rlimit_numbers
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
        "configure_network_namespace",
        "make_mounts_private",
        "mount_overlay",
        "bind_rootfs",
        "mount_proc",
        "mount_dev",
        "mount_sys",
        "bind_etc_files",
        "mask_paths",
        "readonly_paths",
        "mount_volumes",
        "pivot_root",
        "umount_old_root",
        "remount_rootfs_readonly",
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


def test_every_container_gets_its_own_network_namespace_with_lo_up_and_its_sysctls() -> None:
    """Bridge or not (issue 9 item 4): the host's namespace is never shared. Its sysctls are set
    as host root, right after the unshare, before any mount (item 10)."""
    calls = RecordingSyscalls()
    run_all(calls)
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET  # cgroup ns: EXEC_STEPS
    assert calls.calls[:4] == [
        ("unshare", flags),
        ("link_up", "lo"),
        ("sysctl", "net/ipv4/ip_unprivileged_port_start", "0"),
        ("sysctl", "net/ipv4/ping_group_range", "0 2147483647"),
    ]


def test_a_fault_injected_at_a_step_stops_there() -> None:
    """The test seam of the failed-start tests (InitPlan.fault_step): that step does not run."""
    calls = RecordingSyscalls()
    with pytest.raises(OSError) as info:
        init.run_setup(calls, dataclasses.replace(PLAN, fault_step="pivot_root"))
    assert info.value.errno == errno.EIO and "container init step pivot_root" in info.value.__notes__
    assert "pivot_root" not in calls.names() and "mount" in calls.names()


def test_dev_gets_tmpfs_its_own_device_nodes_pts_and_shm() -> None:
    calls = RecordingSyscalls()
    run_all(calls)
    targets = {c[2]: c for c in calls.calls if c[0] == "mount"}
    assert targets["/st/c/rootfs/dev"][3] == "tmpfs"
    nodes = [c for c in calls.calls if c[0] == "mknod"]
    assert nodes == [("mknod", f"/st/c/rootfs/dev/{name}", major, minor, 0) for name, major, minor in init.DEVICES]
    assert not any(str(c[1]).startswith("/dev/") for c in targets.values())  # no host inode is bound
    assert targets["/st/c/rootfs/dev/pts"][3] == "devpts"
    assert targets["/st/c/rootfs/dev/shm"][3] == "tmpfs"
    sys_flags = targets["/st/c/rootfs/sys"][4]
    assert isinstance(sys_flags, int) and sys_flags & sc.MS_RDONLY


def test_without_mknod_the_hosts_nodes_are_bound_read_only() -> None:
    """An agent without CAP_MKNOD over the host: binds, each remounted read-only (chmod: EROFS)."""
    calls = RecordingSyscalls(fail_on="mknod")
    init.run_setup(calls, PLAN)
    for name, _, _ in init.DEVICES:
        node = f"/st/c/rootfs/dev/{name}"
        binds = [c for c in calls.calls if c[0] == "mount" and c[2] == node]
        assert binds == [
            ("mount", f"/dev/{name}", node, None, sc.MS_BIND, None),
            ("mount", None, node, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY, None),
        ]


def test_in_a_user_namespace_container_root_owns_its_nodes() -> None:
    calls = RecordingSyscalls()
    init.run_setup(calls, dataclasses.replace(PLAN, userns_fd=5, userns_root=100000, idmapped_dir="/st/c/layers"))
    assert {c[4] for c in calls.calls if c[0] == "mknod"} == {100000}


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


def test_masked_paths_bind_dev_null_over_files_and_tmpfs_over_dirs() -> None:
    kinds = {"/st/c/rootfs/proc/acpi": "dir", "/st/c/rootfs/proc/kcore": None, "/st/c/rootfs/proc/bus": None}
    calls = RecordingSyscalls(kinds=kinds)
    init.run_setup(calls, PLAN)
    targets = {c[2]: c for c in calls.calls if c[0] == "mount"}
    assert targets["/st/c/rootfs/proc/acpi"][3:5] == ("tmpfs", sc.MS_RDONLY)
    assert targets["/st/c/rootfs/proc/keys"][1] == "/st/c/rootfs/dev/null"  # the container's node, not the host's
    assert "/st/c/rootfs/proc/kcore" not in targets and "/st/c/rootfs/proc/bus" not in targets  # missing: skipped
    remount = [c for c in calls.calls if c[0] == "mount" and c[2] == "/st/c/rootfs/proc/sys" and c[1] is None]
    flags = remount[0][4]
    assert isinstance(flags, int) and flags & sc.MS_RDONLY and flags & sc.MS_REMOUNT


def test_read_only_rootfs_is_remounted_after_the_pivot() -> None:
    calls = RecordingSyscalls()
    init.run_setup(calls, dataclasses.replace(PLAN, read_only_rootfs=True))
    last_mount = [c for c in calls.calls if c[0] == "mount"][-1]
    assert last_mount == ("mount", None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY, None)
    assert calls.names().index("pivot_root") < calls.calls.index(last_mount)


def test_exec_steps_drop_privileges_in_order() -> None:
    caps = cap_mask()
    plan = dataclasses.replace(
        PLAN, uid=1000, gid=1000, groups=(1000,), caps=caps, ambient=1 << 12, rlimits=((7, 10, 20),)
    )
    calls = RecordingSyscalls()
    init.run_setup(calls, plan, init.EXEC_STEPS)
    names = calls.names()
    assert calls.calls[0] == ("unshare", sc.CLONE_NEWCGROUP)  # after the shim's cgroup attach
    assert names.index("setrlimit") < names.index("prctl") < names.index("setgroups") < names.index("setresuid")
    dropped = [int(str(c[2])) for c in calls.calls if c[:2] == ("prctl", sc.PR_CAPBSET_DROP)]
    assert len(dropped) == 41 - bin(caps).count("1") and all(not caps >> d & 1 for d in dropped)
    assert ("prctl", sc.PR_SET_NO_NEW_PRIVS, 1, 0) in calls.calls
    assert calls.calls[names.index("setresuid") - 1] == ("prctl", sc.PR_SET_KEEPCAPS, 1, 0)
    assert ("capset", caps, caps, caps) in calls.calls[names.index("setresuid") :]
    assert not [
        c for c in calls.calls if c[:3] == ("prctl", sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE)
    ]  # 12 not in caps


def test_user_namespace_idmaps_the_layers_and_is_joined_before_the_caps_drop() -> None:
    plan = dataclasses.replace(
        PLAN, lower="/l1:/l0", userns_fd=9, userns_root=100000, idmapped_dir="/st/c/layers", rlimits=((7, 10, 20),)
    )
    calls = RecordingSyscalls()
    init.run_setup(calls, plan)
    binds = [c for c in calls.calls if c[0] == "idmapped_bind"]
    assert binds == [("idmapped_bind", "/l1", "/st/c/layers/0", 9), ("idmapped_bind", "/l0", "/st/c/layers/1", 9)]
    overlay = next(c for c in calls.calls if c[0] == "mount" and c[3] == "overlay")
    assert str(overlay[5]).startswith("lowerdir=/st/c/layers/0:/st/c/layers/1,")
    assert calls.calls.index(binds[-1]) < calls.calls.index(overlay)
    dev = next(c for c in calls.calls if c[0] == "mount" and c[2] == "/st/c/rootfs/dev")
    assert str(dev[5]).endswith(",uid=100000,gid=100000")  # container root owns /dev
    calls = RecordingSyscalls()
    init.run_setup(calls, plan, init.EXEC_STEPS)
    names = calls.names()
    # rlimits need the host's CAP_SYS_RESOURCE; joining resets the bounding set, so the drop follows.
    assert names.index("setrlimit") < names.index("setns") < names.index("prctl")
    assert ("setns", 9, sc.CLONE_NEWUSER) in calls.calls


def test_no_user_namespace_by_default() -> None:
    calls = RecordingSyscalls()
    run_all(calls)
    init.run_setup(calls, PLAN, init.EXEC_STEPS)
    assert "idmapped_bind" not in calls.names() and "setns" not in calls.names()


def test_cap_mask_defaults_add_drop_all() -> None:
    assert cap_names(cap_mask()) == sorted(DEFAULT_CAPS)
    assert cap_names(cap_mask(add=("CAP_NET_ADMIN",), drop=("chown",))) == sorted(
        {*DEFAULT_CAPS, "NET_ADMIN"} - {"CHOWN"}
    )
    assert cap_mask(drop=("ALL",)) == 0
    assert cap_names(cap_mask(add=("NET_RAW",), drop=("ALL",))) == ["NET_RAW"]
    assert cap_mask(add=("ALL",)) == (1 << 41) - 1
    with pytest.raises(ValueError, match="unknown capability"):
        cap_mask(add=("FLY",))


def test_resolve_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:33:34::/:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("web:x:34:\nlog:x:4:web\nops:x:50:\n")
    assert resolve_user(tmp_path, "") == Identity(0, 0, (0,))
    assert resolve_user(tmp_path, "1000:1000") == Identity(1000, 1000, (1000,))
    assert resolve_user(tmp_path, "web") == Identity(33, 34, (4, 34))
    assert resolve_user(tmp_path, "web:ops") == Identity(33, 50, (4, 50))
    assert resolve_user(tmp_path, "33") == Identity(33, 34, (4, 34))
    with pytest.raises(ValueError, match="nobody"):
        resolve_user(tmp_path, "nobody")


def test_rlimits_default_is_clamped_explicit_is_not() -> None:
    nofile = resource.RLIMIT_NOFILE
    assert rlimit_numbers({}, host_hard={nofile: 4096}) == [(nofile, 1024, 4096)]
    assert rlimit_numbers({"RLIMIT_NOFILE": (10, 1 << 20)}, host_hard={nofile: 4096}) == [(nofile, 10, 1 << 20)]
    with pytest.raises(ValueError):
        rlimit_numbers({"BOGUS": (1, 1)})


def test_the_reaper_is_exec_d_from_its_image_with_the_report_fd_and_the_command() -> None:
    calls = RecordingSyscalls()
    r, w = os.pipe()
    try:
        with pytest.raises(RecordedExec):
            init.exec_reaper(calls, PLAN, 42, w)
        assert os.get_inheritable(w)  # orch-init writes its reports there, after the exec
    finally:
        os.close(r)
        os.close(w)
    assert calls.calls == [("execve_fd", 42, ("init", str(w), *PLAN.argv), dict(PLAN.env))]


def test_staged_steps_are_the_setup_steps_split_in_two() -> None:
    """A pre-staged PID 1 (staged.py) runs every setup step, in the same relative order."""
    from node.runtime import staged

    own = {"mount_stage", "move_staged_mounts"}
    names = [name for name, _ in (*staged.STAGE_STEPS, *staged.ROOTFS_STEPS) if name not in own]
    assert sorted(names) == sorted(name for name, _ in init.SETUP_STEPS)
    rootfs = [name for name, _ in staged.ROOTFS_STEPS if name not in own]
    assert rootfs == [name for name, _ in init.SETUP_STEPS if name in rootfs]
