"""Processes the Runtime did not start itself (shims, containers): found by pid + start time."""

from __future__ import annotations

import contextlib
import os
import select
import time

from node.runtime.layout import proc_start_time

__all__ = ["ended_fd", "is_alive", "open_pidfd", "wait_fd"]


def is_alive(pid: int | None, start_time: int | None) -> bool:
    """True if pid runs and is the same process (same start time), not a reused pid."""
    return pid is not None and start_time is not None and proc_start_time(pid) == start_time


def open_pidfd(pid: int | None, start_time: int | None) -> int | None:
    """A pidfd for that exact process, or None if it has ended.

    The start time is checked after opening, so the pidfd cannot refer to a
    process that reused the pid.
    """
    if pid is None:
        return None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if not is_alive(pid, start_time):
        os.close(fd)
        return None
    return fd


def ended_fd() -> int:
    """An fd that is already readable (EOF of a pipe): 'it has ended' for exit_fd callers."""
    r, w = os.pipe()
    os.close(w)
    return r


def wait_fd(fd: int, timeout: float) -> bool:
    """Wait until fd is readable (a pidfd: the process ended); False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                return True
        if time.monotonic() >= deadline:
            return False
