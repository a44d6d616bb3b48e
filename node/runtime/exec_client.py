"""The Runtime's side of an exec: start the helper (exec_helper.py) and hold its ends.

The helper is a fresh `python -m node.runtime.exec_helper` (the agent is multi-threaded and
never forks Python code); `start_exec` returns once the command was forked in the container,
or raises. An `ExecProcess` is plain fds and a Popen, usable from threads and asyncio alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from node.runtime.errors import ContainerError, NotRunning
from node.runtime.exec_request import ExecRequest, Lines
from node.runtime.layout import ContainerDir
from node.runtime.shim_client import _shim_env

__all__ = ["START_TIMEOUT", "ExecProcess", "start_exec"]

START_TIMEOUT = 30.0  # s from the helper's start to the command's fork
_EXIT_TIMEOUT = 30.0  # s for the helper to sweep and exit after kill()


@dataclass
class ExecProcess:
    """A running exec. stdin/stdout/stderr are the caller's pipe ends (None: /dev/null, or with a
    tty no stderr: the terminal merges it). Exit codes follow the shell: 128+n for signal n,
    127/126 when the command is missing or cannot run, 137 after kill()."""

    proc: subprocess.Popen[bytes]
    ctl: socket.socket
    stdin: int | None
    stdout: int | None
    stderr: int | None

    @property
    def pid(self) -> int:
        """The helper's pid (it exits once the command and everything it started has ended)."""
        return self.proc.pid

    def resize(self, rows: int, cols: int) -> None:
        """The tty's new size; the command gets SIGWINCH."""
        with contextlib.suppress(OSError):
            self.ctl.sendall(json.dumps({"resize": [rows, cols]}).encode() + b"\n")

    def close_stdin(self) -> None:
        if self.stdin is not None:
            os.close(self.stdin)
            self.stdin = None

    def kill(self) -> None:
        """End the command and everything it started (the helper sweeps, then exits)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None if it still runs after `timeout` seconds."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return code if code >= 0 else 128 - code

    def close(self) -> None:
        """Kill it if it still runs, wait for the helper, close every fd."""
        self.kill()
        if self.wait(_EXIT_TIMEOUT) is None:
            self.proc.kill()  # the helper itself is stuck: C still reaps what it can
            self.proc.wait()
        for fd in (self.stdin, self.stdout, self.stderr):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.stdin = self.stdout = self.stderr = None
        self.ctl.close()


def helper_command(cdir: ContainerDir, ctl_fd: int) -> list[str]:
    return [sys.executable, "-m", "node.runtime.exec_helper", str(cdir.path), str(ctl_fd)]


def start_exec(
    cdir: ContainerDir, request: ExecRequest, *, stdin: bool, output: bool, timeout: float = START_TIMEOUT
) -> ExecProcess:
    """Start the helper; returns once the command was forked in the container.

    stdin: give the command a pipe (ExecProcess.stdin) instead of /dev/null; output: pipes for
    its stdout and stderr (with a tty, the terminal's output on stdout) instead of /dev/null.
    Raises NotRunning, or ContainerError when the helper failed (its message names why).
    """
    id = cdir.path.name
    process = _spawn(cdir, stdin, output, request.tty)
    try:
        process.ctl.sendall(json.dumps(request.to_json()).encode() + b"\n")
        reply = _reply(Lines(process.ctl), timeout)
    except BaseException:
        process.close()
        raise
    if reply.get("ok"):
        return process
    process.close()
    if reply.get("not_running"):
        raise NotRunning(id)
    raise ContainerError(f"exec: {reply.get('error') or 'the exec helper failed'}", id=id)


def _spawn(cdir: ContainerDir, stdin: bool, output: bool, tty: bool) -> ExecProcess:
    """The helper, with a pipe (or /dev/null) for each stdio stream and the control socket."""
    ours, theirs = socket.socketpair()
    mine: list[int] = []  # the caller's ends; -1: /dev/null
    given: list[int] = []  # the helper's ends, closed here once it has them
    try:
        stdio = []
        for wanted, reader in ((stdin, False), (output, True), (output and not tty, True)):
            if not wanted:
                stdio.append(subprocess.DEVNULL)
                mine.append(-1)
                continue
            r, w = os.pipe()
            mine.append(r if reader else w)
            given.append(w if reader else r)
            stdio.append(given[-1])
        proc = subprocess.Popen(
            helper_command(cdir, theirs.fileno()),
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            pass_fds=(theirs.fileno(),),
            start_new_session=True,
            cwd="/",
            env=_shim_env(),
        )
    except BaseException:
        for fd in mine:
            if fd >= 0:
                os.close(fd)
        ours.close()
        raise
    finally:
        for fd in given:
            os.close(fd)
        theirs.close()
    fds = [fd if fd >= 0 else None for fd in mine]
    return ExecProcess(proc, ours, fds[0], fds[1], fds[2])


def _reply(lines: Lines, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while (msg := lines.pop()) is None:
        if lines.eof:
            return {"error": "the exec helper exited without a word"}
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([lines.sock], [], [], left)[0]:
            return {"error": f"the command did not start within {timeout:.0f} s"}
        lines.feed()
    return msg
