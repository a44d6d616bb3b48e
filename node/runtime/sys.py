"""The one seam between the runtime and the kernel calls the stdlib lacks.

`LinuxSyscalls` reaches libc through ctypes (Python 3.11 has no os.unshare /
os.setns / mount / pivot_root); `RecordingSyscalls` only records, so unit tests
can assert the order of the container's init steps without root.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource as _resource
import signal
import socket
import stat
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn, Protocol

from node.runtime import beneath, mountapi
from node.runtime.mountapi import MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY
from node.runtime.seccomp.loader import load_program

__all__ = [
    "CLONE_NEWCGROUP",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUSER",
    "CLONE_NEWUTS",
    "MNT_DETACH",
    "MOUNT_ATTR_NODEV",
    "MOUNT_ATTR_NOSUID",
    "MOUNT_ATTR_RDONLY",
    "MS_BIND",
    "MS_MOVE",
    "MS_NODEV",
    "MS_NOEXEC",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "PR_CAPBSET_DROP",
    "PR_CAP_AMBIENT",
    "PR_CAP_AMBIENT_CLEAR_ALL",
    "PR_CAP_AMBIENT_RAISE",
    "PR_SET_DUMPABLE",
    "PR_SET_KEEPCAPS",
    "PR_SET_NO_NEW_PRIVS",
    "LinuxSyscalls",
    "RecordedExec",
    "RecordingSyscalls",
    "Syscalls",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_MOVE = 8192
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

# glibc has no wrapper (the new mount API's calls: mountapi.py).
_SYSCALLS = {"x86_64": {"pivot_root": 155}, "aarch64": {"pivot_root": 41}}
# Signals: glibc refuses to touch its own (32 and 33), so these go around it.
SIGNAL_SYSCALLS = {"x86_64": (13, 14), "aarch64": (134, 135)}  # rt_sigaction, rt_sigprocmask
_NSIG = 64

PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


class Syscalls(Protocol):
    def unshare(self, flags: int) -> None: ...
    def setns(self, fd: int, nstype: int) -> None: ...
    def idmapped_bind(self, source: str, target: str, userns_fd: int) -> None: ...  # recursive
    # A directory inside `root` as if it were "/" (created if missing): (O_PATH fd, its path from root).
    def open_in_root(self, root: str, path: str) -> tuple[int, str]: ...
    # Bind `path` beneath `root` (never out of it) onto target_fd, recursively, with MOUNT_ATTR_* attrs
    # on every mount of it before it is attached; userns_fd >= 0: idmapped through that namespace.
    def bind_tree(self, root: str, path: str, target_fd: int, attrs: int, userns_fd: int) -> None: ...
    def chown_beneath(self, root: str, path: str, owner: int) -> None: ...  # owner:owner, the dir only
    def close(self, fd: int) -> None: ...
    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None: ...
    def umount2(self, target: str, flags: int) -> None: ...
    def pivot_root(self, new_root: str, put_old: str) -> None: ...
    def sethostname(self, name: str) -> None: ...
    def chdir(self, path: str) -> None: ...
    def mkdir(self, path: str, mode: int) -> None: ...  # existing dir is fine
    def touch(self, path: str) -> None: ...  # bind-mount target for a file
    def mknod(self, path: str, major: int, minor: int, owner: int) -> None: ...  # char device, 0666, owner:owner
    def symlink(self, target: str, path: str) -> None: ...  # existing link is fine
    def kind(self, path: str) -> str | None: ...  # "dir", "file" or None (missing); follows symlinks
    def link_up(self, name: str) -> None: ...  # a network interface of our network namespace
    def sysctl(self, name: str, value: str) -> None: ...  # "net/ipv4/...": our network namespace's
    def prctl(self, option: int, arg2: int = 0, arg3: int = 0) -> None: ...
    def capset(self, effective: int, permitted: int, inheritable: int) -> None: ...  # 64-bit masks
    def setrlimit(self, resource: int, soft: int, hard: int) -> None: ...
    def setgroups(self, gids: Sequence[int]) -> None: ...
    def setresgid(self, gid: int) -> None: ...
    def setresuid(self, uid: int) -> None: ...
    def load_seccomp(self, program: bytes) -> None: ...  # a compiled BPF program (seccomp/loader.py)
    def execvpe(self, file: str, argv: Sequence[str], env: Mapping[str, str]) -> NoReturn: ...
    def execve_fd(self, fd: int, argv: Sequence[str], env: Mapping[str, str]) -> NoReturn: ...  # fexecve


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    # The interpreter is linked against libc: CDLL(None) finds its symbols without
    # ctypes.util.find_library, which imports subprocess and runs ldconfig (slow).
    return ctypes.CDLL(None, use_errno=True)


def _fs(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def default_signals() -> None:
    """Every disposition at its default and nothing blocked, as a command expects when it starts.
    Ignored signals survive exec, and a parent may have left even glibc's own ignored (32 was, in
    a test run), which no signal.signal() can undo: raw rt_sigaction can. Best effort: a custom
    seccomp profile may refuse it, and the command then inherits what it inherits anyway."""
    libc = _libc()
    sigaction, sigprocmask = SIGNAL_SYSCALLS[os.uname().machine]
    default = ctypes.create_string_buffer(32)  # a zeroed kernel struct sigaction: SIG_DFL, no flags
    for sig in range(1, _NSIG + 1):
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            libc.syscall(sigaction, sig, default, None, 8)
    libc.syscall(sigprocmask, 2, ctypes.create_string_buffer(8), None, 8)  # SIG_SETMASK, empty


class LinuxSyscalls:
    """Real calls through libc; every failure raises OSError with the path."""

    def __init__(self) -> None:
        self._libc = _libc()
        self._nr = _SYSCALLS[os.uname().machine]

    def _check(self, result: int, what: str, path: str | None = None) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}", path)

    def unshare(self, flags: int) -> None:
        self._check(self._libc.unshare(ctypes.c_int(flags)), "unshare")

    def setns(self, fd: int, nstype: int) -> None:
        self._check(self._libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")

    def idmapped_bind(self, source: str, target: str, userns_fd: int) -> None:
        """Bind source onto target with its ids shifted through userns_fd's maps (mount_setattr(2))."""
        tree = mountapi.clone_tree(mountapi.AT_FDCWD, source, source)
        try:
            mountapi.set_attrs(tree, 0, userns_fd, source)
            mountapi.attach(tree, mountapi.AT_FDCWD, target, target)
        finally:
            os.close(tree)

    def open_in_root(self, root: str, path: str) -> tuple[int, str]:
        return beneath.open_in_root(root, path)

    def bind_tree(self, root: str, path: str, target_fd: int, attrs: int, userns_fd: int) -> None:
        where = f"{root}/{path}"
        source = beneath.open_beneath(root, path)
        try:
            tree = mountapi.clone_tree(source, "", where)
        finally:
            os.close(source)
        try:
            mountapi.set_attrs(tree, attrs, userns_fd, where)
            mountapi.attach(tree, target_fd, "", beneath.path_of(target_fd))
        finally:
            os.close(tree)

    def chown_beneath(self, root: str, path: str, owner: int) -> None:
        fd = beneath.open_beneath(root, path)
        try:
            os.chown(f"/proc/self/fd/{fd}", owner, owner)  # an O_PATH fd: fchown would refuse it
        finally:
            os.close(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        res = self._libc.mount(_fs(source), _fs(target), _fs(fstype), ctypes.c_ulong(flags), _fs(data))
        self._check(res, f"mount {fstype or source or ''}", target)

    def umount2(self, target: str, flags: int) -> None:
        self._check(self._libc.umount2(_fs(target), ctypes.c_int(flags)), "umount", target)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        # glibc has no wrapper.
        self._check(self._libc.syscall(self._nr["pivot_root"], _fs(new_root), _fs(put_old)), "pivot_root", new_root)

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        self._check(self._libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")

    def chdir(self, path: str) -> None:
        os.chdir(path)

    def mkdir(self, path: str, mode: int) -> None:
        os.makedirs(path, mode, exist_ok=True)

    def touch(self, path: str) -> None:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))

    def mknod(self, path: str, major: int, minor: int, owner: int) -> None:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(path, 0o666)  # whatever the umask
        os.chown(path, owner, owner)

    def symlink(self, target: str, path: str) -> None:
        if not os.path.lexists(path):
            os.symlink(target, path)

    def kind(self, path: str) -> str | None:
        try:
            return "dir" if stat.S_ISDIR(os.stat(path).st_mode) else "file"
        except OSError:
            return None

    def link_up(self, name: str) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            request = struct.pack("16s24x", name.encode())  # struct ifreq: name, then ifr_flags
            flags = struct.unpack_from("H", fcntl.ioctl(sock, _SIOCGIFFLAGS, request), 16)[0]
            fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", name.encode(), flags | _IFF_UP))

    def sysctl(self, name: str, value: str) -> None:
        # /proc/sys/net shows the network namespace of the process that opens the file.
        path = f"/proc/sys/{name}"
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            raise OSError(exc.errno, f"sysctl {name}={value}: {exc.strerror}", path) from None
        finally:
            os.close(fd)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0) -> None:
        args = (ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0))
        self._check(self._libc.prctl(ctypes.c_int(option), *args), f"prctl {option}")

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for i, shift in enumerate((0, 32)):
            data[i].effective = (effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
        self._check(self._libc.capset(ctypes.byref(header), data), "capset")

    def setrlimit(self, resource: int, soft: int, hard: int) -> None:
        _resource.setrlimit(resource, (soft, hard))

    def setgroups(self, gids: Sequence[int]) -> None:
        os.setgroups(list(gids))

    def setresgid(self, gid: int) -> None:
        os.setresgid(gid, gid, gid)

    def setresuid(self, uid: int) -> None:
        os.setresuid(uid, uid, uid)

    def load_seccomp(self, program: bytes) -> None:
        load_program(program)

    def execvpe(self, file: str, argv: Sequence[str], env: Mapping[str, str]) -> NoReturn:
        # os.execvpe looks `file` up in env["PATH"], i.e. inside the container.
        os.execvpe(file, list(argv), dict(env))

    def execve_fd(self, fd: int, argv: Sequence[str], env: Mapping[str, str]) -> NoReturn:
        # execveat(fd, "", AT_EMPTY_PATH): no path, so nothing in the container's mount tree.
        os.execve(fd, list(argv), dict(env))


class RecordedExec(BaseException):
    """Raised by RecordingSyscalls.execvpe: the recorded init reached exec."""


class RecordingSyscalls:
    """Records (name, *args) for each call; `fail_on` makes that call raise OSError."""

    def __init__(
        self,
        fail_on: str = "",
        kinds: Mapping[str, str | None] | None = None,
        resolved: Mapping[str, str] | None = None,
    ) -> None:
        self.calls: list[tuple[object, ...]] = []
        self._fail_on = fail_on
        self._kinds = dict(kinds or {})  # path -> "dir" | "file" | None; unlisted paths are files
        self._resolved = dict(resolved or {})  # open_in_root: path -> where the image's links lead

    def _record(self, name: str, *args: object) -> None:
        self.calls.append((name, *args))
        if name == self._fail_on:
            raise OSError(1, f"{name}: recorded failure")

    def names(self) -> list[str]:
        return [str(call[0]) for call in self.calls]

    def unshare(self, flags: int) -> None:
        self._record("unshare", flags)

    def setns(self, fd: int, nstype: int) -> None:
        self._record("setns", fd, nstype)

    def idmapped_bind(self, source: str, target: str, userns_fd: int) -> None:
        self._record("idmapped_bind", source, target, userns_fd)

    def open_in_root(self, root: str, path: str) -> tuple[int, str]:
        self._record("open_in_root", root, path)
        return 100 + len(self.calls), self._resolved.get(path, path)

    def bind_tree(self, root: str, path: str, target_fd: int, attrs: int, userns_fd: int) -> None:
        self._record("bind_tree", root, path, target_fd, attrs, userns_fd)

    def chown_beneath(self, root: str, path: str, owner: int) -> None:
        self._record("chown_beneath", root, path, owner)

    def close(self, fd: int) -> None:
        self._record("close", fd)

    def mount(self, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        self._record("mount", source, target, fstype, flags, data)

    def umount2(self, target: str, flags: int) -> None:
        self._record("umount2", target, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        self._record("pivot_root", new_root, put_old)

    def sethostname(self, name: str) -> None:
        self._record("sethostname", name)

    def chdir(self, path: str) -> None:
        self._record("chdir", path)

    def mkdir(self, path: str, mode: int) -> None:
        self._record("mkdir", path, mode)

    def touch(self, path: str) -> None:
        self._record("touch", path)

    def mknod(self, path: str, major: int, minor: int, owner: int) -> None:
        self._record("mknod", path, major, minor, owner)

    def symlink(self, target: str, path: str) -> None:
        self._record("symlink", target, path)

    def kind(self, path: str) -> str | None:
        return self._kinds.get(path, "file")

    def link_up(self, name: str) -> None:
        self._record("link_up", name)

    def sysctl(self, name: str, value: str) -> None:
        self._record("sysctl", name, value)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0) -> None:
        self._record("prctl", option, arg2, arg3)

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        self._record("capset", effective, permitted, inheritable)

    def setrlimit(self, resource: int, soft: int, hard: int) -> None:
        self._record("setrlimit", resource, soft, hard)

    def setgroups(self, gids: Sequence[int]) -> None:
        self._record("setgroups", tuple(gids))

    def setresgid(self, gid: int) -> None:
        self._record("setresgid", gid)

    def setresuid(self, uid: int) -> None:
        self._record("setresuid", uid)

    def load_seccomp(self, program: bytes) -> None:
        self._record("load_seccomp", len(program))

    def execvpe(self, file: str, argv: Sequence[str], env: Mapping[str, str]) -> NoReturn:
        self._record("execvpe", file, tuple(argv), dict(env))
        raise RecordedExec(file)

    def execve_fd(self, fd: int, argv: Sequence[str], env: Mapping[str, str]) -> NoReturn:
        self._record("execve_fd", fd, tuple(argv), dict(env))
        raise RecordedExec(argv[0])


def set_process_title(title: str) -> None:
    """Overwrite this process's argv area (/proc/PID/cmdline, ps), as setproctitle does.

    A forked Python process keeps its parent's command line; the shim and the
    reaper are forked from the zygote, so they rename themselves. Best effort.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (stat fields 48, 49)
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    if size <= 1:
        return
    raw = title.encode()[: size - 1]
    ctypes.memmove(start, raw + b"\0" * (size - len(raw)), size)


def statfs_magic(path: Path) -> int:
    """f_type of statfs(2): os.statvfs does not expose it."""
    libc = _libc()
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64; f_type comes first
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
