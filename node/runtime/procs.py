"""Processes the Runtime did not start itself (shims, containers): found by pid + start time."""

from __future__ import annotations

import contextlib
import os
import select
import time
from pathlib import Path

from node.runtime.layout import proc_start_time

__all__ = ["ended_fd", "is_alive", "open_pidfd", "shims_of", "wait_fd", "wait_gone"]


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


def wait_gone(pid: int | None, start_time: int | None, timeout: float) -> bool:
    """Until that process has exited (True), or timeout (False). Not running is gone."""
    fd = open_pidfd(pid, start_time)
    if fd is None:
        return True
    try:
        return wait_fd(fd, timeout)
    finally:
        os.close(fd)


def shims_of(cdir: Path, proc: Path = Path("/proc")) -> list[tuple[int, int | None]]:
    """(pid, start time) of the shims supervising cdir, found by their title (shim.supervise
    sets "orch-shim <cdir>"): for a container whose start.json is lost. Slow; rarely needed."""
    title = f"orch-shim {cdir}".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "cmdline").read_bytes().split(b"\0", 1)[0] == title:
                found.append((int(entry.name), proc_start_time(int(entry.name), proc)))
    return found
