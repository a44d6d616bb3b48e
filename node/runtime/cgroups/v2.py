"""cgroup v2 driver: one unified hierarchy, <root>/<path>.

Controllers must be enabled in cgroup.subtree_control of every ancestor
before a child can use them; only those listed in cgroup.controllers are.
Devices have no controller file in v2: an eBPF program attached to the
cgroup decides (devices.py, bpf.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path

from node.runtime.cgroups.bpf import attach_device_program
from node.runtime.cgroups.common import (
    CPU_PERIOD_US,
    CgroupStats,
    Limits,
    apply_pids,
    cpu_quota_us,
    cpu_shares,
    kill_procs_until_empty,
    read_int,
    read_keyed,
    rmdir_retry,
    warm_attach,
    working_set,
    write,
)

__all__ = [
    "V2Driver",
    "apply_cpu",
    "apply_memory",
    "apply_pids",
    "cpu_weight",
    "enable_controllers",
]


ACCOUNTING = frozenset({"cpu", "memory", "pids"})


def cpu_weight(millis: int) -> int:
    """cpu.weight (1..10000) from v1 shares (2..262144), the mapping runc and crun use."""
    return 1 + ((cpu_shares(millis) - 2) * 9999) // 262142


def enable_controllers(root: Path, path: str, wanted: AbstractSet[str]) -> None:
    """Enable `wanted` (as far as available) in subtree_control of every ancestor; create the dirs.

    Only what is missing is written: above a delegated systemd unit, systemd has enabled
    them already, and there we must not write at all (see placement.py)."""
    cg = root
    for part in Path(path).parts:
        available = set((cg / "cgroup.controllers").read_text().split())
        if todo := sorted((wanted & available) - _enabled(cg)):
            write(cg / "cgroup.subtree_control", " ".join(f"+{c}" for c in todo))
        cg = cg / part
        cg.mkdir(exist_ok=True)


def _enabled(cg: Path) -> set[str]:
    try:  # "+" only in the fake trees of the tests, which hold what was written
        return {c.lstrip("+") for c in (cg / "cgroup.subtree_control").read_text().split()}
    except FileNotFoundError:
        return set()


def apply_memory(cg: Path, limit_bytes: int) -> None:
    if limit_bytes <= 0:
        return
    write(cg / "memory.max", str(limit_bytes))
    if (cg / "memory.swap.max").exists():  # absent without swap accounting
        write(cg / "memory.swap.max", "0")


def apply_cpu(cg: Path, millis: int) -> None:
    if millis <= 0:
        return
    write(cg / "cpu.max", f"{cpu_quota_us(millis)} {CPU_PERIOD_US}")
    write(cg / "cpu.weight", str(cpu_weight(millis)))


class V2Driver:
    """attach_devices(cgroup dir): the device allow-list; tests on a fake tree record it instead."""

    name = "v2"

    def __init__(
        self, root: Path = Path("/sys/fs/cgroup"), attach_devices: Callable[[Path], None] = attach_device_program
    ) -> None:
        self.root = root
        self._attach_devices = attach_devices

    def create(self, path: str, limits: Limits) -> None:
        # Accounting, not only limits: without these controllers a container without limits has no
        # memory.current, pids.current or memory.events (runc and systemd enable them alike).
        enable_controllers(self.root, path, ACCOUNTING)
        cg = self.root / path
        cg.mkdir(exist_ok=True)
        apply_memory(cg, limits.memory_bytes)
        apply_cpu(cg, limits.cpu_millis)
        apply_pids(cg, limits.pids)
        self._attach_devices(cg)

    def warm_attach(self) -> None:
        warm_attach(self.root, "", "cgroup.threads")

    def add_process(self, path: str, pid: int) -> None:
        write(self.root / path / "cgroup.procs", str(pid))

    def kill_all(self, path: str) -> None:
        cg = self.root / path
        if (cg / "cgroup.kill").exists():  # Linux >= 5.14: atomic, no fork race
            write(cg / "cgroup.kill", "1")
        kill_procs_until_empty(cg / "cgroup.procs")

    def populated(self, path: str) -> bool:
        return read_keyed(self.root / path / "cgroup.events").get("populated", 0) == 1

    def oom_killed(self, path: str) -> int:
        return read_keyed(self.oom_file(path)).get("oom_kill", 0)

    def oom_file(self, path: str) -> Path:
        return self.root / path / "memory.events"

    def stats(self, path: str) -> CgroupStats:
        cg = self.root / path
        memory = read_int(cg / "memory.current")
        inactive = read_keyed(cg / "memory.stat").get("inactive_file", 0)
        cpu = read_keyed(cg / "cpu.stat")
        return CgroupStats(
            cpu_usage_ns=cpu.get("usage_usec", 0) * 1000,
            memory_bytes=memory,
            pids=read_int(cg / "pids.current"),
            memory_working_set_bytes=working_set(memory, inactive),
            oom_kills=self.oom_killed(path),
            cpu_periods=cpu.get("nr_periods", 0),
            cpu_throttled_periods=cpu.get("nr_throttled", 0),
            cpu_throttled_ns=cpu.get("throttled_usec", 0) * 1000,
        )

    def remove(self, path: str) -> None:
        rmdir_retry(self.root / path)

    def exists(self, path: str) -> bool:
        return (self.root / path).is_dir()

    def children(self, path: str) -> list[str]:
        cg = self.root / path
        return sorted(e.name for e in os.scandir(cg) if e.is_dir()) if cg.is_dir() else []
