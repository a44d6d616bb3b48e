"""Errors raised by the container runtime.

    ContainerError                 base: anything the runtime refuses or fails to do
    ├── NotFound                   no container with that id in the state dir
    ├── NotRunning                 exec into a container that is not running
    ├── RuntimeStartError          host-side failure while starting (rootfs, cgroup, shim, mounts)
    └── CgroupWriteError           a cgroup file could not be written (path, data, errno)

A command that cannot be exec'd is *not* an error: it is an EXITED state with
reason "StartError" (exit 127/126), because it is the container's outcome.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CgroupWriteError", "ContainerError", "NotFound", "NotRunning", "RuntimeStartError"]


class ContainerError(Exception):
    """Base class; `id` names the container when one is involved."""

    def __init__(self, message: str, *, id: str = "") -> None:
        super().__init__(f"{id}: {message}" if id else message)
        self.id = id


class NotFound(ContainerError):
    def __init__(self, id: str, state_dir: Path) -> None:
        super().__init__(f"no such container in {state_dir}", id=id)
        self.state_dir = state_dir


class NotRunning(ContainerError):
    """exec needs a running container (its PID 1 alive, the command exec'd)."""

    def __init__(self, id: str) -> None:
        super().__init__("container is not running", id=id)


class RuntimeStartError(ContainerError):
    """Starting failed on the host side; nothing of the container is left behind."""


class CgroupWriteError(ContainerError):
    def __init__(self, path: Path, data: str, errno: int, *, id: str = "") -> None:
        super().__init__(f"write {data!r} to {path}: {os.strerror(errno)}", id=id)
        self.path = path
        self.data = data
        self.errno = errno
