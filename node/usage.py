"""`orch top` on the node: each running instance's usage from its cgroup.

CPU is a rate, so it needs two readings: the agent reads every instance's
cgroup, waits `window` seconds, and reads again (as `docker stats` does for
its first line). Nothing is sampled in the background between calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from node.runtime import CgroupStats, ContainerError
from orch.v1 import types_pb2 as pb

__all__ = ["WINDOW", "sample_usage"]

WINDOW = 0.5  # seconds between the two readings

Running = Callable[[], Iterable[tuple[str, str]]]  # (instance, app) of the instances running here


def _read(running: Running, stats: Callable[[str], CgroupStats]) -> dict[str, tuple[str, CgroupStats]]:
    out = {}
    for name, app in running():
        try:
            out[name] = (app, stats(name))
        except (ContainerError, OSError):
            continue  # it ended between listing and reading
    return out


def sample_usage(
    node: str,
    running: Running,
    stats: Callable[[str], CgroupStats],
    window: float = WINDOW,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> pb.UsageReport:
    """Blocking (sleeps `window`): run it in a thread from asyncio."""
    before, start = _read(running, stats), clock()
    sleep(window)
    after, elapsed = _read(running, stats), max(clock() - start, 1e-6)
    report = pb.UsageReport(window_seconds=elapsed)
    for name, (app, now) in sorted(after.items()):
        if name not in before:
            continue  # started during the window: no rate yet
        used_ns = max(now.cpu_usage_ns - before[name][1].cpu_usage_ns, 0)
        report.instances.add(
            instance=name,
            app=app,
            node=node,
            cpu_millis=round(used_ns / 1e6 / elapsed),
            memory_working_set_bytes=now.memory_working_set_bytes,
            memory_bytes=now.memory_bytes,
            pids=now.pids,
        )
    return report
