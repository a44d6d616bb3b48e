"""Reach into a container's network namespace without forking.

A netlink socket talks to the network namespace it was created in, for its
whole life, whichever thread later uses it. And setns(CLONE_NEWNET) changes
the namespace of the calling *thread* only. So a throwaway thread enters the
container's namespace, creates one NETLINK_ROUTE socket, and exits; the
caller wraps the socket in ``IPRoute(fileno=...)`` and configures the
container from its own thread.

Why not the alternatives: pyroute2's ``IPRoute(netns=...)`` forks the
caller (unsafe in the multithreaded gRPC agent) and otherwise wants a name
under /run/netns; a ``python -m`` helper subprocess costs ~30 ms of
interpreter start-up. The throwaway thread costs well under a millisecond
and leaves nothing behind: no mount, no process, and no pooled thread ever
runs in the container's namespace, because it ends right after.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Iterator

from node.network.errors import NamespaceError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def open_netns(pid: int, proc: str = "/proc") -> Iterator[int]:
    """An O_RDONLY fd on ``pid``'s network namespace, closed on exit.

    Holding the fd pins the namespace: every later step uses it, not the pid,
    so a pid reused in between cannot redirect us to another namespace.
    """
    path = f"{proc}/{pid}/ns/net"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NamespaceError(pid, "open", exc.errno or 0) from exc
    try:
        yield fd
    finally:
        os.close(fd)


def netlink_socket_in(netns_fd: int, pid: int) -> socket.socket:
    """A NETLINK_ROUTE socket bound to the namespace ``netns_fd`` (``pid`` is for errors)."""
    result: list[socket.socket | int] = []

    def enter_and_create() -> None:
        if _libc.setns(netns_fd, CLONE_NEWNET) != 0:
            result.append(ctypes.get_errno())
            return
        try:
            result.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE))
        except OSError as exc:
            result.append(exc.errno or 0)
        # No setns back: this thread ends here and is never reused.

    worker = threading.Thread(target=enter_and_create, name=f"netns-{pid}", daemon=True)
    worker.start()
    worker.join()
    if not result:
        raise NamespaceError(pid, "enter", 0)
    outcome = result[0]
    if isinstance(outcome, int):
        raise NamespaceError(pid, "enter", outcome)
    return outcome
