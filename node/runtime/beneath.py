"""Directories opened under a root without ever leaving it: openat2(2) (Linux 5.6+).

Two scopes. RESOLVE_IN_ROOT resolves as if `root` were "/" (a container's mount points,
in an image whose symlinks were written by anyone: `/data -> /etc` lands on the image's
/etc, never the host's). RESOLVE_BENEATH refuses any step out of `root` (EXDEV) (a hostPath
below the directory the node allows: a symlink out of it is refused, not followed). Both
refuse magic links (/proc/self/root) and are free of races: every step is taken on a file
descriptor, and the result is a descriptor too, which the caller mounts on or from.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform

__all__ = [
    "RESOLVE_BENEATH",
    "RESOLVE_IN_ROOT",
    "open_beneath",
    "open_dir",
    "open_in_root",
    "openat2",
    "path_of",
]

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    if "\0" in path:  # C would read it as the path's end
        raise OSError(errno.EINVAL, "a NUL byte in the path", path)
    how = _OpenHow(flags, 0, resolve)
    nr = _SYS_OPENAT2[platform.machine()]
    fd = int(_libc.syscall(nr, dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def open_dir(root_fd: int, path: str, scope: int, *, create: bool = False, mode: int = 0o755) -> int:
    """An O_PATH fd of the directory `path` under root_fd ("" or "/": the root itself), resolved
    in `scope`. With create, missing directories are made one at a time, each with mkdirat in
    its resolved parent (mkdir never follows a symlink: a dangling one stays ENOENT)."""
    parts = [part for part in path.split("/") if part]
    current = openat2(root_fd, ".", _DIR_FLAGS, scope | RESOLVE_NO_MAGICLINKS)
    try:
        for i, part in enumerate(parts):
            prefix = "/".join(parts[: i + 1])
            try:
                found = openat2(root_fd, prefix, _DIR_FLAGS, scope | RESOLVE_NO_MAGICLINKS)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile, or a dangling link: the open decides
                    os.mkdir(part, mode, dir_fd=current)
                try:
                    found = openat2(root_fd, prefix, _DIR_FLAGS, scope | RESOLVE_NO_MAGICLINKS)
                except FileNotFoundError:
                    raise OSError(errno.ENOENT, f"/{prefix} is a symlink to a missing directory; refused") from None
            os.close(current)
            current = found
    except OSError as exc:
        os.close(current)
        if exc.errno == errno.EXDEV:
            raise OSError(errno.EXDEV, f"{path} leads out of its root (a symlink or ..); refused") from exc
        raise
    return current


def path_of(fd: int) -> str:
    """Where an fd points now, as this process sees it (for checks and messages only)."""
    return os.readlink(f"/proc/self/fd/{fd}")


def open_in_root(root: str, path: str) -> tuple[int, str]:
    """The directory `path` inside `root` as if it were "/", made if missing: its O_PATH fd and
    where it ended up, relative to root ("/data")."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        fd = open_dir(root_fd, path, RESOLVE_IN_ROOT, create=True)
        top, found = path_of(root_fd), path_of(fd)
    finally:
        os.close(root_fd)
    base = top.rstrip("/")  # "/" itself: after pivot_root (secret volumes)
    inside = "/" if found == top else found.removeprefix(base) if found.startswith(base + "/") else ""
    if not inside:  # cannot happen with RESOLVE_IN_ROOT; refuse rather than trust it
        os.close(fd)
        raise OSError(errno.EXDEV, f"{path} resolves to {found}, outside {top}")
    return fd, inside


def open_beneath(root: str, path: str) -> int:
    """An O_PATH fd of the existing directory `path` beneath `root`, never resolved out of it."""
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        return open_dir(root_fd, path, RESOLVE_BENEATH)
    finally:
        os.close(root_fd)
