"""A process tree on the host, and how to end all of it (the exec helper's sweep).

`root` is a child subreaper (exec_container.py), so a process below it whose parent dies is
re-parented to it and stays in the tree. `proc` is /proc, or a fake tree in tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

__all__ = ["children", "descendants", "sweep"]


def children(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """pid's children (of every thread); [] once it is gone."""
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for tid in os.listdir(proc / str(pid) / "task"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                out += [int(p) for p in (proc / str(pid) / "task" / tid / "children").read_text().split()]
    return out


def descendants(root: int, proc: Path = Path("/proc")) -> list[int]:
    """Every process below root, parents before their children."""
    found: list[int] = []
    queue = [root]
    while queue:
        kids = [k for k in children(queue.pop(0), proc) if k not in found]
        found += kids
        queue += kids
    return found


def _ppid(pid: int, proc: Path) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def sweep(root: int, proc: Path = Path("/proc")) -> int:
    """SIGKILL every process below root; returns how many there were.

    First each one is stopped (a stopped process cannot fork), until a walk finds none that is
    not; then all are killed at once. Each is held by a pidfd taken while its parent is known to
    be one of ours, so a pid reused meanwhile by another process is never signalled.
    """
    held: dict[int, int] = {}
    try:
        while new := [p for p in descendants(root, proc) if p not in held]:
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    fd = os.pidfd_open(pid)
                    if _ppid(pid, proc) not in {root, *held}:
                        os.close(fd)  # gone, and the pid already reused: not ours
                        continue
                    held[pid] = fd
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(fd, signal.SIGSTOP)
            if not any(p in held for p in new):
                break  # only pids that ended meanwhile: the next walk would find them again
        for fd in held.values():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        return len(held)
    finally:
        for fd in held.values():
            os.close(fd)
