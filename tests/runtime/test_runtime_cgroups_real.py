"""Root: the v1 driver on this host's hierarchies and the v2 driver's core on /sys/fs/cgroup/unified."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.runtime.cgroups import CgroupDriver, Limits, V1Driver, V2Driver

pytestmark = pytest.mark.root
UNIFIED = Path("/sys/fs/cgroup/unified")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "100"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _exercise(
    drv: CgroupDriver,
    top: str,
    limits: Limits,
    proc: subprocess.Popen[bytes],
    check: Callable[[CgroupDriver, str], None] | None = None,
) -> None:
    path = f"{top}/c1"
    try:
        drv.create(path, limits)
        assert drv.exists(path)
        assert not drv.populated(path)
        drv.add_process(path, proc.pid)
        assert f"/{path}\n" in Path(f"/proc/{proc.pid}/cgroup").read_text() + "\n"
        assert drv.populated(path)
        assert drv.children(top) == ["c1"]
        if check:
            check(drv, path)
        drv.kill_all(path)
        assert proc.wait(timeout=5) == -9
        assert not drv.populated(path)
        assert drv.oom_killed(path) == 0
    finally:
        proc.kill()
        proc.wait()
        drv.remove(path)
        drv.remove(top)
    assert not drv.exists(path)
    drv.remove(path)  # idempotent: ENOENT is success


def test_v1_driver_for_real(sleeper: subprocess.Popen[bytes]) -> None:
    drv = V1Driver()
    top = f"orch-test-{uuid.uuid4().hex[:8]}"
    limits = Limits(cpu_millis=500, memory_bytes=64 << 20, pids=20)
    _exercise(drv, top, limits, sleeper, check_v1_limits)
    assert not (Path("/sys/fs/cgroup/memory") / top).exists()


def check_v1_limits(drv: CgroupDriver, path: str) -> None:
    cg = Path("/sys/fs/cgroup")
    assert (cg / "memory" / path / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
    assert (cg / "cpu" / path / "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert (cg / "pids" / path / "pids.max").read_text().strip() == "20"
    assert drv.stats(path).pids == 1


@pytest.mark.skipif(not (UNIFIED / "cgroup.procs").exists(), reason="no cgroup2 unified hierarchy")
def test_v2_driver_core_on_the_unified_hierarchy(sleeper: subprocess.Popen[bytes]) -> None:
    drv = V2Driver(UNIFIED)
    top = f"orch-test-{uuid.uuid4().hex[:8]}"
    _exercise(drv, top, Limits(), sleeper)
    assert not (UNIFIED / top).exists()
