"""User namespaces: container root is an unprivileged range of host ids.

With `ContainerConfig.user_namespace=True` the container's ids 0..65535 map to
host ids `host_id`..`host_id+65535`, a range of its own (as Kubernetes with
`hostUsers: false` or Podman's `--userns=auto` do), so a process that escapes
is nobody on the host and cannot touch another container's files.

How the pieces fit (see docs/runtime.md):
* the Runtime picks a free range (`allocate`) and records it in spec.json;
* the shim, still root on the host, creates the namespace and writes its maps
  (`create`), before forking PID 1, which inherits the namespace's fd;
* PID 1 builds every mount as host root (image layers are idmapped with that
  fd, so files owned by 0 in the image are owned by container root), then
  joins the namespace (`setns`) just before it drops capabilities and execs.
  The mount, UTS, IPC, net, pid and cgroup namespaces stay owned by the host's
  user namespace, so even container root with CAP_SYS_ADMIN cannot mount or
  set the hostname.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from node.runtime.sys import CLONE_NEWUSER, LinuxSyscalls

__all__ = ["DEFAULT_RANGE", "IDS_PER_CONTAINER", "IdRange", "allocate", "create"]

IDS_PER_CONTAINER = 65536  # uids/gids 0..65535 inside, as Kubernetes and Podman give each container


@dataclass(frozen=True, slots=True)
class IdRange:
    """Host ids [first, first + count) that the Runtime may hand out, IDS_PER_CONTAINER at a time.

    The default starts at 2^30, above what useradd hands out for /etc/subuid
    (SUB_UID_MAX 600100000), so it does not collide with users' rootless ranges.
    """

    first: int = 1 << 30
    count: int = IDS_PER_CONTAINER * 1024

    def __post_init__(self) -> None:
        if self.first <= 0 or self.count < IDS_PER_CONTAINER or self.first + self.count > 1 << 32:
            raise ValueError(
                f"user namespace id range {self.first}:{self.count} must hold at least one block of 65536 ids"
            )

    @classmethod
    def parse(cls, text: str) -> IdRange:
        """ "FIRST:COUNT", e.g. "1073741824:67108864"."""
        first, sep, count = text.partition(":")
        if not sep or not first.isdigit() or not count.isdigit():
            raise ValueError(f'user namespace id range "{text}": expected FIRST:COUNT, e.g. 1073741824:67108864')
        return cls(int(first), int(count))


DEFAULT_RANGE = IdRange()


def allocate(pool: IdRange, in_use: Iterable[int]) -> int | None:
    """The lowest free block's first host id, or None when every block is taken."""
    taken = set(in_use)
    for host_id in range(pool.first, pool.first + pool.count - IDS_PER_CONTAINER + 1, IDS_PER_CONTAINER):
        if host_id not in taken:
            return host_id
    return None


def create(host_id: int) -> int:
    """A new user namespace mapping ids 0..65535 to host_id.., as an O_CLOEXEC fd.

    A namespace needs a process to be created in: a short-lived child unshares
    it, we write its maps (only a process with CAP_SETUID/CAP_SETGID in the
    parent namespace may map ranges other than its own ids), keep a reference
    by opening /proc/<child>/ns/user, and let the child go. Single-threaded
    callers only (the shim), since it forks.
    """
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            LinuxSyscalls().unshare(CLONE_NEWUSER)
            os.write(ready_w, b"U")
            os.read(done_r, 1)  # stay until the parent holds the namespace
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"U":
            raise OSError(f"could not create a user namespace (child {child} failed unshare)")
        line = f"0 {host_id} {IDS_PER_CONTAINER}\n".encode()
        for name in ("uid_map", "gid_map"):
            fd = os.open(f"/proc/{child}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        return os.open(f"/proc/{child}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(done_w)  # EOF lets the child exit
        os.waitpid(child, 0)
