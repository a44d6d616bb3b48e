"""cgroup v1 driver: one hierarchy per controller (memory, cpu, cpuacct, pids, devices).

The container's cgroup is <root>/<controller>/<path> in each mounted hierarchy;
a controller that is not mounted is skipped only when no limit needs it. The
devices controller is always needed: it keeps the container off the host's disks.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    read_pids,
    rmdir_retry,
    warm_attach,
    working_set,
    write,
)
from node.runtime.cgroups.devices import DEFAULT_RULES, DeviceRule, v1_lines
from node.runtime.errors import ContainerError

__all__ = ["CONTROLLERS", "V1Driver", "apply_cpu", "apply_devices", "apply_memory", "apply_pids"]

CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "devices")


def apply_memory(cg: Path, limit_bytes: int) -> None:
    if limit_bytes <= 0:
        return
    write(cg / "memory.limit_in_bytes", str(limit_bytes))
    # memsw = memory + swap; equal to the limit means no swap. It must be set
    # after limit_in_bytes (the kernel keeps memsw >= limit) and exists only
    # with swap accounting.
    if (cg / "memory.memsw.limit_in_bytes").exists():
        write(cg / "memory.memsw.limit_in_bytes", str(limit_bytes))


def apply_cpu(cg: Path, millis: int) -> None:
    if millis <= 0:
        return
    write(cg / "cpu.cfs_period_us", str(CPU_PERIOD_US))
    write(cg / "cpu.cfs_quota_us", str(cpu_quota_us(millis)))
    write(cg / "cpu.shares", str(cpu_shares(millis)))


def apply_devices(cg: Path, rules: tuple[DeviceRule, ...] = DEFAULT_RULES) -> None:
    """Deny everything, then allow `rules`, one line per write (the kernel takes one per write).

    A new cgroup starts with its parent's list: at the top of the hierarchy, every device.
    """
    write(cg / "devices.deny", "a")
    for line in v1_lines(rules):
        write(cg / "devices.allow", line)


class V1Driver:
    name = "v1"

    def __init__(self, root: Path = Path("/sys/fs/cgroup")) -> None:
        self.root = root

    def _dirs(self, path: str) -> dict[str, Path]:
        """Controller -> cgroup dir, for mounted controllers; co-mounted ones (cpu,cpuacct) once."""
        dirs: dict[str, Path] = {}
        seen: set[Path] = set()
        for ctrl in CONTROLLERS:
            base = self.root / ctrl
            if base.is_dir() and (real := base.resolve()) not in seen:
                seen.add(real)
                dirs[ctrl] = base / path
        return dirs

    def create(self, path: str, limits: Limits) -> None:
        dirs = self._dirs(path)
        needed = {"memory": limits.memory_bytes, "cpu": limits.cpu_millis, "pids": limits.pids, "devices": 1}
        for ctrl, value in needed.items():
            if value > 0 and ctrl not in dirs:
                raise ContainerError(f"cgroup v1 controller {ctrl} is not mounted under {self.root}")
        for cg in dirs.values():
            cg.mkdir(parents=True, exist_ok=True)
        if "memory" in dirs:
            apply_memory(dirs["memory"], limits.memory_bytes)
        if "cpu" in dirs:
            apply_cpu(dirs["cpu"], limits.cpu_millis)
        if "pids" in dirs:
            apply_pids(dirs["pids"], limits.pids)
        apply_devices(dirs["devices"])

    def warm_attach(self) -> None:
        # Any hierarchy will do (the kernel lock is global); pids has no attach side effects.
        for ctrl in ("pids", *CONTROLLERS):
            if (self.root / ctrl).is_dir():
                warm_attach(self.root / ctrl, ctrl, "tasks")
                return

    def add_process(self, path: str, pid: int) -> None:
        for cg in self._dirs(path).values():
            write(cg / "cgroup.procs", str(pid))

    def _procs_file(self, path: str) -> Path:
        dirs = self._dirs(path)
        # Every controller holds the same processes; pids is the one meant to count them.
        cg = dirs.get("pids") or dirs.get("memory") or next(iter(dirs.values()), self.root / "pids" / path)
        return cg / "cgroup.procs"

    def kill_all(self, path: str) -> None:
        # v1 has no cgroup.kill; repeat until empty so racing forks are caught too.
        kill_procs_until_empty(self._procs_file(path))

    def populated(self, path: str) -> bool:
        return bool(read_pids(self._procs_file(path)))

    def oom_killed(self, path: str) -> int:
        return read_keyed(self.oom_file(path)).get("oom_kill", 0)

    def oom_file(self, path: str) -> Path:
        return self.root / "memory" / path / "memory.oom_control"

    def stats(self, path: str) -> CgroupStats:
        memory = read_int(self.root / "memory" / path / "memory.usage_in_bytes")
        inactive = read_keyed(self.root / "memory" / path / "memory.stat").get("total_inactive_file", 0)
        cfs = read_keyed(self.root / "cpu" / path / "cpu.stat")
        return CgroupStats(
            cpu_usage_ns=read_int(self.root / "cpuacct" / path / "cpuacct.usage"),
            memory_bytes=memory,
            pids=read_int(self.root / "pids" / path / "pids.current"),
            memory_working_set_bytes=working_set(memory, inactive),
            oom_kills=self.oom_killed(path),
            cpu_periods=cfs.get("nr_periods", 0),
            cpu_throttled_periods=cfs.get("nr_throttled", 0),
            cpu_throttled_ns=cfs.get("throttled_time", 0),
        )

    def remove(self, path: str) -> None:
        for cg in self._dirs(path).values():
            rmdir_retry(cg)

    def exists(self, path: str) -> bool:
        return any(cg.is_dir() for cg in self._dirs(path).values())

    def children(self, path: str) -> list[str]:
        names: set[str] = set()
        for cg in self._dirs(path).values():
            if cg.is_dir():
                names.update(e.name for e in os.scandir(cg) if e.is_dir())
        return sorted(names)
