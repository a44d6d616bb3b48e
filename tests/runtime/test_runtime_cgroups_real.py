"""Root: the v1 driver on a v1 (hybrid) host's hierarchies, and the v2 driver on whichever cgroup2
tree the host has: /sys/fs/cgroup itself on a pure v2 host (its controllers too), the controller-less
/sys/fs/cgroup/unified of a hybrid one (core only). Each test skips, saying why, on the other kind."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.runtime import Runtime
from node.runtime.cgroups import CgroupDriver, Limits, V1Driver, V2Driver, detect
from node.runtime.cgroups.placement import Supervisors
from node.runtime.shim_client import Zygote

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
    assert (cg / "cgroup.kill").exists()  # so kill_all (next) kills with it: Linux >= 5.14
    assert drv.stats(path).pids == 1
    # Memory stays charged where it was allocated: the sleeper, moved in, brought none along.
    # A process born here (it joins before its exec, as a container's PID 1 does) is counted.
    born = subprocess.Popen(["sleep", "100"], preexec_fn=lambda: (cg / "cgroup.procs").write_text("0"))
    try:
        stats = drv.stats(path)
        assert stats.pids == 2 and stats.memory_bytes > 0, stats
    finally:
        born.kill()
        born.wait()


# -- placement (cgroups/placement.py) on a pure v2 host ---------------------------------

SYSTEMD = Path("/run/systemd/system").is_dir()
MOVE_AND_CREATE = """
import sys
from pathlib import Path
from node.runtime.cgroups import Limits, V2Driver
from node.runtime.cgroups.placement import move_self
from node.runtime.errors import ContainerError
root, top = Path("/sys/fs/cgroup"), sys.argv[1]
(root / top / "cgroup.procs").write_text(sys.argv[2])  # the agent (this process), maybe a neighbour
(root / top / "cgroup.procs").write_text(str(__import__("os").getpid()))
try:
    move_self(root, top + "/agent")
except ContainerError as e:
    print("refused:", e)
    sys.exit(0)
V2Driver(root).create(top + "/containers/c1", Limits(memory_bytes=64 << 20))
print(Path("/proc/self/cgroup").read_text().strip())
"""


def _move_and_create(top: str, neighbour: int) -> str:
    code = [sys.executable, "-c", MOVE_AND_CREATE, top, str(neighbour)]
    done = subprocess.run(code, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(not PURE_V2, reason="needs a pure cgroup v2 host (run `make test-v2`)")
def test_agent_leaves_the_cgroup_that_holds_the_containers() -> None:
    """No internal processes: an agent whose cgroup is to hold the containers' (an agent in a
    container with its own cgroup namespace, or --cgroup-parent below its own) moves itself
    into a leaf first; a neighbour left behind is named, not run into EBUSY later."""
    root, top = Path("/sys/fs/cgroup"), f"orch-test-{uuid.uuid4().hex[:8]}"
    (root / top).mkdir()
    sleeper = subprocess.Popen(["sleep", "100"])
    try:
        out = _move_and_create(top, sleeper.pid)
        assert out.startswith("refused:") and str(sleeper.pid) in out, out
        own = Path("/proc/self/cgroup").read_text().strip().removeprefix("0::/")
        (root / own / "cgroup.procs").write_text(str(sleeper.pid))  # the neighbour gone: now it works
        assert _move_and_create(top, 0) == f"0::/{top}/agent\n"  # ("0": the writer itself)
        assert (root / top / "cgroup.subtree_control").read_text().split() == ["cpu", "memory", "pids"]
        assert (root / top / "containers" / "c1" / "memory.max").read_text().strip() == str(64 << 20)
    finally:
        sleeper.kill()
        sleeper.wait()
        for cg in ("containers/c1", "containers", "agent", ""):
            with contextlib.suppress(FileNotFoundError):
                (root / top / cg).rmdir()
    assert not (root / top).exists()


def _cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text().strip().removeprefix("0::/")


def _unit_state(unit: str) -> tuple[str, str]:
    """(ActiveState, Delegate) of a unit."""
    show = ["systemctl", "show", "--property=ActiveState,Delegate", unit]
    lines = subprocess.run(show, capture_output=True, text=True, check=True).stdout.split()
    props = dict(line.partition("=")[::2] for line in lines)
    return props.get("ActiveState", ""), props.get("Delegate", "")


@pytest.mark.skipif(not (PURE_V2 and SYSTEMD), reason="needs systemd as PID 1 on pure cgroup v2 (`make test-v2`)")
def test_supervisors_and_containers_in_a_scope_of_their_own(tmp_path: Path, make_config: Callable[..., Any]) -> None:
    """What an agent in a delegated unit gets: the first zygote is started in a new delegated
    scope (systemd-run) and moves into <scope>/supervisors, its shims with it; the containers
    are in <scope>/containers/<id>; the scope itself holds no process. A new Runtime (the
    agent restarted) finds the containers, and its zygote joins the scope without a new one.
    Cleaning up empties the scope, and systemd removes it."""
    root, name = Path("/sys/fs/cgroup"), f"orch-node-test-{uuid.uuid4().hex[:8]}.scope"
    scope = f"system.slice/{name}"
    sup = Supervisors(f"{scope}/supervisors", name, "system.slice")
    state = tmp_path / "state"
    first = again = Runtime(state, f"{scope}/containers", supervisors=sup)
    try:
        c1 = first.start(make_config("c1", "sleep", "1000"))
        shim = json.loads((state / "c1" / "start.json").read_text())["shim_pid"]
        assert c1.pid is not None and _cgroup_of(c1.pid) == f"{scope}/containers/c1"
        assert _cgroup_of(shim) == _cgroup_of(Zygote(state).pid() or 0) == sup.path
        assert (root / scope / "cgroup.procs").read_text() == ""  # no internal process
        assert {"cpu", "memory", "pids"} <= set((root / scope / "cgroup.subtree_control").read_text().split())
        assert _unit_state(name) == ("active", "yes")

        Zygote(state).stop(keep_dir=True)  # the agent restarts: its zygote goes, the rest lives on
        assert _unit_state(name) == ("active", "yes")
        again = Runtime(state, f"{scope}/containers", supervisors=sup)
        assert again.state("c1") == c1
        c2 = again.start(make_config("c2", "sleep", "1000"))
        assert c2.pid is not None and _cgroup_of(c2.pid) == f"{scope}/containers/c2"
        assert _cgroup_of(Zygote(state).pid() or 0) == sup.path
    finally:
        again.cleanup_all()
        first.cleanup_all()
    deadline = time.monotonic() + 10
    while (root / scope).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (root / scope).exists()
    assert _unit_state(name)[0] != "active"
