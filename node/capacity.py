"""What this host offers, read from /proc (with a `root=` for tests)."""

from __future__ import annotations

import os
from pathlib import Path

from orch.v1 import types_pb2 as pb


def host_capacity(root: Path = Path("/")) -> pb.Resources:
    memory = 0
    for line in (root / "proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
            break
    pids = int((root / "proc/sys/kernel/pid_max").read_text().strip())
    return pb.Resources(cpu_millis=(os.cpu_count() or 1) * 1000, memory_bytes=memory, pids=pids)


def minus_reserve(capacity: pb.Resources, reserve: pb.Resources) -> pb.Resources:
    return pb.Resources(
        cpu_millis=max(0, capacity.cpu_millis - reserve.cpu_millis),
        memory_bytes=max(0, capacity.memory_bytes - reserve.memory_bytes),
        pids=max(0, capacity.pids - reserve.pids),
    )
