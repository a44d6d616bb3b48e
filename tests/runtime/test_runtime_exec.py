"""Root: Runtime.exec and exec probes, checked from inside the container and from the host.

Every exec'd process must be what the container's own command is (namespaces, root, cgroup,
user, capabilities, no_new_privs, rlimits), never host root; and nothing it starts may outlive it.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.probes import probe_exec
from node.runtime import ContainerConfig, NotFound, Runtime
from node.runtime.errors import NotRunning
from node.runtime.exec_client import ExecProcess

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]
MakeConfig = Callable[..., ContainerConfig]
NAMESPACES = ("mnt", "uts", "ipc", "net", "pid", "cgroup", "user")
STATUS_FIELDS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")


def status(text: str) -> dict[str, str]:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: " ".join(fields[k].split()) for k in STATUS_FIELDS if k in fields}


def run_exec(runtime: Runtime, id: str, *argv: str, stdin: bytes | None = None, **kw: object) -> tuple[int, str, str]:
    """Exit code, stdout, stderr of one exec."""
    proc = runtime.exec(id, argv, stdin=stdin is not None, **kw)  # type: ignore[arg-type]
    try:
        if stdin is not None:
            assert proc.stdin is not None
            os.write(proc.stdin, stdin)
            proc.close_stdin()
        out, err = read_all(proc)
        code = proc.wait()
        assert code is not None
        return code, out, err
    finally:
        proc.close()


def read_all(proc: ExecProcess) -> tuple[str, str]:
    """stdout and stderr, to their ends."""
    chunks: dict[int, list[bytes]] = {fd: [] for fd in (proc.stdout, proc.stderr) if fd is not None}
    open_fds = list(chunks)
    while open_fds:
        for fd in select.select(open_fds, [], [])[0]:
            if data := os.read(fd, 65536):
                chunks[fd].append(data)
            else:
                open_fds.remove(fd)
    return tuple(b"".join(chunks.get(fd, []) if fd is not None else []).decode() for fd in (proc.stdout, proc.stderr))  # type: ignore[return-value]


def pid_namespace_members(pid1: int) -> list[int]:
    """Host pids of every process in pid1's pid namespace."""
    ns = os.readlink(f"/proc/{pid1}/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    found.append(int(entry))
            except OSError:
                pass
    return sorted(found)


def assert_only(pid1: int) -> None:
    """Nothing but PID 1 is left in its pid namespace (else: what is left, and whose child)."""
    left = {}
    for pid in pid_namespace_members(pid1):
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        left[pid] = " ".join(fields[k].strip() for k in ("Name", "State", "PPid", "Uid"))
    assert list(left) == [pid1], left


@pytest.fixture
def sleeper(runtime: Runtime, make_config: MakeConfig) -> Iterator[Callable[..., int]]:
    """Starts a container whose PID 1 is `sleep 1000` (init=False); returns PID 1's host pid."""

    def start(id: str = "ex", **kw: object) -> int:
        state = runtime.start(make_config(id, "sleep", "1000", init=False, **kw))
        assert state.pid is not None
        return state.pid

    yield start


@pytest.mark.parametrize(
    "user, cap_add", [("", ()), ("app", ("NET_ADMIN",)), ("1000:1000", ())], ids=["root", "app+NET_ADMIN", "numeric"]
)
def test_exec_has_the_containers_privileges(
    runtime: Runtime, sleeper: Callable[..., int], user: str, cap_add: tuple[str, ...]
) -> None:
    pid1 = sleeper(user=user, cap_add=cap_add, rlimits={"NOFILE": (100, 200)})
    code, out, _ = run_exec(runtime, "ex", "cat", "/proc/self/status")
    assert code == 0
    expected = status(Path(f"/proc/{pid1}/status").read_text())
    assert status(out) == expected
    assert expected["NoNewPrivs"] == "1" and expected["CapBnd"] != f"{(1 << 41) - 1:016x}"
    _, limits, _ = run_exec(runtime, "ex", "cat", "/proc/self/limits")
    assert "Max open files            100                  200" in limits


def test_exec_as_another_user(runtime: Runtime, sleeper: Callable[..., int]) -> None:
    sleeper()
    _, out, _ = run_exec(runtime, "ex", "id", user="app")
    assert out.startswith("uid=1001(app) gid=1002(app) groups=1002(app),1003(extra)"), out
    _, out, _ = run_exec(runtime, "ex", "sh", "-c", "grep CapEff /proc/self/status", user="app")
    assert out.split() == ["CapEff:", "0" * 16]


@pytest.mark.parametrize("userns", [False, True], ids=["host-users", "user-namespace"])
def test_exec_joins_every_namespace_and_the_root(runtime: Runtime, sleeper: Callable[..., int], userns: bool) -> None:
    pid1 = sleeper(hostname="box-1", user_namespace=userns)
    script = "for ns in " + " ".join(NAMESPACES) + "; do busybox readlink /proc/self/ns/$ns; done"
    code, out, _ = run_exec(runtime, "ex", "sh", "-c", script)
    assert code == 0
    assert out.split() == [os.readlink(f"/proc/{pid1}/ns/{ns}") for ns in NAMESPACES]
    _, out, _ = run_exec(runtime, "ex", "sh", "-c", "cat /proc/1/cmdline; echo; hostname; cat /etc/not-executable")
    assert out.splitlines() == ["sleep\x001000\x00", "box-1", "data"]  # the container's PID 1, name, files
    _, uid_map, _ = run_exec(runtime, "ex", "cat", "/proc/self/uid_map")
    host_root = uid_map.split()[1]
    assert (host_root != "0") is userns and host_root == Path(f"/proc/{pid1}/uid_map").read_text().split()[1]


def test_exec_is_in_the_containers_cgroup(runtime: Runtime, sleeper: Callable[..., int]) -> None:
    pid1 = sleeper(pids=16, memory_bytes=64 << 20)
    _, out, _ = run_exec(runtime, "ex", "sh", "-c", "cat /proc/self/cgroup; echo -; cat /proc/1/cgroup")
    own, _, first = out.partition("-\n")
    assert own == first  # inside, both are at the root of the container's cgroup namespace
    proc = runtime.exec("ex", ["sleep", "1000"], output=False)
    try:
        members = pid_namespace_members(pid1)
        assert len(members) == 3  # PID 1, the exec's reaper, its command
        # v1: the pids hierarchy's line; v2: the one "0::" line of the unified hierarchy.
        lines = Path(f"/proc/{pid1}/cgroup").read_text().splitlines()
        wanted = [line for line in lines if ":pids:" in line or (line.startswith("0::") and len(lines) == 1)]
        assert wanted and wanted[0].endswith("/ex"), lines
        for pid in members:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
            assert Path(f"/proc/{pid1}/cgroup").read_text().splitlines() == lines, pid
    finally:
        proc.close()


def test_exit_codes(runtime: Runtime, sleeper: Callable[..., int]) -> None:
    sleeper()
    assert run_exec(runtime, "ex", "sh", "-c", "echo out; echo err >&2; exit 7") == (7, "out\n", "err\n")
    code, _, err = run_exec(runtime, "ex", "definitely-missing")
    assert code == 127 and 'exec "definitely-missing": no such file or directory' in err
    assert run_exec(runtime, "ex", "/etc/not-executable")[0] == 126
    assert run_exec(runtime, "ex", "sh", "-c", "kill -TERM $$")[0] == 128 + signal.SIGTERM
    assert run_exec(runtime, "ex", "cat", stdin=b"in\n") == (0, "in\n", "")
    assert run_exec(runtime, "ex", "sh", "-c", "echo $A $PATH", env={"A": "x"})[1] == "x /usr/local/sbin:" + (
        "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    )
    assert run_exec(runtime, "ex", "sh", "-c", "pwd", workdir="/etc")[1] == "/etc\n"


def test_exec_needs_a_running_container(runtime: Runtime, make_config: MakeConfig) -> None:
    with pytest.raises(NotFound):
        runtime.exec("nope", ["true"])
    runtime.start(make_config("done", "true"))
    fd = runtime.exit_fd("done")
    select.select([fd], [], [])
    os.close(fd)
    with pytest.raises(NotRunning):
        runtime.exec("done", ["true"])


def read_until(fd: int, needle: bytes) -> bytes:
    out = b""
    while needle not in out:
        data = os.read(fd, 4096)
        assert data, out
        out += data
    return out


def test_tty(runtime: Runtime, sleeper: Callable[..., int]) -> None:
    sleeper(user="app")
    proc = runtime.exec("ex", ["sh"], tty=True, stdin=True, size=(33, 111))
    try:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is None
        # E""ND: the terminal echoes the input; only the output reads END.
        os.write(
            proc.stdin,
            b"test -t 0 && test -t 2 && echo IS-A-TTY; busybox stty size; ls -l $(busybox tty); echo E''ND\n",
        )
        out = read_until(proc.stdout, b"END\r\n")
        assert b"IS-A-TTY\r\n33 111\r\n" in out
        assert b" app " in out.split(b"/dev/pts/")[-2].splitlines()[-1]  # the pty is the exec's user's
        proc.resize(40, 120)
        os.write(proc.stdin, b"busybox stty size; exit 5\n")
        assert b"40 120\r\n" in read_until(proc.stdout, b"40 120\r\n")
        assert proc.wait() == 5
    finally:
        proc.close()


def test_kill_leaves_nothing(runtime: Runtime, sleeper: Callable[..., int]) -> None:
    pid1 = sleeper()
    # A background child, and a daemon in a session of its own whose parent has exited.
    script = "sleep 1001 & (setsid sleep 1002 &) ; echo started; exec sleep 1003"
    proc = runtime.exec("ex", ["sh", "-c", script])
    try:
        assert proc.stdout is not None
        read_until(proc.stdout, b"started")
        while len(pid_namespace_members(pid1)) < 5:  # PID 1, the reaper, three sleeps
            time.sleep(0.01)
        helper = proc.pid
        proc.kill()
        assert proc.wait() == 128 + signal.SIGKILL
    finally:
        proc.close()
    assert_only(pid1)
    assert not Path(f"/proc/{helper}").exists()


def test_probe_runs_with_the_containers_privileges(runtime: Runtime, sleeper: Callable[..., int]) -> None:
    # The probe writes its own status where the host can read it: the container's upper layer.
    pid1 = sleeper()
    result = probe_exec(runtime, "ex", ["sh", "-c", "cat /proc/self/status > /probe-status"], timeout=10)
    assert result.ok and result.detail == "exec sh: exit 0"
    seen = status((runtime.state_dir / "ex" / "upper" / "probe-status").read_text())
    assert seen == status(Path(f"/proc/{pid1}/status").read_text())
    assert seen["NoNewPrivs"] == "1" and seen["CapEff"] == seen["CapBnd"] != f"{(1 << 41) - 1:016x}"
    assert probe_exec(runtime, "ex", ["false"], timeout=10).detail == "exec false: exit 1"


def test_a_hanging_probe_is_killed_at_its_timeout(runtime: Runtime, sleeper: Callable[..., int]) -> None:
    pid1 = sleeper()
    result = probe_exec(runtime, "ex", ["sh", "-c", "sleep 1000 & setsid sleep 1000 & sleep 1000"], timeout=0.5)
    assert not result.ok and result.detail == "exec sh: timed out after 0.5s"
    assert_only(pid1)


def test_a_probes_output_is_in_its_detail_escaped(runtime: Runtime, sleeper: Callable[..., int]) -> None:
    """What a failing exec probe printed says why (as Kubernetes' events do); the container wrote
    it, so escape sequences reach no operator's terminal, and endless output is cut at the timeout."""
    sleeper()
    script = "echo not healthy; printf '\\033[2J\\033]0;owned\\007' >&2; exit 3"
    result = probe_exec(runtime, "ex", ["sh", "-c", script], timeout=10)
    assert not result.ok and result.detail == "exec sh: exit 3: not healthy\\n\\x1b[2J\\x1b]0;owned\\x07"
    result = probe_exec(runtime, "ex", ["sh", "-c", "while :; do echo spam; done"], timeout=0.5)
    assert result.detail == "exec sh: timed out after 0.5s: " + ("spam\\n" * 40)[:200] + "..."


def test_the_exec_reaper_is_not_dumpable(runtime: Runtime, sleeper: Callable[..., int]) -> None:
    # The exec's reaper (the command's parent, in the container) was forked from the host-root
    # helper: its /proc/<pid>/exe is the host's python and its memory held host-side state. A
    # container process, even root, must not open them (runc's CVE-2019-5736 class).
    sleeper()
    script = (
        "busybox readlink /proc/$PPID/exe || echo no-exe;"
        "cat /proc/$PPID/environ > /dev/null 2>&1 || echo no-environ;"
        "head -c1 /proc/$PPID/mem > /dev/null 2>&1 || echo no-mem;"
        "busybox tr -d '\\0' < /proc/$PPID/cmdline"
    )
    _, out, _ = run_exec(runtime, "ex", "sh", "-c", script)
    assert out.split() == ["no-exe", "no-environ", "no-mem", "orch-exec"]


def test_kill_reaches_what_the_reaper_may_not_signal(runtime: Runtime, sleeper: Callable[..., int]) -> None:
    # Without CAP_KILL, the exec's reaper (container root) may not signal a process that switched
    # to another uid; the helper, host root, stops and kills it all the same.
    pid1 = sleeper(cap_drop=("KILL",))
    proc = runtime.exec("ex", ["sh", "-c", "busybox su -s /bin/sh app -c 'exec sleep 1000' & exec sleep 1001"])
    try:

        def uids() -> list[str]:
            return [
                Path(f"/proc/{p}/status").read_text().split("Uid:")[1].split()[0] for p in pid_namespace_members(pid1)
            ]

        while "1001" not in uids():
            assert proc.wait(0) is None
            time.sleep(0.01)
        proc.kill()
        assert proc.wait() == 128 + signal.SIGKILL
    finally:
        proc.close()
    assert_only(pid1)
