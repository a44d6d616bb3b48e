"""File helpers shared by the v1 and v2 drivers: every write error names path and data."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from node.runtime.errors import CgroupWriteError

__all__ = [
    "CPU_PERIOD_US",
    "CgroupStats",
    "Limits",
    "cpu_quota_us",
    "cpu_shares",
    "kill_procs_until_empty",
    "own_cgroup",
    "read_int",
    "read_keyed",
    "read_pids",
    "rmdir_retry",
    "warm_attach",
    "working_set",
    "write",
]

CPU_PERIOD_US = 100_000  # 100 ms, the kernel's and Kubernetes' default CFS period


@dataclass(frozen=True, slots=True)
class Limits:
    cpu_millis: int = 0  # 0 = unlimited
    memory_bytes: int = 0  # 0 = unlimited; swap is always disabled
    pids: int = 0  # 0 = unlimited


@dataclass(frozen=True, slots=True)
class CgroupStats:
    cpu_usage_ns: int
    memory_bytes: int  # usage, page cache included
    pids: int
    memory_working_set_bytes: int = 0  # usage - inactive_file, what the kubelet evicts on
    oom_kills: int = 0
    cpu_periods: int = 0  # CFS enforcement periods that elapsed while it ran (with a CPU limit)
    cpu_throttled_periods: int = 0  # of those, the ones in which it hit its quota
    cpu_throttled_ns: int = 0  # time it spent throttled


def working_set(usage: int, inactive_file: int) -> int:
    return max(0, usage - inactive_file)


def cpu_quota_us(millis: int, period_us: int = CPU_PERIOD_US) -> int:
    """CFS quota for `millis` thousandths of a CPU; -1 (no limit) for 0. The kernel minimum is 1 ms."""
    if millis <= 0:
        return -1
    return max(1000, millis * period_us // 1000)


def cpu_shares(millis: int) -> int:
    """v1 cpu.shares as Kubernetes computes it: 1024 per CPU, at least 2."""
    return max(2, millis * 1024 // 1000)


def write(path: Path, data: str) -> None:
    # O_CREAT|O_TRUNC change nothing on cgroupfs (an unknown file still fails
    # with EACCES) but let tests run the same code against a plain tmp tree.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupWriteError(path, data, exc.errno or errno.EIO) from exc


def apply_pids(cg: Path, limit: int) -> None:
    """pids.max has the same name and meaning in v1 and v2."""
    if limit > 0:
        write(cg / "pids.max", str(limit))


def read_int(path: Path, default: int = 0) -> int:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return default
    return default if text in ("", "max") else int(text)


def read_keyed(path: Path) -> dict[str, int]:
    """Parse 'key value' lines (memory.events, cpu.stat, memory.oom_control)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    result: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            result[key] = int(value)
    return result


def read_pids(procs_file: Path) -> list[int]:
    try:
        return [int(line) for line in procs_file.read_text().split()]
    except FileNotFoundError:
        return []


def kill_procs_until_empty(procs_file: Path, timeout: float = 5.0) -> None:
    """SIGKILL every pid listed until none is left: a fork racing the loop is caught next round."""
    deadline = time.monotonic() + timeout
    while pids := read_pids(procs_file):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {pids} still in {procs_file}")
        time.sleep(0.005)


def rmdir_retry(path: Path, timeout: float = 2.0) -> None:
    """rmdir a cgroup; EBUSY lasts briefly while dying tasks are still accounted. ENOENT is success."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def own_cgroup(controller: str, proc: Path = Path("/proc")) -> str | None:
    """The calling thread's cgroup path in the hierarchy of `controller` ("" = the v2 hierarchy)."""
    for line in (proc / "thread-self" / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


def warm_attach(hierarchy: Path, controller: str, tasks_file: str) -> threading.Thread:
    """Start, in a background thread, the RCU grace period the next cgroup attach would wait for.

    Every write to cgroup.procs/tasks takes the kernel's global cgroup_threadgroup_rwsem for
    writing, and unless another write happened moments before (or the hierarchy is mounted
    with favordynmods) that first waits for an RCU grace period: 6-15 ms here, on the
    critical path of a start. A no-op move, this thread into the cgroup it is already in,
    made when a start begins, pays that wait in the background: the shim's attach a few ms
    later finds the grace period passed (or waits only for the rest of it). Best effort.
    """
    args = (hierarchy, controller, tasks_file)
    thread = threading.Thread(target=_move_self_in_place, args=args, name="cgroup-warm-attach", daemon=True)
    thread.start()
    return thread


def _move_self_in_place(hierarchy: Path, controller: str, tasks_file: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        if (path := own_cgroup(controller)) is not None:
            fd = os.open(hierarchy / path.lstrip("/") / tasks_file, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(threading.get_native_id()).encode())
            finally:
                os.close(fd)
