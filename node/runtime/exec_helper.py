"""The exec path: run a command in a running container, as `runc exec` does.

Runs as `python -m node.runtime.exec_helper <container dir> <control fd>`, started by
exec_client.start_exec: the agent is multi-threaded, so it never forks Python code itself.

    agent ──control socket: request, "ok"/error, resizes; EOF = kill──▶ helper (host root)
      │                                                                 setns(pidfd, NEWPID): children only
      │                                                                 └─fork─▶ C, in the container's pid ns
      │   helper: C into the container's cgroup(s) (CgroupDriver.add_process), then "G"
      │                                           C: setns mnt uts ipc net cgroup, chroot to PID 1's root;
      │                                              after "G": exec_steps() (cwd, rlimits, user ns, caps,
      │                                              no_new_privs, ids, and every later EXEC_STEPS step);
      │                                              child subreaper; with a tty: openpty here
      │                                              └─fork─▶ G: setsid, controlling tty, exec the command
      └── stdio pipes (without a tty, straight to G; with one, the helper relays the pty master)

C reports G's wait status; the helper then stops and kills whatever is left below C (C is a
subreaper, so orphans stay below it), lets C reap them and exit, and exits with the command's code.
Nothing an exec started outlives it, whether it ended, timed out or its caller went away.

The helper stays in the host's mount namespace (cgroup files, /proc): it never resolves a path
inside the container. C joins the container's namespaces as host root and leaves host root in the
same steps as the container's PID 1; it is non-dumpable from the start (see main), so container
processes cannot ptrace it or open its /proc/<pid>/exe, mem or fds while it is still privileged.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import termios
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from node.runtime import procs
from node.runtime.cgroups import driver_for
from node.runtime.errors import NotRunning
from node.runtime.exec_container import container_side, exec_plan
from node.runtime.exec_request import FAILED, ExecRequest, Lines, send
from node.runtime.layout import ContainerDir, read_json
from node.runtime.proctree import sweep
from node.runtime.spec import ShimSpec
from node.runtime.sys import CLONE_NEWPID, PR_SET_DUMPABLE, LinuxSyscalls, set_process_title

__all__ = ["main"]

_C_EXIT_WAIT = 10.0  # s for C to reap what the sweep killed; then it is killed too


class _Killed(Exception):
    """SIGTERM/SIGINT/SIGHUP, the control socket's EOF or a broken stdout: end the exec now."""


@dataclass(frozen=True, slots=True)
class _Target:
    pidfd: int  # PID 1
    root: int  # PID 1's root directory (O_PATH)
    userns: int  # PID 1's user namespace; -1 if it shares ours


def _open_target(cdir: ContainerDir) -> _Target:
    start = read_json(cdir.start) or {}
    id = cdir.path.name
    if cdir.exit.exists() or not start.get("started_at"):
        raise NotRunning(id)
    pid = start.get("pid")
    pidfd = procs.open_pidfd(pid, start.get("pid_start"))
    if pidfd is None:
        raise NotRunning(id)
    fds = [pidfd]
    try:
        fds.append(os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        own = os.stat(f"/proc/{pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
        fds.append(os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC) if own else -1)
        # The /proc/<pid> paths named PID 1 only if it has not ended since the pidfd was taken.
        if procs.wait_fd(pidfd, 0):
            raise NotRunning(id)
    except BaseException as exc:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        if isinstance(exc, (FileNotFoundError, ProcessLookupError)):
            raise NotRunning(id) from None
        raise
    return _Target(fds[0], fds[1], fds[2])


def _raise_killed(_sig: int, _frame: object) -> None:
    raise _Killed


def main(argv: list[str]) -> NoReturn:
    calls = LinuxSyscalls()
    # Before anything of the container is touched, and inherited by C: a non-dumpable process's
    # /proc/<pid>/exe, mem, fd/ and environ need CAP_SYS_PTRACE over the host, and it cannot be
    # ptraced by a less privileged process (runc's CVE-2019-5736 class).
    calls.prctl(PR_SET_DUMPABLE, 0)
    set_process_title(f"orch-exec {argv[1]}")
    ctl = socket.socket(fileno=int(argv[2]))
    os.set_inheritable(ctl.fileno(), False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _raise_killed)
    code = FAILED
    agent = Lines(ctl)
    try:
        msg = agent.next()
        if msg is None:  # the agent went away before it asked for anything
            os._exit(FAILED)
        request = ExecRequest.from_json(msg)
        code = _run(calls, ContainerDir(Path(argv[1])), request, agent)
    except NotRunning as exc:
        send(ctl, {"error": str(exc), "not_running": True})
    except _Killed:
        code = 128 + signal.SIGKILL
    except BaseException as exc:
        send(ctl, {"error": f"{type(exc).__name__}: {exc}"})
    os._exit(code)


def _run(calls: LinuxSyscalls, cdir: ContainerDir, request: ExecRequest, agent: Lines) -> int:
    spec = ShimSpec.from_json(read_json(cdir.spec) or {})
    target = _open_target(cdir)
    plan = exec_plan(spec, cdir, request, target.userns)
    calls.setns(target.pidfd, CLONE_NEWPID)  # for our children: C is born in the container's pid ns
    ours, theirs = socket.socketpair()
    c = os.fork()
    if c == 0:
        ours.close()
        agent.sock.close()
        container_side(calls, plan, request, (target.pidfd, target.root), theirs)
    theirs.close()
    for fd in (target.pidfd, target.root, target.userns):
        if fd >= 0:
            os.close(fd)
    try:
        # Before "G": nothing runs the container's code until C is in its cgroup, every
        # hierarchy the container's PID 1 was added to (v1), counted by its limits.
        driver_for(spec.cgroup_driver, spec.cgroup_root).add_process(spec.cgroup_path, c)
        ours.sendall(b"G")
        return _supervise(c, Lines(ours), agent)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # the clean-up below must not be cut short
        sweep(c)
        ours.close()  # C reaps what the sweep killed, then exits
        _wait_or_kill(c)


def _wait_or_kill(pid: int) -> None:
    fd = os.pidfd_open(pid)
    try:
        if not procs.wait_fd(fd, _C_EXIT_WAIT):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        os.waitpid(pid, 0)
    finally:
        os.close(fd)


def _supervise(c: int, from_c: Lines, from_agent: Lines) -> int:
    """From C's first word to the command's end; the command's exit code (128+n for a signal)."""
    first = from_c.next()
    if first is None or "error" in first:
        reason = (first or {}).get("error") or "the exec process ended before the command started"
        send(from_agent.sock, {"error": str(reason)})
        return FAILED
    master = from_c.fds.pop() if from_c.fds else -1
    try:
        send(from_agent.sock, {"ok": True})
        relay = _TtyRelay(master) if master >= 0 else None
        status = _until_status(from_c, from_agent, relay)
        if relay is not None:
            relay.drain()
        return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    except (_Killed, BrokenPipeError):
        return 128 + signal.SIGKILL
    finally:
        if master >= 0:
            os.close(master)


def _until_status(from_c: Lines, from_agent: Lines, relay: _TtyRelay | None) -> int:
    """Serve resizes (and the tty) until C reports the command's wait status."""
    while True:
        # Agent first: a resize sent before some input takes effect before that input.
        while (msg := from_agent.pop()) is not None:
            if relay is not None and "resize" in msg:
                relay.resize(*msg["resize"])
        if from_agent.eof:
            raise _Killed
        while (msg := from_c.pop()) is not None:
            if "status" in msg:
                return int(msg["status"])
        if from_c.eof:
            return signal.SIGKILL  # the wait status of a kill: C was killed, the container stopped
        watched = [from_agent.sock, from_c.sock, *(relay.readable() if relay else ())]
        ready, can_write, _ = select.select(watched, relay.writable() if relay else [], [])
        if from_agent.sock in ready:
            from_agent.feed()
        if from_c.sock in ready:
            from_c.feed()
        if relay is not None:
            relay.step(ready, can_write)


class _TtyRelay:
    """Copies the agent's stdin pipe to the pty master and the master to stdout."""

    def __init__(self, master: int) -> None:
        self.master = master
        os.set_blocking(master, False)
        self.stdin_open = True  # /dev/null without -i: EOF at once
        self.master_open = True
        self.pending = b""  # input the master did not take yet

    def readable(self) -> list[int]:
        fds = [self.master] if self.master_open else []
        return fds + ([0] if self.stdin_open and not self.pending else [])

    def writable(self) -> list[int]:
        return [self.master] if self.pending and self.master_open else []

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def step(self, ready: list[Any], can_write: list[Any]) -> None:
        if 0 in ready:
            self.pending = os.read(0, 65536)
            if not self.pending:
                self.stdin_open = False
        if self.pending and (self.master in can_write or 0 in ready):
            try:
                self.pending = self.pending[os.write(self.master, self.pending) :]
            except BlockingIOError:
                pass
            except OSError as exc:  # EIO: the command and all its children are gone
                if exc.errno != errno.EIO:
                    raise
                self.pending, self.stdin_open = b"", False
        if self.master in ready:
            self._copy_out()

    def _copy_out(self) -> bool:
        """One read of the master into stdout; False when nothing more can come now."""
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return False
        except OSError as exc:  # EIO: no slave is open any more
            if exc.errno != errno.EIO:
                raise
            data = b""
        if not data:
            self.master_open = False
            return False
        _write_all(1, data)
        return True

    def drain(self) -> None:
        """After the sweep: what the command wrote last (a read of a master whose slaves are all
        closed first flushes the pty's buffer, then fails with EIO)."""
        while self.master_open and self._copy_out():
            pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


if __name__ == "__main__":
    main(sys.argv)
