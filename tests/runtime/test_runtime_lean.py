"""Root: the lean node (issue 12 item 5). Beside a running command only orch-shim stays (C, not
Python); the command is PID 1 unless the container asks for init, with Docker's semantics
either way; and what happens while no agent runs (an exit, an OOM kill, output) is not lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, ContainerStatus, Runtime, procs
from node.runtime.shim_client import Zygote
from tests.fixtures.signals import ignore_libc_signals, signal_mask
from tests.runtime.conftest import log_text
from tests.runtime.test_runtime_containers import wait_for_output

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]

# Each waits for SIGUSR1 (sent while no agent runs), then exits 7, or outgrows its 16 MiB.
LATER_EXIT = "trap 'echo after; exit 7' USR1; echo ready; while :; do sleep 0.05; done"
LATER_OOM = "trap 'x=a; while :; do x=$x$x; done' USR1; echo ready; while :; do sleep 0.05; done"
AGENT = """
import sys
from pathlib import Path
from node.runtime import ContainerConfig, Runtime
state, parent, rootfs, logs, init = sys.argv[1:6]
rt = Runtime(Path(state), parent)
for id, script, memory in (("later-exit", sys.argv[6], 0), ("later-oom", sys.argv[7], 16 << 20)):
    rt.start(ContainerConfig(id, Path(rootfs), ("sh", "-c", script), {}, Path(logs) / f"{id}.log",
                             memory_bytes=memory, init=init == "1"))
print("started", flush=True)
sys.stdin.read()  # until killed
"""


def start(path: Path) -> dict[str, int]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("init", [False, True], ids=["command-pid1", "init"])
def test_exits_oom_kills_and_logs_while_no_agent_runs(
    init: bool, tmp_path: Path, cgroup_parent: str, rootfs: Path, make_config: MakeConfig
) -> None:
    """The agent (here: the process that started the containers, and with it the zygote) is
    SIGKILLed; then one container exits 7, the other is OOM-killed, and one prints. The next
    runtime finds both ends and the output: orch-shim outlived the agent and wrote them."""
    state = tmp_path / "state"
    logs = tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    args = [str(state), cgroup_parent, str(rootfs), str(logs), "1" if init else "0", LATER_EXIT, LATER_OOM]
    agent = subprocess.Popen([sys.executable, "-c", AGENT, *args], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    rt = Runtime(state, cgroup_parent)  # another runtime: only reads files and sends signals
    try:
        assert agent.stdout is not None and agent.stdout.readline() == "started\n"
        for id in ("later-exit", "later-oom"):
            wait_for_output(ContainerConfig(id, rootfs, (), {}, logs / f"{id}.log"), "ready")
        agent.kill()
        agent.wait(10)
        deadline = time.monotonic() + 10
        while Zygote(state).pid() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert Zygote(state).pid() is None  # the agent's zygote went with it: nothing of ours is left
        shims = {id: start(state / id / "start.json") for id in ("later-exit", "later-oom")}
        for id, s in shims.items():
            assert procs.is_alive(s["shim_pid"], s["shim_start"]), id
            rt.kill(id, signal.SIGUSR1)
        for id, s in shims.items():
            assert procs.wait_gone(s["shim_pid"], s["shim_start"], 30), id
        exited, oom = rt.state("later-exit"), rt.state("later-oom")
        assert (exited.status, exited.exit_code, exited.reason) == (ContainerStatus.EXITED, 7, "Error")
        assert (oom.exit_code, oom.oom_killed, oom.reason) == (137, True, "OOMKilled")
        assert log_text(logs / "later-exit.log") == "ready\nafter\n"  # written while no agent ran
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        for pipe in (agent.stdin, agent.stdout):
            if pipe is not None:
                pipe.close()
        rt.cleanup_all()


def test_only_orch_shim_stays_beside_the_command(runtime: Runtime, make_config: MakeConfig) -> None:
    state = runtime.start(make_config("lean", "sleep", "1000"))
    s = start(runtime.state_dir / "lean" / "start.json")
    assert state.pid == s["pid"]
    title = f"orch-shim {runtime.state_dir}/lean".encode()

    def exec_done() -> bool:  # exe is switched before the new argv is in place: wait for both
        exe = os.readlink(f"/proc/{s['shim_pid']}/exe")
        return exe == str(runtime.native.shim) and Path(f"/proc/{s['shim_pid']}/cmdline").read_bytes().startswith(title)

    deadline = time.monotonic() + 10  # the Python shim execs orch-shim once the command runs
    while not exec_done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exec_done(), Path(f"/proc/{s['shim_pid']}/cmdline").read_bytes()
    assert Path(f"/proc/{s['pid']}/cmdline").read_bytes() == b"sleep\x001000\x00"  # PID 1 is the command
    shim_children = Path(f"/proc/{s['shim_pid']}/task/{s['shim_pid']}/children").read_text().split()
    assert shim_children == [str(s["pid"])]
    assert runtime.stats("lean").pids == 1


def status_of(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())


def zombies_below(pid: int) -> int:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sum(status_of(int(k))["State"].startswith("Z") for k in kids)


# The inner shell exits at once: its background sleep is re-parented to PID 1, then ends.
ORPHAN = "sh -c 'sleep 0.1 &'; echo ready; exec sleep 1000"


def test_default_signals_resets_what_signal_module_cannot(tmp_path: Path) -> None:
    """The shim's last step before the command: glibc's own 32 and 33 left ignored by a parent
    (seen in a full test run) would survive exec, and no signal.signal() reaches them."""
    out = tmp_path / "status"
    code = (
        "import os, signal, sys\n"
        "from node.runtime.sys import default_signals\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\n"
        "default_signals()\n"
        "os.execvp('sh', ['sh', '-c', 'cat /proc/self/status > ' + sys.argv[1]])\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=root, check=True, timeout=30, preexec_fn=ignore_libc_signals
    )
    status = dict(line.split(":\t", 1) for line in out.read_text().splitlines())
    assert signal_mask(status["SigIgn"]) == set()
    assert signal_mask(status["SigBlk"]) == set()


def test_without_init_docker_semantics(runtime: Runtime, make_config: MakeConfig) -> None:
    """The command is PID 1 as under `docker run`: it starts with default dispositions, no
    one reaps the orphans it does not wait for, and SIGTERM without a handler is ignored by
    the kernel for a PID 1, so a stop uses the grace period and then kills."""
    config = make_config("bare", "sh", "-c", ORPHAN)
    state = runtime.start(config)
    assert state.pid is not None
    wait_for_output(config, "ready")
    deadline = time.monotonic() + 10
    while zombies_below(state.pid) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert zombies_below(state.pid) == 1  # `sleep 1000` as PID 1 never waits for it
    assert int(status_of(state.pid)["SigIgn"], 16) == 0 and int(status_of(state.pid)["SigBlk"], 16) == 0
    t0 = time.monotonic()
    stopped = runtime.stop("bare", 0.5)
    assert time.monotonic() - t0 >= 0.5  # SIGTERM did nothing: the grace ran out
    assert (stopped.exit_code, stopped.reason) == (137, "Killed")


def test_with_init_orphans_are_reaped_and_sigterm_reaches_the_command(
    runtime: Runtime, make_config: MakeConfig
) -> None:
    config = make_config("reaped", "sh", "-c", ORPHAN, init=True)
    state = runtime.start(config)
    assert state.pid is not None
    wait_for_output(config, "ready")
    time.sleep(0.3)  # the orphan has ended: orch-init reaped it
    assert zombies_below(state.pid) == 0
    assert Path(f"/proc/{state.pid}/cmdline").read_bytes().split(b"\0")[2:4] == [b"sh", b"-c"]
    assert status_of(state.pid)["Seccomp"].strip() == "2"  # orch-init runs under the filter
    [command] = Path(f"/proc/{state.pid}/task/{state.pid}/children").read_text().split()
    assert int(status_of(int(command))["SigIgn"], 16) == 0
    stopped = runtime.stop("reaped", 30)
    assert (stopped.exit_code, stopped.reason) == (143, "Killed")  # sleep's default action on SIGTERM
    assert "ready" in log_text(config.log_path)
