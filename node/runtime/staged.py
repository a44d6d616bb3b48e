"""A PID 1 prepared ahead of time by a spare shim (zygote.py), so that a start has
only a few syscalls left on its critical path.

Before any request, the spare shim unshares its pid namespace and forks PID 1,
which runs STAGE_STEPS: its own mount/UTS/IPC/net namespaces, then everything
that does not depend on the image or the container, mounted under a private
tmpfs at the staging dir (<state_dir>/.zygote/stage, in PID 1's mount namespace
only): proc with the masked and read-only paths applied, the tmpfs /dev with its
device binds, devpts and shm, read-only sysfs. When a request comes, PID 1 reads
the container's spec.json and runs ROOTFS_STEPS: the overlay, then the staged
mounts are moved (MS_MOVE, with everything mounted on them) into it, the etc
files, pivot_root. The result is the same mount tree SETUP_STEPS builds.

A pre-staged PID 1 serves one container and is never reused. One that is never
used exits when its shim does (EOF on its pipe), and the kernel drops its
namespaces and mounts with it. Containers with a user namespace (the tmpfs /dev
is owned by container root, the layers are idmapped) take the unstaged path
(SETUP_STEPS in a freshly forked PID 1).
"""

from __future__ import annotations

from node.runtime import init
from node.runtime import sys as sc
from node.runtime.init import InitPlan

__all__ = ["ROOTFS_STEPS", "STAGE_STEPS", "stage_plan", "usable"]

# Mount point name in the staging dir and in the rootfs -> mode of the directory made for it.
_STAGED = (("proc", 0o555), ("dev", 0o755), ("sys", 0o555))


def usable(user_namespace: bool, volumes: bool = False) -> bool:
    """Whether a container can take a pre-staged PID 1: no user ns, and no volumes (a spare's
    mount namespace is a copy of the host's from before: a tmpfs emptyDir mounted since, or a
    disk mounted on an allowed host path, would be missing from it)."""
    return not user_namespace and not volumes


def stage_plan(stage_dir: str) -> InitPlan:
    """The plan STAGE_STEPS run with: the staging dir stands in for the rootfs."""
    return InitPlan(lower="", upper="", work="", merged=stage_dir, hostname="", working_dir="/", argv=(), env={})


def _mount_stage(s: sc.Syscalls, p: InitPlan) -> None:
    s.mount("tmpfs", p.merged, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=700,size=64k")


def _move_staged_mounts(s: sc.Syscalls, p: InitPlan) -> None:
    for name, mode in _STAGED:
        s.mkdir(init.in_rootfs(p, f"/{name}"), mode)
        s.mount(f"{p.staged_dir}/{name}", f"{p.merged}/{name}", None, sc.MS_MOVE, None)


STAGE_STEPS: tuple[init.Step, ...] = (
    # The network namespace is the container's own from here on: configured once, now.
    *init.pick_steps("unshare_namespaces", "configure_network_namespace", "make_mounts_private"),
    # A tmpfs of our own to hold the mount points: the staging dir on the host stays empty.
    ("mount_stage", _mount_stage),
    # As in SETUP_STEPS, with the staging dir as the rootfs; proc already shows only our
    # pid ns, sysfs our net ns. The masks and read-only binds are mounted on top of
    # proc and sys, so they move with them.
    *init.pick_steps("mount_proc", "mount_dev", "mount_sys", "mask_paths", "readonly_paths"),
)

ROOTFS_STEPS: tuple[init.Step, ...] = (
    *init.pick_steps("mount_overlay", "bind_rootfs"),
    # MS_MOVE takes a mount with its submounts; the emptied staging tmpfs goes with the old root.
    ("move_staged_mounts", _move_staged_mounts),
    *init.pick_steps(
        "bind_etc_files",
        "mount_volumes",
        "pivot_root",
        "umount_old_root",
        "remount_rootfs_readonly",
        "set_hostname",
        "chdir_working_dir",
    ),
)
