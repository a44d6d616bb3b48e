"""Exec probes and `orch exec` on a real cluster (issue 9, items 2 and 3).

An exec probe and an `orch exec` run with the container's privileges (capabilities,
no_new_privs), never as host root; `orch exec` behaves like `kubectl exec` (exit codes, -i,
-t under a real terminal); and only a scheduler may ask an agent for an exec.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from orch.tls import TlsFiles, channel, node_identity
from orch.v1 import agent_pb2_grpc
from orch.v1 import exec_pb2 as xpb
from tests.e2e.cluster import instances, orch
from tests.fixtures.processes import ROOT, orch_argv, orch_env, stop, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["sh", "-c", %(script)r]
  restartPolicy: %(policy)s
  stopGracePeriod: 1s
"""
STATUS_FIELDS = ("Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")
ALL_CAPS = f"{(1 << 41) - 1:016x}"


def status(text: str) -> dict[str, str]:
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k: " ".join(fields[k].split()) for k in STATUS_FIELDS}


def mine(info: dict[str, Any], app: str) -> dict[str, Any] | None:
    insts = [i for i in instances(info) if i["app"] == app and i["desired"] == "Run"]
    return insts[0] if len(insts) == 1 else None


@pytest.fixture
def app(cluster: dict[str, Any], busybox_rootfs: Path) -> Iterator[Any]:
    """apply(name, script, extra=..., policy=...) -> the instance once it runs (or has ended);
    every app applied is deleted at the end."""
    names: list[str] = []

    def apply(name: str, script: str = "exec sleep 1000", extra: str = "", policy: str = "Always") -> dict[str, Any]:
        doc = APP % {"name": name, "root": busybox_rootfs, "script": script, "policy": policy} + extra
        r = orch(cluster, "apply", "-", stdin=doc)
        assert r.returncode == 0, r.stderr
        names.append(name)
        settled = ("Running", "Succeeded", "Failed")
        inst = wait_for(lambda: (i := mine(cluster, name)) and i["state"] in settled and i, 30, f"{name} started")
        return dict(inst)

    yield apply
    for name in names:
        orch(cluster, "delete", "app", name)
    wait_for(lambda: not [i for i in instances(cluster) if i["app"] in names], 30, "our apps removed")


def test_exec_probe_and_orch_exec_have_the_containers_privileges(cluster: dict[str, Any], app: Any) -> None:
    # The probe records its own /proc/self/status inside the container; orch exec reads it back.
    extra = (
        "  capabilities: {add: [NET_ADMIN], drop: [CHOWN]}\n"
        "  readiness: {exec: [sh, -c, 'cat /proc/self/status > /tmp/probe-status'], periodSeconds: 1}\n"
    )
    inst = app("exec-caps", extra=extra)
    inst = wait_for(lambda: (i := mine(cluster, "exec-caps")) and i["ready"] and i, 30, "ready through the probe")
    container = status(Path(f"/proc/{inst['pid']}/status").read_text())
    assert container["NoNewPrivs"] == "1" and container["CapBnd"] != ALL_CAPS
    probe = orch(cluster, "exec", inst["name"], "--", "cat", "/tmp/probe-status")
    assert probe.returncode == 0, probe.stderr
    assert status(probe.stdout) == container  # with nsenter: every capability, NoNewPrivs 0
    execd = orch(cluster, "exec", inst["name"], "--", "cat", "/proc/self/status")
    assert execd.returncode == 0 and status(execd.stdout) == container


def test_orch_exec_runs_commands_with_stdin_and_exit_codes(cluster: dict[str, Any], app: Any) -> None:
    inst = app("exec-cmds")
    name = inst["name"]
    r = orch(cluster, "exec", name, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = orch(cluster, "exec", "-i", name, "--", "sh", "-c", "cat; echo done", stdin="hello\n")
    assert (r.returncode, r.stdout) == (0, "hello\ndone\n")
    r = orch(cluster, "exec", "-i", name, "--", "busybox", "wc", "-c", stdin="x" * (4 << 20))
    assert (r.returncode, r.stdout.strip()) == (0, str(4 << 20))  # more than any pipe or window holds
    r = orch(cluster, "exec", name, "--", "busybox", "seq", "1", "300000")
    assert r.returncode == 0 and r.stdout.splitlines() == [str(i) for i in range(1, 300001)]
    r = orch(cluster, "exec", name, "--", "cat", stdin="not forwarded without -i\n")
    assert (r.returncode, r.stdout) == (0, "")
    r = orch(cluster, "exec", name, "--", "definitely-missing")
    assert r.returncode == 127 and 'exec "definitely-missing": no such file or directory' in r.stderr
    r = orch(cluster, "exec", "exec-no-such-instance", "--", "true")
    assert r.returncode == 121 and r.stderr.count("\n") == 1 and "not found" in r.stderr, r.stderr
    done = app("exec-done", "true", policy="Never")
    wait_for(lambda: (i := mine(cluster, "exec-done")) and i["state"] == "Succeeded", 30, "exec-done Succeeded")
    r = orch(cluster, "exec", done["name"], "--", "true")
    assert r.returncode == 122 and r.stderr.count("\n") == 1 and "not running" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_nothing_of_an_exec_outlives_its_caller(cluster: dict[str, Any], app: Any) -> None:
    # Ctrl-C on `orch exec` (no tty): the stream is cancelled, scheduler to agent, and the
    # command and what it started in the background are killed, not left in the container.
    name = app("exec-gone")["name"]

    def sleeps() -> list[str]:
        r = orch(cluster, "exec", name, "--", "ps", "-o", "args")
        assert r.returncode == 0, r.stderr
        return [line for line in r.stdout.splitlines() if line.strip() in ("sleep 1001", "sleep 1002")]

    tls = ["--tls-dir", cluster["tlsDir"]] if cluster.get("tlsDir") else []
    script = "sleep 1001 & exec sleep 1002"
    argv = orch_argv("--scheduler", cluster["schedulers"][0], *tls, "exec", name, "--", "sh", "-c", script)
    # SIGINT as a terminal's Ctrl-C finds it: a suite started in the background (`make test &`)
    # has SIGINT ignored, and Python keeps an inherited SIG_IGN, as a background job should.
    cli = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=orch_env(),
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for(lambda: len(sleeps()) == 2, 30, "both sleeps running")
        cli.send_signal(signal.SIGINT)
        _, err = cli.communicate(timeout=30)
        assert cli.returncode == 130 and b"Traceback" not in err, err
    finally:
        stop(cli)
        if cli.stderr is not None:
            cli.stderr.close()
    wait_for(lambda: not sleeps(), 30, "the exec's processes gone")


def _read_until(fd: int, needle: bytes, deadline: float) -> bytes:
    out = b""
    while needle not in out:
        assert time.monotonic() < deadline, out
        if select.select([fd], [], [], 0.5)[0]:
            data = os.read(fd, 4096)
            assert data, out
            out += data
    return out


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_orch_exec_with_a_terminal(cluster: dict[str, Any], app: Any) -> None:
    # The CLI runs under a real terminal (a pty that is its controlling terminal, via setsid -c),
    # as a person's shell would run it: raw mode, resizes, the exit code, the terminal restored.
    inst = app("exec-tty")
    master, slave = os.openpty()
    _set_size(master, 24, 80)
    before = termios.tcgetattr(slave)
    tls = ["--tls-dir", cluster["tlsDir"]] if cluster.get("tlsDir") else []
    argv = orch_argv("--scheduler", cluster["schedulers"][0], *tls, "exec", "-it", inst["name"], "--", "sh")
    proc = subprocess.Popen(["setsid", "-c", *argv], stdin=slave, stdout=slave, stderr=slave, env=orch_env(), cwd=ROOT)
    deadline = time.monotonic() + 60
    try:
        _read_until(master, b"# ", deadline)  # the remote shell's prompt: the session runs
        # E''ND: the terminal echoes what is typed; only the command's output reads END.
        os.write(master, b"test -t 0 && test -t 1 && echo IS-A-TTY; busybox stty size; echo E''ND\r")
        out = _read_until(master, b"END\r\n", deadline)
        assert b"IS-A-TTY\r\n24 80\r\n" in out
        assert termios.tcgetattr(slave)[3] & termios.ICANON == 0  # raw while the session runs
        _set_size(master, 30, 100)  # SIGWINCH to the CLI, which forwards the new size
        while b"30 100\r\n" not in out:  # the resize and what is typed travel apart: ask again
            os.write(master, b"busybox stty size; echo E''ND\r")
            out = _read_until(master, b"END\r\n", deadline)
        os.write(master, b"exit 7\r")
        assert proc.wait(timeout=30) == 7
        assert termios.tcgetattr(slave) == before  # restored
    finally:
        stop(proc)
        os.close(master)
        os.close(slave)


def test_only_a_scheduler_may_ask_an_agent_for_an_exec(cluster: dict[str, Any], app: Any) -> None:
    # A node's certificate (or an admin's, going around the scheduler) is refused by the agent.
    inst = app("exec-direct")
    pki = Path(cluster["tlsDir"])
    nodes = {n["name"]: n for n in json.loads(orch(cluster, "get", "nodes", "-o", "json").stdout)}
    address = nodes[inst["node"]]["address"]
    start = xpb.ExecStart(instance=inst["name"], command=["touch", "/tmp/pwned"])
    for who in ("node-0", "node-1", "admin"):
        creds = TlsFiles.in_dir(pki, who).load()
        with channel(address, creds, peer=node_identity(inst["node"])) as ch, pytest.raises(grpc.RpcError) as denied:
            list(agent_pb2_grpc.NodeAgentStub(ch).Exec(iter([xpb.ExecInput(start=start)]), timeout=10))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, who
    r = orch(cluster, "exec", inst["name"], "--", "ls", "/tmp")
    assert r.returncode == 0 and "pwned" not in r.stdout
