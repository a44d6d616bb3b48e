"""Root: the v1 driver on a v1 (hybrid) host's hierarchies, and the v2 driver on whichever cgroup2
tree the host has: /sys/fs/cgroup itself on a pure v2 host (its controllers too), the controller-less
/sys/fs/cgroup/unified of a hybrid one (core only). Each test skips, saying why, on the other kind."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.runtime.cgroups import CgroupDriver, Limits, V1Driver, V2Driver, detect

pytestmark = pytest.mark.root
UNIFIED = Path("/sys/fs/cgroup/unified")
PURE_V2 = detect() == "v2"


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


@pytest.mark.skipif(PURE_V2, reason="a pure cgroup v2 host has no v1 hierarchies")
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


@pytest.mark.skipif(PURE_V2 or not (UNIFIED / "cgroup.procs").exists(), reason="no hybrid cgroup2 hierarchy")
def test_v2_driver_core_on_the_unified_hierarchy(sleeper: subprocess.Popen[bytes]) -> None:
    drv = V2Driver(UNIFIED)  # no controllers here, so no limits
    top = f"orch-test-{uuid.uuid4().hex[:8]}"
    _exercise(drv, top, Limits(), sleeper)
    assert not (UNIFIED / top).exists()


@pytest.mark.skipif(not PURE_V2, reason="needs a pure cgroup v2 host (run `make test-v2`)")
def test_v2_driver_for_real(sleeper: subprocess.Popen[bytes]) -> None:
    drv = V2Driver()
    top = f"orch-test-{uuid.uuid4().hex[:8]}"
    limits = Limits(cpu_millis=500, memory_bytes=64 << 20, pids=20)
    _exercise(drv, top, limits, sleeper, check_v2_limits)
    assert not (Path("/sys/fs/cgroup") / top).exists()


@pytest.mark.skipif(not PURE_V2, reason="needs a pure cgroup v2 host (run `make test-v2`)")
def test_v2_accounts_without_limits(sleeper: subprocess.Popen[bytes]) -> None:
    """cpu, memory and pids are enabled for every container, as runc and systemd do: without
    them a container with no limits has no memory.current/pids.current/memory.events, and
    `orch top`, the metrics and the OOM count would read 0."""
    _exercise(V2Driver(), f"orch-test-{uuid.uuid4().hex[:8]}", Limits(), sleeper, check_v2_accounting)


def check_v2_limits(drv: CgroupDriver, path: str) -> None:
    cg = Path("/sys/fs/cgroup") / path
    assert (cg / "memory.max").read_text().strip() == str(64 << 20)
    assert (cg / "cpu.max").read_text().split() == ["50000", "100000"]
    assert (cg / "pids.max").read_text().strip() == "20"
    check_v2_accounting(drv, path)


def check_v2_accounting(drv: CgroupDriver, path: str) -> None:
    cg = Path("/sys/fs/cgroup") / path
    for name in ("memory.current", "memory.events", "pids.current", "cpu.stat"):
        assert (cg / name).exists(), name
    stats = drv.stats(path)
    assert stats.pids == 1 and stats.memory_bytes > 0
