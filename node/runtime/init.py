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
import signal
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from node.runtime import sys as sc
from node.runtime.cgroups.devices import NODES
from node.runtime.model import Mount, SecretMount
from orch.volumes import mount_path_problem

__all__ = [
    "DEVICES",
    "EXEC_STEPS",
    "MASKED_PATHS",
    "NETNS_SYSCTLS",
    "READONLY_PATHS",
    "SETUP_STEPS",
    "InitPlan",
    "exec_command",
    "exec_failure",
    "exec_reaper",
    "open_mount_point",
    "pick_steps",
    "run_setup",
]

# (name, major, minor) of the nodes made in the container's tmpfs /dev (and allowed by its cgroup).
DEVICES = NODES

# The OCI/runc defaults: kernel interfaces that leak host data or allow host changes.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
ALL_CAPS = (1 << 41) - 1  # CAP_CHECKPOINT_RESTORE (40) is the last one this code knows


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
    read_only_rootfs: bool = False
    etc_files: tuple[tuple[str, str], ...] = ()  # (path in the container, host file) bound read-only
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = (0,)
    caps: int = ALL_CAPS  # bounding = permitted = effective = inheritable
    ambient: int = 0  # raised only for a non-root user (cap_add), as Podman does
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (RLIMIT_*, soft, hard)
    no_new_privs: bool = True
    last_cap: int = 40
    # User namespace (userns.py): an fd of it, inherited from the shim; -1 = none.
    userns_fd: int = -1
    userns_root: int = 0  # the host uid/gid of container root, owner of the tmpfs /dev
    idmapped_dir: str = ""  # where the idmapped image layers are mounted (state dir)
    staged_dir: str = ""  # where a pre-staged PID 1 holds its /proc /dev /sys (staged.py)
    # Test seam (spec.json "fault_step", never written by the Runtime): run_setup fails with
    # EIO instead of running the step of this name, for the failed-start tests (issue 9 item 16).
    fault_step: str = ""
    # The compiled BPF program (seccomp/), read on the host side: the exec steps run after
    # pivot_root or setns, where the host's state dir is out of reach. b"" = unconfined.
    seccomp_program: bytes = b""
    mounts: tuple[Mount, ...] = ()  # volumes (model.Mount), bound by mount_volumes
    # Secret volumes: their mount points are made by mount_volumes (before a read-only remount
    # of /); their files arrive after "G" and are mounted by secret_mounts.SECRET_STEPS.
    secret_targets: tuple[str, ...] = ()
    secret_mounts: tuple[SecretMount, ...] = ()


Step = tuple[str, Callable[[sc.Syscalls, InitPlan], None]]


def _unshare_namespaces(s: sc.Syscalls, p: InitPlan) -> None:
    s.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET)


# What Docker sets in every container's network namespace: any uid may bind ports below 1024
# (root in a user namespace is not privileged for a namespace the host's user namespace owns)
# and open ICMP echo sockets. Both are this namespace's own and reach nothing outside it.
NETNS_SYSCTLS = (("net/ipv4/ip_unprivileged_port_start", "0"), ("net/ipv4/ping_group_range", "0 2147483647"))


def _configure_network_namespace(s: sc.Syscalls, p: InitPlan) -> None:
    s.link_up("lo")  # a bridge attach adds eth0 later; without one, lo is all there is
    for name, value in NETNS_SYSCTLS:
        s.sysctl(name, value)


def _unshare_cgroup_namespace(s: sc.Syscalls, p: InitPlan) -> None:
    s.unshare(sc.CLONE_NEWCGROUP)


def _make_mounts_private(s: sc.Syscalls, p: InitPlan) -> None:
    s.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE, None)


def _idmap_layers(s: sc.Syscalls, p: InitPlan) -> str:
    """Each image layer bound with its ids shifted into the user namespace; the new lowerdir."""
    layers = []
    for i, layer in enumerate(p.lower.split(":")):
        target = f"{p.idmapped_dir}/{i}"
        s.mkdir(target, 0o700)
        s.idmapped_bind(layer, target, p.userns_fd)
        layers.append(target)
    return ":".join(layers)


def _mount_overlay(s: sc.Syscalls, p: InitPlan) -> None:
    lower = _idmap_layers(s, p) if p.userns_fd >= 0 else p.lower
    s.mount("overlay", p.merged, "overlay", 0, f"lowerdir={lower},upperdir={p.upper},workdir={p.work}")


def _bind_rootfs(s: sc.Syscalls, p: InitPlan) -> None:
    s.mount(p.merged, p.merged, None, sc.MS_BIND | sc.MS_REC, None)


def in_rootfs(p: InitPlan, path: str) -> str:
    """merged + path, refused if the image makes any part of it a symlink.

    These steps run as host root before pivot_root, so a symlink in the image
    (/etc -> /some/host/dir) would make mkdir/touch/mount act on the host's files.
    """
    current = p.merged
    for part in path.strip("/").split("/"):
        current = f"{current}/{part}"
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                raise OSError(errno.ELOOP, f"{path} is a symlink in the image ({part}); refused", current)
        except FileNotFoundError:
            break  # created below by the step itself, inside the rootfs
    return f"{p.merged}{path}"


def _mount_proc(s: sc.Syscalls, p: InitPlan) -> None:
    s.mkdir(in_rootfs(p, "/proc"), 0o555)
    s.mount("proc", f"{p.merged}/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None)


def _make_device(s: sc.Syscalls, p: InitPlan, name: str, major: int, minor: int) -> None:
    """The container's own node, as runc makes them: a bind of the host's /dev/null would hand
    the host's inode to container root (chmod, chown with CAP_CHOWN/CAP_FOWNER). We are host
    root here, so mknod works with a user namespace too (owned by container root, as its /dev).
    Where mknod is refused (an agent without CAP_MKNOD over the host), a read-only bind: chmod
    then gets EROFS while the device still reads and writes."""
    node = f"{p.merged}/dev/{name}"
    owner = p.userns_root if p.userns_fd >= 0 else 0
    try:
        s.mknod(node, major, minor, owner)
    except PermissionError:
        s.touch(node)
        s.mount(f"/dev/{name}", node, None, sc.MS_BIND, None)
        s.mount(None, node, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY, None)


def _mount_dev(s: sc.Syscalls, p: InitPlan) -> None:
    dev = in_rootfs(p, "/dev")
    s.mkdir(dev, 0o755)
    owner = f",uid={p.userns_root},gid={p.userns_root}" if p.userns_fd >= 0 else ""
    s.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID, f"mode=755,size=65536k{owner}")
    for name, major, minor in DEVICES:
        _make_device(s, p, name, major, minor)
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
    s.mkdir(in_rootfs(p, "/sys"), 0o555)
    flags = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    s.mount("sysfs", f"{p.merged}/sys", "sysfs", flags, None)


def _bind_etc_files(s: sc.Syscalls, p: InitPlan) -> None:
    for path, source in p.etc_files:
        target = in_rootfs(p, path)
        s.mkdir(target.rsplit("/", 1)[0], 0o755)
        s.touch(target)
        s.mount(source, target, None, sc.MS_BIND, None)
        # A bind mount ignores MS_RDONLY; only a remount of the bind makes it read-only.
        s.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY, None)


def _mask_paths(s: sc.Syscalls, p: InitPlan) -> None:
    for path in p.masked_paths:
        target = f"{p.merged}{path}"
        kind = s.kind(target)
        if kind == "dir":
            s.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, None)
        elif kind == "file":  # the container's own /dev/null (mount_dev): never the host's inode
            s.mount(f"{p.merged}/dev/null", target, None, sc.MS_BIND, None)


def _readonly_paths(s: sc.Syscalls, p: InitPlan) -> None:
    locked = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC  # proc's flags, kept on the remount
    for path in p.readonly_paths:
        target = f"{p.merged}{path}"
        if s.kind(target) is None:
            continue
        s.mount(target, target, None, sc.MS_BIND | sc.MS_REC, None)
        s.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | locked, None)


def _mount_volumes(s: sc.Syscalls, p: InitPlan) -> None:
    for mount in p.mounts:
        fd = open_mount_point(s, p.merged, mount.target)
        try:
            _bind_volume(s, p, mount, fd)
        finally:
            s.close(fd)
    for target in p.secret_targets:  # only made here: the files come after "G"
        s.close(open_mount_point(s, p.merged, target))


def open_mount_point(s: sc.Syscalls, root: str, target: str) -> int:
    """The directory `target` inside `root`, made if missing. Resolved as if the rootfs were "/",
    so an image's `/data -> /etc/..` stays in the image; where a link leads is checked again, as
    the manifest's path was."""
    fd, inside = s.open_in_root(root, target)
    if (problem := mount_path_problem(inside)) is not None:
        s.close(fd)
        raise OSError(errno.EPERM, f"volume mountPath {target} leads to {inside} in the image, which {problem}")
    return fd


def _bind_volume(s: sc.Syscalls, p: InitPlan, mount: Mount, fd: int) -> None:
    attrs = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV | (sc.MOUNT_ATTR_RDONLY if mount.read_only else 0)
    root = str(mount.root)
    if not (mount.owned and p.userns_fd >= 0):
        s.bind_tree(root, mount.path, fd, attrs, -1)
        return
    try:  # container root owns what host root owns, whichever id block the container has
        s.bind_tree(root, mount.path, fd, attrs, p.userns_fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        # A filesystem that cannot be idmapped (tmpfs before Linux 6.3): its top directory is
        # given to this container's root instead.
        s.chown_beneath(root, mount.path, p.userns_root)
        s.bind_tree(root, mount.path, fd, attrs, -1)


def _pivot_root(s: sc.Syscalls, p: InitPlan) -> None:
    # pivot_root(".", ".") stacks the old root on top of the new one, so no
    # .oldroot directory has to be created in the image (runc does the same).
    s.chdir(p.merged)
    s.pivot_root(".", ".")


def _umount_old_root(s: sc.Syscalls, p: InitPlan) -> None:
    s.umount2(".", sc.MNT_DETACH)
    s.chdir("/")


def _remount_rootfs_readonly(s: sc.Syscalls, p: InitPlan) -> None:
    if p.read_only_rootfs:
        s.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY, None)


def _set_hostname(s: sc.Syscalls, p: InitPlan) -> None:
    s.sethostname(p.hostname)


def _chdir_working_dir(s: sc.Syscalls, p: InitPlan) -> None:
    s.chdir(p.working_dir or "/")


SETUP_STEPS: tuple[Step, ...] = (
    # New mount/UTS/IPC/net namespaces (the pid ns exists: we are its PID 1). Always a
    # network namespace of its own, bridge or not: the host's would expose every
    # loopback service and abstract unix socket of the node to the container.
    # The cgroup ns comes later, in EXEC_STEPS: the shim moves us into the
    # container's cgroup while these steps run.
    ("unshare_namespaces", _unshare_namespaces),
    # Still host root in a fresh network namespace: only now may its sysctls be written
    # (later the container may be in a user namespace, and /proc/sys is read-only there).
    ("configure_network_namespace", _configure_network_namespace),
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
    # Bound from the state dir, where the Runtime wrote them (and can rewrite
    # hosts in place once on_netns knows the ip); mount points are created in
    # the overlay, so this comes before the read-only remount of /.
    ("bind_etc_files", _bind_etc_files),
    # After proc, dev and sys exist: files are masked with the container's /dev/null.
    ("mask_paths", _mask_paths),
    ("readonly_paths", _readonly_paths),
    # Volumes once the rootfs is complete, before pivot_root: their sources are host paths.
    # After proc, dev and sys, so that a link in the image leading there is seen and refused.
    ("mount_volumes", _mount_volumes),
    ("pivot_root", _pivot_root),
    ("umount_old_root", _umount_old_root),
    # Last mount step: every mount point above had to be created first.
    ("remount_rootfs_readonly", _remount_rootfs_readonly),
    # Hostname and cwd last: they need the new UTS ns and the new root.
    ("set_hostname", _set_hostname),
    ("chdir_working_dir", _chdir_working_dir),
)


def pick_steps(*names: str, steps: tuple[Step, ...] = SETUP_STEPS) -> tuple[Step, ...]:
    """The named steps of `steps`, in the order given (staged.py splits SETUP_STEPS in two)."""
    by_name = dict(steps)
    return tuple((name, by_name[name]) for name in names)


def _set_rlimits(s: sc.Syscalls, p: InitPlan) -> None:
    for number, soft, hard in p.rlimits:
        s.setrlimit(number, soft, hard)


def _enter_user_namespace(s: sc.Syscalls, p: InitPlan) -> None:
    if p.userns_fd >= 0:
        s.setns(p.userns_fd, sc.CLONE_NEWUSER)


def _drop_bounding_caps(s: sc.Syscalls, p: InitPlan) -> None:
    for cap in range(p.last_cap + 1):
        if not p.caps >> cap & 1:
            s.prctl(sc.PR_CAPBSET_DROP, cap)


def _set_no_new_privs(s: sc.Syscalls, p: InitPlan) -> None:
    if p.no_new_privs:
        s.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)


def _set_groups(s: sc.Syscalls, p: InitPlan) -> None:
    s.setgroups(p.groups)
    s.setresgid(p.gid)


def _set_uid(s: sc.Syscalls, p: InitPlan) -> None:
    # KEEPCAPS: a uid change away from 0 would otherwise empty the permitted set.
    s.prctl(sc.PR_SET_KEEPCAPS, 1)
    s.setresuid(p.uid)
    s.prctl(sc.PR_SET_KEEPCAPS, 0)


def _set_caps(s: sc.Syscalls, p: InitPlan) -> None:
    s.capset(p.caps, p.caps, p.caps)
    s.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    if p.uid != 0:
        for cap in range(p.last_cap + 1):
            if (p.ambient & p.caps) >> cap & 1:
                s.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, cap)


def _load_seccomp(s: sc.Syscalls, p: InitPlan) -> None:
    if p.seccomp_program:
        s.load_seccomp(p.seccomp_program)


# The exec path (`orch exec`, exec probes) runs these too, derived at each call by
# exec_container.exec_steps(): a step added here applies to every exec'd process as well.
EXEC_STEPS: tuple[Step, ...] = (
    # The shim sends "G" only after moving us into the container's cgroup, so
    # the new cgroup namespace's root is that cgroup (needs CAP_SYS_ADMIN: first).
    ("unshare_cgroup_namespace", _unshare_cgroup_namespace),
    # Limits first: lowering is always allowed, and nothing below needs them raised.
    # Raising one needs CAP_SYS_RESOURCE on the host, so before the user namespace.
    ("set_rlimits", _set_rlimits),
    # Every namespace and mount above was made as host root, so they stay owned by
    # the host's user namespace: inside, even CAP_SYS_ADMIN cannot mount or undo
    # them. Joining resets the bounding set to full, so the drop comes after.
    ("enter_user_namespace", _enter_user_namespace),
    # PR_CAPBSET_DROP needs CAP_SETPCAP, so the bounding set shrinks while we are still full root.
    ("drop_bounding_caps", _drop_bounding_caps),
    # No setuid binary or file capability can give back what is dropped below.
    ("set_no_new_privs", _set_no_new_privs),
    # Groups before the uid: setgroups/setgid need CAP_SETGID, gone for a non-root uid.
    ("set_groups", _set_groups),
    ("set_uid", _set_uid),
    # After the uid change (which clears the effective set): the final sets, then ambient.
    ("set_caps", _set_caps),
    # Last before exec: the filter was compiled for the final capability set, and the
    # steps above make calls it denies a container (setns, unshare). Loading needs
    # no_new_privs (set above) once CAP_SYS_ADMIN is gone. What runs after it (exec, and
    # orch-init's execveat, fork, wait4, kill, write) is all allowed by the profile.
    ("load_seccomp", _load_seccomp),
)


def run_setup(s: sc.Syscalls, plan: InitPlan, steps: tuple[Step, ...] = SETUP_STEPS) -> None:
    """Run each step in order; a failure raises OSError annotated with the step name."""
    for name, step in steps:
        try:
            if name == plan.fault_step:
                raise OSError(errno.EIO, f"fault injected at {name} (test seam)")
            step(s, plan)
        except OSError as exc:
            exc.add_note(f"container init step {name}")
            raise


def exec_command(s: sc.Syscalls, plan: InitPlan) -> NoReturn:
    """Replace PID 1 with the command; argv[0] is looked up in the container's PATH."""
    s.execvpe(plan.argv[0], plan.argv, plan.env)


# What orch-init (init=True) passes on to the command, as tini and docker-init do; the exec
# path's C process ignores the others. The list in native/orch-init.c is the same.
FORWARDED_SIGNALS = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCONT,
)


def exec_reaper(s: sc.Syscalls, plan: InitPlan, image: int, report_fd: int) -> NoReturn:
    """Replace PID 1 with orch-init (native/orch-init.c), from its sealed memfd `image`: it starts
    the command, forwards signals to it, reaps orphans, and reports on report_fd (kept open
    across the exec; orch-init makes it close-on-exec for the command)."""
    os.set_inheritable(report_fd, True)
    s.execve_fd(image, ("init", str(report_fd), *plan.argv), plan.env)


def exec_failure(argv0: str, exc: OSError) -> tuple[int, str]:
    """Shell convention: 127 when the command is missing, 126 when it cannot run."""
    code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
    reason = os.strerror(exc.errno or errno.EIO).lower()
    return code, f'exec "{argv0}": {reason}'
