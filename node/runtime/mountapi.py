"""The new mount API (Linux 5.12+ for everything used here) through ctypes: glibc 2.36 has no
wrappers. A tree is copied from a descriptor (open_tree), given its attributes while detached
(mount_setattr: read-only, nosuid, nodev, an id mapping), then attached (move_mount), to a path
or to a descriptor: nothing in between is looked up by path again.
"""

from __future__ import annotations

import ctypes
import errno
import os

__all__ = [
    "MOUNT_ATTR_NODEV",
    "MOUNT_ATTR_NOSUID",
    "MOUNT_ATTR_RDONLY",
    "attach",
    "clone_tree",
    "new_tmpfs",
    "set_attrs",
]

# Added after Linux unified its syscall tables (5.1+): one number on every architecture.
_SYSCALLS = {
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "mount_setattr": 442,
}
_FSOPEN_CLOEXEC = 1
_FSMOUNT_CLOEXEC = 1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOVE_MOUNT_T_EMPTY_PATH = 0x40
_MOUNT_ATTR_IDMAP = 0x00100000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _call(name: str, *args: object) -> int:
    return int(_libc.syscall(_SYSCALLS[name], *args))


def _check(result: int, what: str, where: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", where)
    return result


def clone_tree(dirfd: int, path: str, where: str) -> int:
    """A detached copy of the mount tree at `path` under dirfd ("": dirfd itself), submounts
    included (a recursive bind). The caller closes it; `where` names it in errors."""
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | _AT_RECURSIVE | (_AT_EMPTY_PATH if not path else 0)
    return _check(_call("open_tree", dirfd, os.fsencode(path), ctypes.c_uint(flags)), "open_tree", where)


def set_attrs(tree: int, attrs: int, userns_fd: int, where: str) -> None:
    """MOUNT_ATTR_* on every mount of the tree; userns_fd >= 0: ids mapped through that namespace."""
    attr = _MountAttr(attrs | (_MOUNT_ATTR_IDMAP if userns_fd >= 0 else 0), 0, 0, max(userns_fd, 0))
    res = _call("mount_setattr", tree, b"", _AT_EMPTY_PATH | _AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr))
    _check(res, "mount_setattr", where)


def attach(tree: int, dirfd: int, path: str, where: str) -> None:
    """Attach the tree at `path` under dirfd ("": onto dirfd itself)."""
    flags = _MOVE_MOUNT_F_EMPTY_PATH | (_MOVE_MOUNT_T_EMPTY_PATH if not path else 0)
    _check(_call("move_mount", tree, b"", dirfd, os.fsencode(path), flags), "move_mount", where)


def new_tmpfs(options: dict[str, str], flags: tuple[str, ...], attrs: int, where: str) -> int:
    """A detached tmpfs (fsopen, fsconfig, fsmount): reachable only through the returned fd
    (O_PATH; usable as a dir_fd) until it is attached. `flags` the kernel does not know (e.g.
    "noswap" before Linux 6.4) are skipped; an unknown option in `options` is an error."""
    fs = _check(_call("fsopen", b"tmpfs", ctypes.c_uint(_FSOPEN_CLOEXEC)), "fsopen tmpfs", where)
    try:
        for key, value in options.items():
            res = _call("fsconfig", fs, _FSCONFIG_SET_STRING, key.encode(), value.encode(), 0)
            _check(res, f"fsconfig {key}={value}", where)
        for flag in flags:
            if (
                _call("fsconfig", fs, _FSCONFIG_SET_FLAG, flag.encode(), None, 0) < 0
                and ctypes.get_errno() != errno.EINVAL
            ):
                _check(-1, f"fsconfig {flag}", where)
        _check(_call("fsconfig", fs, _FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig create", where)
        return _check(_call("fsmount", fs, _FSMOUNT_CLOEXEC, ctypes.c_uint(attrs)), "fsmount", where)
    finally:
        os.close(fs)
