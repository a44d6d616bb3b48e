"""cgroup drivers behind one `CgroupDriver` Protocol.

Vocabulary: a cgroup *path* is relative ("orch/node-1/web-1"); the driver's
*root* is where the hierarchies are mounted (/sys/fs/cgroup, a tmp tree in
tests). `detect` picks the driver by the filesystem magic at the root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from node.runtime.cgroups.common import CgroupStats, Limits, cpu_quota_us, cpu_shares
from node.runtime.cgroups.v1 import V1Driver
from node.runtime.cgroups.v2 import V2Driver
from node.runtime.sys import statfs_magic

__all__ = [
    "CGROUP2_SUPER_MAGIC",
    "CgroupDriver",
    "CgroupStats",
    "Limits",
    "V1Driver",
    "V2Driver",
    "cpu_quota_us",
    "cpu_shares",
    "detect",
    "driver_for",
]

CGROUP2_SUPER_MAGIC = 0x63677270


class CgroupDriver(Protocol):
    name: str  # "v1" | "v2": persisted so the shim can rebuild the driver
    root: Path

    def create(self, path: str, limits: Limits) -> None: ...
    def warm_attach(self) -> None: ...  # background: makes the next add_process fast (v1: ~10 ms)
    def add_process(self, path: str, pid: int) -> None: ...
    def kill_all(self, path: str) -> None: ...
    def populated(self, path: str) -> bool: ...
    def oom_killed(self, path: str) -> int: ...  # OOM kills so far in this cgroup
    def oom_file(self, path: str) -> Path: ...  # where oom_killed reads them ("oom_kill N"): orch-shim reads it too
    def stats(self, path: str) -> CgroupStats: ...
    def remove(self, path: str) -> None: ...  # ENOENT is success
    def exists(self, path: str) -> bool: ...
    def children(self, path: str) -> list[str]: ...


def detect(root: Path = Path("/sys/fs/cgroup")) -> str:
    """ "v2" when root itself is cgroup2 (pure unified); otherwise "v1" (legacy or hybrid)."""
    return "v2" if statfs_magic(root) == CGROUP2_SUPER_MAGIC else "v1"


def driver_for(name: str | None = None, root: Path = Path("/sys/fs/cgroup")) -> CgroupDriver:
    name = name or detect(root)
    if name == "v2":
        return V2Driver(root)
    if name == "v1":
        return V1Driver(root)
    raise ValueError(f"unknown cgroup driver {name!r}")
