"""Root: real containers from a busybox rootfs; isolation is checked from inside the container."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, ContainerState, ContainerStatus, NotFound, Runtime, RuntimeStartError
from node.runtime.cgroups import driver_for
from node.runtime.shim_client import Zygote
from tests.runtime.conftest import log_text

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]


def wait_exit(rt: Runtime, id: str, timeout: float = 20.0) -> ContainerState:
    fd = rt.exit_fd(id)
    try:
        assert select.select([fd], [], [], timeout)[0], f"{id} still running after {timeout} s"
    finally:
        os.close(fd)
    return rt.state(id)


def run(rt: Runtime, config: ContainerConfig, timeout: float = 20.0) -> tuple[ContainerState, str]:
    rt.start(config)
    state = wait_exit(rt, config.id, timeout)
    return state, log_text(config.log_path)


def sections(out: str) -> dict[str, list[str]]:
    """Output split at '#name' marker lines."""
    parts: dict[str, list[str]] = {}
    current = parts.setdefault("", [])
    for line in out.splitlines():
        if line.startswith("#"):
            current = parts.setdefault(line[1:], [])
        else:
            current.append(line)
    return parts


def test_container_sees_only_itself(runtime: Runtime, make_config: MakeConfig) -> None:
    script = (
        "echo pid=$$; echo '#ps'; ps -o pid,args; echo '#host'; hostname;"
        " echo '#mounts'; cat /proc/self/mounts; echo '#net'; cat /proc/net/dev"
    )
    seen: list[tuple[int, str]] = []
    config = make_config("iso", "sh", "-c", script, hostname="box-1", init=False)
    started = runtime.start(config, on_netns=lambda pid: seen.append((pid, os.readlink(f"/proc/{pid}/ns/net"))))
    assert started.status is ContainerStatus.RUNNING and [pid for pid, _ in seen] == [started.pid]
    assert seen[0][1] != os.readlink("/proc/self/ns/net")  # read while the container surely runs
    state = wait_exit(runtime, "iso")
    out = sections(log_text(config.log_path))
    assert (state.exit_code, state.reason) == (0, "Completed"), out
    assert out[""] == ["pid=1"]
    pids = [int(line.split()[0]) for line in out["ps"][1:]]
    assert pids[0] == 1 and out["ps"][1].split(None, 1)[1].startswith("sh -c echo pid")
    assert max(pids) < 10, out["ps"]
    assert out["host"] == ["box-1"]
    targets = {line.split()[1] for line in out["mounts"]}
    assert {"/", "/proc", "/dev", "/sys", "/dev/pts", "/dev/shm"} <= targets
    assert "/dev/null" not in targets  # its own node in the tmpfs /dev, not a bind of the host's
    etc = {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"}
    assert all(t in etc or t == "/" or t.startswith(("/proc", "/dev", "/sys")) for t in targets), targets
    ifaces = [line.split(":")[0].strip() for line in out["net"][2:]]
    assert ifaces == ["lo"]


def test_exit_codes_propagate(runtime: Runtime, make_config: MakeConfig) -> None:
    state, _ = run(runtime, make_config("three", "sh", "-c", "exit 3"))
    assert (state.status, state.exit_code, state.reason) == (ContainerStatus.EXITED, 3, "Error")
    state, _ = run(runtime, make_config("zero", "true"))
    assert (state.exit_code, state.reason, state.oom_killed) == (0, "Completed", False)
    assert state.started_at is not None and state.finished_at is not None
    assert state.finished_at >= state.started_at


@pytest.mark.parametrize(
    ("argv0", "code", "message"),
    [
        ("/bin/nope", 127, 'exec "/bin/nope": no such file or directory'),
        ("nope", 127, 'exec "nope": no such file or directory'),
        ("/etc/not-executable", 126, 'exec "/etc/not-executable": permission denied'),
    ],
)
def test_command_that_cannot_run_is_a_start_error(
    runtime: Runtime, make_config: MakeConfig, argv0: str, code: int, message: str
) -> None:
    state = runtime.start(make_config("bad", argv0))
    assert state.status is ContainerStatus.EXITED
    assert (state.exit_code, state.reason, state.message) == (code, "StartError", message)
    assert runtime.state("bad") == state


def test_memory_limit_oom_kill_is_reported(runtime: Runtime, make_config: MakeConfig) -> None:
    config = make_config("oom", "sh", "-c", "x=a; while true; do x=$x$x; done", memory_bytes=16 << 20)
    state, _ = run(runtime, config)
    assert (state.exit_code, state.oom_killed, state.reason) == (137, True, "OOMKilled")


def wait_for_output(config: ContainerConfig, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in (out := log_text(config.log_path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert text in out, out
    return out


def test_the_log_exists_once_start_returns_however_late_orch_shim_comes(
    runtime: Runtime, make_config: MakeConfig, tmp_path: Path
) -> None:
    """Running means the log file exists: whoever reads it then (the agent's log API, a test, a
    log shipper) never races orch-shim, which opens it only after its exec (late here by 2 s)."""
    late = tmp_path / "late-orch-shim"
    late.write_text(f'#!/bin/sh\nsleep 2\nexec "{runtime.native.shim}" "$@"\n')
    late.chmod(0o755)
    runtime._native = dataclasses.replace(runtime.native, shim=late)
    config = make_config("late-log", "sh", "-c", "echo hello; sleep 100")
    assert runtime.start(config).status is ContainerStatus.RUNNING
    assert config.log_path.exists()
    wait_for_output(config, "hello")  # the same file orch-shim then writes to


def test_pids_limit_stops_a_fork_bomb(runtime: Runtime, make_config: MakeConfig) -> None:
    # busybox sh exits when a fork fails, so the bomb runs in an inner shell; the outer one survives.
    bomb = "sh -c 'while true; do sleep 100 & done'; echo bomb-ended; sleep 1000"
    config = make_config("forky", "sh", "-c", bomb, pids=20)
    runtime.start(config)
    assert "can't fork" in wait_for_output(config, "bomb-ended")
    time.sleep(0.1)
    assert 18 <= runtime.stats("forky").pids <= 20  # the limit held: init, shells, sleeps
    assert runtime.state("forky").status is ContainerStatus.RUNNING
    state = runtime.stop("forky", 1)
    assert state.status is ContainerStatus.EXITED
    runtime.remove("forky")


def test_stop_escalates_to_sigkill_after_grace(runtime: Runtime, make_config: MakeConfig) -> None:
    config = make_config("sleepy", "sh", "-c", "trap '' TERM; echo ready; sleep 1000")
    runtime.start(config)
    wait_for_output(config, "ready")
    t0 = time.monotonic()
    state = runtime.stop("sleepy", 1.0)
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 8, elapsed  # the command ignores SIGTERM: the grace is used up
    assert (state.status, state.exit_code, state.reason) == (ContainerStatus.EXITED, 137, "Killed")
    assert runtime.stop("sleepy", 1.0) == state  # stopping an exited container is a no-op


def test_stop_with_a_sigterm_handler_is_graceful(runtime: Runtime, make_config: MakeConfig) -> None:
    script = "trap 'echo bye; exit 0' TERM; echo ready; while true; do sleep 0.1; done"
    config = make_config("polite", "sh", "-c", script)
    runtime.start(config)
    while "ready" not in log_text(config.log_path):
        time.sleep(0.02)
    state = runtime.stop("polite", 10)
    assert (state.exit_code, state.reason) == (0, "Completed")
    assert "bye" in log_text(config.log_path)


def test_kill_signals_pid_1(runtime: Runtime, make_config: MakeConfig) -> None:
    runtime.start(make_config("victim", "sleep", "1000"))
    runtime.kill("victim", signal.SIGKILL)
    assert wait_exit(runtime, "victim").exit_code == 137
    runtime.kill("victim", signal.SIGKILL)  # already gone: not an error


def test_state_from_a_fresh_runtime(runtime: Runtime, make_config: MakeConfig, cgroup_parent: str) -> None:
    first = runtime.start(make_config("adopt", "sleep", "1000"))
    fresh = Runtime(runtime.state_dir, cgroup_parent)
    assert fresh.state("adopt") == first
    stats = fresh.stats("adopt")
    assert stats.pids == 1 and stats.memory_bytes > 0  # sleep, PID 1 itself, and stats.cpu_usage_ns > 0
    assert [s.id for s in fresh.list()] == ["adopt"]
    assert fresh.stop("adopt", 0).status is ContainerStatus.EXITED
    fresh.remove("adopt")
    with pytest.raises(NotFound):
        runtime.state("adopt")


def test_container_outlives_the_process_that_started_it(
    runtime: Runtime, make_config: MakeConfig, cgroup_parent: str
) -> None:
    config = make_config("orphan", "sleep", "1000")
    code = (
        "import sys; from pathlib import Path; from node.runtime import Runtime, ContainerConfig\n"
        f"rt = Runtime(Path({str(runtime.state_dir)!r}), {cgroup_parent!r})\n"
        f"st = rt.start(ContainerConfig(id='orphan', rootfs=Path({str(config.rootfs)!r}), argv=('sleep', '1000'),"
        f" env={{}}, log_path=Path({str(config.log_path)!r})))\n"
        "print(st.pid)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    state = runtime.state("orphan")
    assert (state.status, state.pid) == (ContainerStatus.RUNNING, int(out.stdout))
    assert Path(f"/proc/{state.pid}").exists()
    assert runtime.stop("orphan", 0).exit_code == 137


def test_exit_fd_works_with_asyncio(runtime: Runtime, make_config: MakeConfig) -> None:
    runtime.start(make_config("aio", "sh", "-c", "sleep 0.2; exit 7"))

    async def wait() -> ContainerState:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        fd = runtime.exit_fd("aio")
        loop.add_reader(fd, done.set_result, None)
        try:
            await asyncio.wait_for(done, 20)
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        return runtime.state("aio")

    assert asyncio.run(wait()).exit_code == 7
    fd = runtime.exit_fd("aio")  # after the end: readable at once
    try:
        assert select.select([fd], [], [], 0)[0]
    finally:
        os.close(fd)


def test_host_side_failures_raise_and_leave_nothing(
    runtime: Runtime, make_config: MakeConfig, tmp_path: Path, cgroup_parent: str
) -> None:
    with pytest.raises(RuntimeStartError, match="not a directory"):
        runtime.start(ContainerConfig("nofs", tmp_path / "missing", ("true",), {}, tmp_path / "x.log"))
    with pytest.raises(RuntimeStartError, match="DNS-1123"):
        runtime.start(make_config("Bad_Name", "true"))

    def fail(pid: int) -> None:
        raise ValueError("veth failed")

    with pytest.raises(RuntimeStartError, match="veth failed"):
        runtime.start(make_config("netfail", "sleep", "1000"), on_netns=fail)
    assert runtime.list() == []
    assert driver_for().children(cgroup_parent) == []


def test_remove_refuses_running_and_is_idempotent(runtime: Runtime, make_config: MakeConfig) -> None:
    runtime.start(make_config("busy", "sleep", "1000"))
    with pytest.raises(Exception, match="stop it first"):
        runtime.remove("busy")
    runtime.stop("busy", 0)
    runtime.remove("busy")
    runtime.remove("busy")
    with pytest.raises(NotFound):
        runtime.exit_fd("busy")


def test_start_stop_remove_cycles_leave_nothing(
    runtime: Runtime, make_config: MakeConfig, cgroup_parent: str, host_leftovers: Callable[..., list[str]]
) -> None:
    for i in range(50):
        runtime.start(make_config(f"cycle-{i}", "sleep", "1000", memory_bytes=32 << 20, pids=16, cpu_millis=200))
        assert runtime.stop(f"cycle-{i}", 0).exit_code == 137
        runtime.remove(f"cycle-{i}")
    assert driver_for().children(cgroup_parent) == []
    # The fork server's pid file, the compiled seccomp filters and C programs: kept for the next start.
    assert sorted(p.name for p in runtime.state_dir.iterdir()) == [".native", ".seccomp", ".zygote"]
    state_dir = str(runtime.state_dir)
    shims = [p for p in Path("/proc").iterdir() if p.name.isdigit() and state_dir in _cmdline(p)]
    assert [p for p in shims if "node.runtime.zygote" not in _cmdline(p)] == []
    runtime.cleanup_all()
    assert host_leftovers(cgroup_parent, runtime.state_dir) == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_zygote_is_restarted_transparently(runtime: Runtime, make_config: MakeConfig) -> None:
    runtime.start(make_config("z1", "sleep", "1000"))
    zygote = Zygote(runtime.state_dir)
    first = zygote.pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    while Path(f"/proc/{first}").exists() and "Z" not in Path(f"/proc/{first}/stat").read_text().split()[2]:
        time.sleep(0.01)
    assert runtime.start(make_config("z2", "sleep", "1000")).status is ContainerStatus.RUNNING
    assert zygote.pid() not in (None, first)
    assert runtime.state("z1").status is ContainerStatus.RUNNING  # shims do not depend on the zygote
    assert runtime.stop("z1", 0).exit_code == 137 and runtime.stop("z2", 0).exit_code == 137


def _mount_table(rt: Runtime, config: ContainerConfig) -> list[str]:
    state, out = run(rt, config)
    assert state.exit_code == 0, out
    return sorted(out.splitlines())


def _uptime_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


def test_pre_staged_pid1_gives_the_same_mounts(runtime: Runtime, make_config: MakeConfig) -> None:
    """After a moment idle the zygote has a spare whose PID 1 staged /proc /dev /sys ahead of
    time (staged.py); its mount tree must equal the one the unstaged steps build."""
    table = "cut -d' ' -f5,6,9 /proc/self/mountinfo"  # mount point, options, fs type
    runtime.start(make_config("warm", "true"))  # starts the zygote
    wait_exit(runtime, "warm")
    time.sleep(0.3)
    before = _uptime_ticks()
    staged = _mount_table(runtime, make_config("staged", "sh", "-c", table))
    start = (runtime.state_dir / "staged" / "start.json").read_text()
    assert int(json.loads(start)["pid_start"]) < before  # PID 1 was forked before the request
    fresh = Runtime(runtime.state_dir, runtime.cgroup_parent, use_zygote=False)  # no spare: SETUP_STEPS
    unstaged = _mount_table(fresh, make_config("unstaged", "sh", "-c", table))
    assert staged == unstaged


def test_exit_with_a_background_process_left(runtime: Runtime, make_config: MakeConfig) -> None:
    """The reaper is not alone when the command ends: the shim waits for PID 1's exit, which
    takes the rest of the pid namespace with it, before it reports the container's end."""
    state, out = run(runtime, make_config("bg", "sh", "-c", "sleep 100 & echo hi", init=True))
    assert (state.exit_code, out) == (0, "hi\n")
    assert runtime.stats("bg").pids == 0


def test_remove_waits_for_pid1_to_be_gone(runtime: Runtime, make_config: MakeConfig) -> None:
    """A reaper left alone reports the end before its kernel exit (orch-shim's end_status); remove()
    still leaves nothing of the container behind."""
    from node.runtime import procs

    state, out = run(runtime, make_config("quick", "sh", "-c", "echo done", init=True))
    assert (state.exit_code, out) == (0, "done\n")
    start = json.loads((runtime.state_dir / "quick" / "start.json").read_text())
    runtime.remove("quick")
    if procs.is_alive(start["pid"], start["pid_start"]):  # a zombie at most: its namespaces are gone
        stat = Path(f"/proc/{start['pid']}/stat").read_text()
        assert stat[stat.rindex(")") + 2] in "ZX"


def test_pre_staged_pid1_sees_a_filesystem_mounted_after_it(
    runtime: Runtime, make_config: MakeConfig, rootfs: Path, tmp_path: Path
) -> None:
    """A spare whose PID 1 copied the mount table before the host mounted something is not used
    (zygote.serve), so an image on a filesystem mounted later (e.g. a new image store) works."""
    runtime.start(make_config("warm", "true"))  # the zygote, then a spare after a moment idle
    wait_exit(runtime, "warm")
    time.sleep(0.3)
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(store)], check=True)
    try:
        subprocess.run(["cp", "-a", str(rootfs), str(store / "image")], check=True)
        config = dataclasses.replace(make_config("late", "cat", "/etc/hostname"), rootfs=store / "image")
        state, out = run(runtime, config)
        assert (state.exit_code, out) == (0, "late\n")
    finally:
        subprocess.run(["umount", "-l", str(store)], check=True)
