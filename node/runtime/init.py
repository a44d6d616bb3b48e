"""The container's PID 1 setup: an ordered tuple of named steps.

Runs in the child the shim forked after unshare(CLONE_NEWPID), so this process
is already PID 1 of the new pid namespace and already in the container's
cgroup. Every mount happens inside the container's own mount namespace after
propagation was made private: the host never sees any of them, and the kernel
drops them all when the last process of the container exits (nothing to clean
up after a crash).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from node.runtime import sys as sc

__all__ = ["DEVICES", "SETUP_STEPS", "InitPlan", "exec_command", "exec_failure", "run_setup"]

# Device nodes bind-mounted from the host: a tmpfs /dev has none, and binding
# (rather than mknod) also works where mknod is not permitted.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass(frozen=True, slots=True)
class InitPlan:
    lower: str  # image root, read-only overlay lower
    upper: str  # per-container writable layer (state dir)
    work: str  # overlay workdir, same filesystem as upper
    merged: str  # mount point of the overlay (state dir); becomes /
    hostname: str
    working_dir: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    network: bool = True


Step = tuple[str, Callable[[sc.Syscalls, InitPlan], None]]


def _unshare_namespaces(s: sc.Syscalls, p: InitPlan) -> None:
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWCGROUP
    s.unshare(flags | (sc.CLONE_NEWNET if p.network else 0))


def _make_mounts_private(s: sc.Syscalls, p: InitPlan) -> None:
    s.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)


def _mount_overlay(s: sc.Syscalls, p: InitPlan) -> None:
    s.mount("overlay", p.merged, "overlay", 0, f"lowerdir={p.lower},upperdir={p.upper},workdir={p.work}")


def _bind_rootfs(s: sc.Syscalls, p: InitPlan) -> None:
    s.mount(p.merged, p.merged, None, sc.MS_BIND | sc.MS_REC, None)


def _mount_proc(s: sc.Syscalls, p: InitPlan) -> None:
    s.mkdir(f"{p.merged}/proc", 0o555)
    s.mount("proc", f"{p.merged}/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None)


def _mount_dev(s: sc.Syscalls, p: InitPlan) -> None:
    dev = f"{p.merged}/dev"
    s.mkdir(dev, 0o755)
    s.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID, "mode=755,size=65536k")
    for name in DEVICES:
        s.touch(f"{dev}/{name}")
        s.mount(f"/dev/{name}", f"{dev}/{name}", None, sc.MS_BIND, None)
    s.mkdir(f"{dev}/pts", 0o755)
    pts_opts = "newinstance,ptmxmode=0666,mode=0620"
    s.mount("devpts", f"{dev}/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, pts_opts)
    s.symlink("pts/ptmx", f"{dev}/ptmx")
    s.mkdir(f"{dev}/shm", 0o1777)
    shm_flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    s.mount("shm", f"{dev}/shm", "tmpfs", shm_flags, "mode=1777,size=65536k")
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
        s.symlink(target, f"{dev}/{link}")
    s.symlink("/proc/self/fd/1", f"{dev}/stdout")
    s.symlink("/proc/self/fd/2", f"{dev}/stderr")


def _mount_sys(s: sc.Syscalls, p: InitPlan) -> None:
    s.mkdir(f"{p.merged}/sys", 0o555)
    flags = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    s.mount("sysfs", f"{p.merged}/sys", "sysfs", flags, None)


def _pivot_root(s: sc.Syscalls, p: InitPlan) -> None:
    # pivot_root(".", ".") stacks the old root on top of the new one, so no
    # .oldroot directory has to be created in the image (runc does the same).
    s.chdir(p.merged)
    s.pivot_root(".", ".")


def _umount_old_root(s: sc.Syscalls, p: InitPlan) -> None:
    s.umount2(".", sc.MNT_DETACH)
    s.chdir("/")


def _set_hostname(s: sc.Syscalls, p: InitPlan) -> None:
    s.sethostname(p.hostname)


def _chdir_working_dir(s: sc.Syscalls, p: InitPlan) -> None:
    s.chdir(p.working_dir or "/")


SETUP_STEPS: tuple[Step, ...] = (
    # New mount/UTS/IPC/net/cgroup namespaces. The shim already moved us into
    # the container's cgroup, so the cgroup namespace's root is that cgroup.
    ("unshare_namespaces", _unshare_namespaces),
    # Before any mount: the host's / is usually shared, and a mount made now
    # would propagate back to the host's mount namespace.
    ("make_mounts_private", _make_mounts_private),
    # The image stays read-only (lower); writes go to this container's upper.
    ("mount_overlay", _mount_overlay),
    # pivot_root(2) needs new_root to be a mount point whose parent mount is
    # not shared; binding it onto itself guarantees that for any rootfs.
    ("bind_rootfs", _bind_rootfs),
    # proc after we are PID 1 of the new pid ns, so it shows only our pids;
    # all three still go through host paths, before the old root disappears.
    ("mount_proc", _mount_proc),
    ("mount_dev", _mount_dev),
    ("mount_sys", _mount_sys),
    # pivot_root, not chroot: a chroot can be escaped and keeps the host's
    # mounts reachable; after the pivot the old root can be detached.
    ("pivot_root", _pivot_root),
    ("umount_old_root", _umount_old_root),
    # Hostname and cwd last: they need the new UTS ns and the new root.
    ("set_hostname", _set_hostname),
    ("chdir_working_dir", _chdir_working_dir),
)


def run_setup(s: sc.Syscalls, plan: InitPlan, steps: tuple[Step, ...] = SETUP_STEPS) -> None:
    """Run each step in order; a failure raises OSError annotated with the step name."""
    for name, step in steps:
        try:
            step(s, plan)
        except OSError as exc:
            exc.add_note(f"container init step {name}")
            raise


def exec_command(s: sc.Syscalls, plan: InitPlan) -> NoReturn:
    """Replace PID 1 with the command; argv[0] is looked up in the container's PATH."""
    s.execvpe(plan.argv[0], plan.argv, plan.env)


def exec_failure(argv0: str, exc: OSError) -> tuple[int, str]:
    """Shell convention: 127 when the command is missing, 126 when it cannot run."""
    code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
    reason = os.strerror(exc.errno or errno.EIO).lower()
    return code, f'exec "{argv0}": {reason}'
