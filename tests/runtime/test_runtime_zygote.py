"""Root: who can reach the zygote (issue 9 item 4), and how long it lives (item 18).

The zygote forks shims, which run as host root: a request to it is a root
process on the host. Only the Runtime's own process may make one.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, ContainerStatus, Runtime, procs
from node.runtime.layout import proc_start_time
from node.runtime.shim_client import Zygote
from tests.fixtures.processes import orch_env

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]

# A client of the zygote's protocol, run as whoever the test makes it: one request for a shim
# of a container dir that does not exist, by the socket's path and through a handle to the
# state dir it was given (fd argv[1]). Prints what happened: the reply, or the error.
CLIENT = textwrap.dedent("""
    import ctypes, json, os, socket, sys
    held, socket_path, enter = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    for ns in enter:  # "<pid>:net", "<pid>:mnt": become a process of that container
        pid, kind = ns.split(":")
        fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY)
        assert libc.setns(fd, 0) == 0, os.strerror(ctypes.get_errno())
    def ask(directory, name):
        try:
            os.chdir(directory) if isinstance(directory, str) else os.fchdir(directory)
            s = socket.socket(socket.AF_UNIX)
            s.connect(name)  # relative: a state dir's path may not fit in a unix socket address
            r, w = os.pipe()
            socket.send_fds(s, [json.dumps({"dir": "/nonexistent/orch-attack"}).encode()], [r, w])
            return s.recv(16).decode().strip() or "eof"
        except OSError as exc:
            return type(exc).__name__
    directory, name = os.path.split(socket_path)
    print(json.dumps({"path": ask(directory, name), "held": ask(held, os.path.join(".zygote", name))}))
""")


def ask_zygote(zygote: Zygote, *enter: str, user: int | None = None) -> dict[str, str]:
    """The CLIENT's results, run as root or `user`, in the namespaces `enter` names."""
    held = os.open(zygote.dir.parent, os.O_RDONLY | os.O_DIRECTORY)
    argv = [sys.executable, "-c", CLIENT, str(held), str(zygote.socket), *enter]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, pass_fds=(held,))
    finally:
        os.close(held)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def started_zygote(runtime: Runtime, make_config: MakeConfig) -> Zygote:
    runtime.start(make_config("first", "true"))
    zygote = Zygote(runtime.state_dir)
    assert zygote.pid() is not None
    return zygote


def refusals(zygote: Zygote) -> list[str]:
    return [line for line in (zygote.dir / "log").read_text().splitlines() if "request refused" in line]


def test_warm_starts_the_zygote_that_the_first_start_then_uses(runtime: Runtime, make_config: MakeConfig) -> None:
    zygote = Zygote(runtime.state_dir)
    assert zygote.pid() is None
    runtime.warm()  # the agent does this at start, while it registers
    warmed = zygote.pid()
    assert warmed is not None
    assert list((runtime.state_dir / ".seccomp").glob("*.bpf"))  # the default capabilities' filter
    runtime.warm()  # idempotent: the same one
    assert zygote.pid() == warmed
    assert runtime.start(make_config("first", "true")).status in (ContainerStatus.RUNNING, ContainerStatus.EXITED)
    assert zygote.pid() == warmed


def test_the_socket_is_a_root_only_path_not_an_abstract_name(runtime: Runtime, make_config: MakeConfig) -> None:
    zygote = started_zygote(runtime, make_config)
    assert stat.S_IMODE(zygote.dir.stat().st_mode) == 0o700
    mode = zygote.socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    # An abstract socket has no permissions: every process of the network namespace could connect.
    assert f"@{zygote.prefix}" not in Path("/proc/net/unix").read_text()


def test_a_local_user_cannot_ask_for_a_shim(runtime: Runtime, make_config: MakeConfig) -> None:
    """Even handed the state dir, and were that dir open to all, the 0700 .zygote dir keeps a
    local user out; with that opened up too, the zygote itself serves root only (SO_PEERCRED)."""
    zygote = started_zygote(runtime, make_config)
    os.chmod(runtime.state_dir, 0o755)  # the state dir is 0700 too: open it, to test the layer below
    try:
        assert ask_zygote(zygote, user=65534)["held"] == "PermissionError"
        os.chmod(zygote.dir, 0o755)
        os.chmod(zygote.socket, 0o666)
        assert ask_zygote(zygote, user=65534)["held"] == "refused"
    finally:
        os.chmod(runtime.state_dir, 0o700)
        os.chmod(zygote.dir, 0o700)
        os.chmod(zygote.socket, 0o600)
    assert "runs as uid 65534, not root" in refusals(zygote)[-1]


def test_root_in_a_container_cannot_ask_for_a_shim(runtime: Runtime, make_config: MakeConfig) -> None:
    """Container root (uid 0, no user namespace) in the container's net and mount namespaces:
    the socket's path does not exist there, and a handle to it (say, a volume that exposed the
    state dir) gets the request refused: the peer is in another mount namespace."""
    zygote = started_zygote(runtime, make_config)
    pid = runtime.start(make_config("victim", "sleep", "1000")).pid
    assert pid is not None
    result = ask_zygote(zygote, f"{pid}:net", f"{pid}:mnt")
    assert result == {"path": "FileNotFoundError", "held": "refused"}, result
    assert "another mount namespace" in refusals(zygote)[-1]
    # Still serves its own process.
    assert runtime.start(make_config("after", "true")).status is not None


RUNTIME_PROCESS = textwrap.dedent("""
    import json, signal, sys
    from pathlib import Path
    from node.runtime import ContainerConfig, Runtime
    state_dir, cgroup_parent, rootfs, log = sys.argv[1:5]
    rt = Runtime(Path(state_dir), cgroup_parent)
    config = ContainerConfig("survivor", Path(rootfs), ("sleep", "1000"), {}, Path(log))
    print(json.dumps({"pid": rt.start(config).pid}), flush=True)
    signal.pause()  # until SIGTERM: the default action, as an agent without --cleanup ends
""")


def test_the_zygote_exits_with_its_runtime_and_the_containers_live_on(
    tmp_path: Path, cgroup_parent: str, rootfs: Path
) -> None:
    """A Runtime (as in an agent) in a process of its own starts a container, then gets SIGTERM:
    the zygote goes with it, the shim and PID 1 stay, and a new Runtime adopts the container."""
    state_dir = tmp_path / "state"
    argv = [sys.executable, "-c", RUNTIME_PROCESS, str(state_dir), cgroup_parent, str(rootfs), str(tmp_path / "c.log")]
    agent = subprocess.Popen(argv, stdout=subprocess.PIPE, env=orch_env(), text=True)
    try:
        assert agent.stdout is not None
        pid1 = json.loads(agent.stdout.readline())["pid"]
        zygote_pid = Zygote(state_dir).pid()
        start = json.loads((state_dir / "survivor" / "start.json").read_text())
        assert zygote_pid is not None and procs.is_alive(start["shim_pid"], start["shim_start"])
        zygote = (zygote_pid, proc_start_time(zygote_pid))
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == -signal.SIGTERM
        assert procs.wait_gone(*zygote, timeout=30), "the zygote outlived its runtime"
        time.sleep(0.2)  # anything that would die with the zygote has had time to
        assert procs.is_alive(start["shim_pid"], start["shim_start"])
        assert procs.is_alive(pid1, start["pid_start"])
        adopted = Runtime(state_dir, cgroup_parent)
        state = adopted.state("survivor")
        assert (state.status, state.pid) == (ContainerStatus.RUNNING, pid1)
        assert adopted.stop("survivor", 0).exit_code == 137
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()
        Runtime(state_dir, cgroup_parent).cleanup_all()
