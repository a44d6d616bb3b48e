"""The exec path inside the container: C joins it and forks G, the command.

C is forked by the exec helper (exec_helper.py) into the container's pid namespace. As host root
it joins PID 1's other namespaces and root, waits until the helper put it into the container's
cgroup, then leaves host root exactly as PID 1 did (exec_steps) and becomes the child subreaper
of the command, G, so that nothing G starts can leave the tree the helper sweeps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import select
import signal
import socket
import struct
import termios
from typing import NoReturn

from node.runtime import init
from node.runtime.exec_request import FAILED, ExecRequest, send
from node.runtime.layout import ContainerDir
from node.runtime.proctree import children
from node.runtime.spec import ShimSpec
from node.runtime.sys import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUTS,
    LinuxSyscalls,
    default_signals,
    set_process_title,
)

__all__ = ["JOIN_FLAGS", "container_side", "exec_plan", "exec_steps"]

PR_SET_CHILD_SUBREAPER = 36
# What C joins with one setns on PID 1's pidfd; the pid namespace is the helper's (for its
# children), the user namespace comes last, inside the exec steps.
JOIN_FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWCGROUP
# PID 1 creates its cgroup namespace; an exec'd process joins PID 1's (JOIN_FLAGS) instead.
_CREATE_ONLY = frozenset({"unshare_cgroup_namespace"})


def exec_steps() -> tuple[init.Step, ...]:
    """What the container's PID 1 applies before its exec, for a process that joins instead of
    creating: its working directory (the last of SETUP_STEPS), then every EXEC_STEPS step but
    the cgroup namespace unshare (C joined PID 1's, JOIN_FLAGS).

    Derived from init.EXEC_STEPS at each call, never copied: a step added there (seccomp,
    anything later) applies to exec and exec probes too, in the same order.
    """
    return init.pick_steps("chdir_working_dir") + tuple(s for s in init.EXEC_STEPS if s[0] not in _CREATE_ONLY)


def exec_plan(spec: ShimSpec, cdir: ContainerDir, request: ExecRequest, userns_fd: int) -> init.InitPlan:
    """PID 1's plan (spec.init_plan: the same caps, rlimits, ids, ...) with the exec's command,
    environment (the container's, then the request's), user and working directory."""
    plan = spec.init_plan(cdir, userns_fd)
    who = request.identity or spec.identity
    return dataclasses.replace(
        plan,
        argv=request.argv,
        env={**plan.env, **request.env},
        uid=who.uid,
        gid=who.gid,
        groups=who.groups,
        working_dir=request.working_dir or plan.working_dir,
    )


def container_side(
    calls: LinuxSyscalls, plan: init.InitPlan, request: ExecRequest, pid1: tuple[int, int], sock: socket.socket
) -> NoReturn:
    """C: joins the container, leaves host root as its PID 1 did, forks the command (G) and reaps
    until the helper lets it go. Never returns."""
    code = 1
    try:
        set_process_title("orch-exec")
        for sig in init.FORWARDED_SIGNALS:  # a stray `kill -1` must not end the reaper early
            if sig not in (signal.SIGCONT, signal.SIGWINCH):
                signal.signal(sig, signal.SIG_IGN)
        pidfd, root = pid1  # PID 1's pidfd, its root directory (O_PATH)
        calls.setns(pidfd, JOIN_FLAGS)
        os.fchdir(root)
        os.chroot(".")
        for fd in pid1:
            os.close(fd)
        calls.prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the command stay below us, for the sweep
        if _recv(sock, 1) != b"G":
            os._exit(1)  # the helper could not put us into the cgroup
        try:
            init.run_setup(calls, plan, exec_steps())
        except OSError as exc:
            notes = "; ".join(getattr(exc, "__notes__", []))
            send(sock, {"error": f"{notes}: {exc}" if notes else str(exc)})
            os._exit(1)
        if plan.userns_fd >= 0:
            os.close(plan.userns_fd)
        _fork_command(calls, plan, request, sock)
        code = 0
    except BaseException as exc:
        send(sock, {"error": f"{type(exc).__name__}: {exc}"})
    os._exit(code)


def _fork_command(calls: LinuxSyscalls, plan: init.InitPlan, request: ExecRequest, sock: socket.socket) -> None:
    tty = request.tty
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _sig, _frame: None)
    # The pty comes from the container's own devpts, opened as the container's user.
    master, slave = os.openpty() if tty else (-1, -1)
    if tty:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", *request.size, 0, 0))
    g = os.fork()
    if g == 0:
        _command(calls, plan, slave)
    if tty:
        os.close(slave)
        send(sock, {"started": True}, [master])
        os.close(master)
    else:
        send(sock, {"started": True})
    _reap(g, sock, wake_r)


def _reap(g: int, sock: socket.socket, wake: int) -> None:
    """Reap every child (orphans come to us); report G's status; at EOF from the helper, kill
    whatever child is left (the helper's sweep has usually done that) and return."""
    while True:
        try:
            while (pid_status := os.waitpid(-1, os.WNOHANG))[0] > 0:
                if pid_status[0] == g:
                    send(sock, {"status": pid_status[1]})
        except ChildProcessError:
            pass
        ready, _, _ = select.select([sock.fileno(), wake], [], [])
        if wake in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 512)
        if sock.fileno() in ready and not _recv(sock):
            break
    while True:
        for pid in children(os.getpid()):
            # EPERM: without CAP_KILL, a process of another uid; the helper's sweep killed it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _recv(sock: socket.socket, size: int = 64) -> bytes:
    """b"" at EOF, and when the helper closed its end with our status unread (ECONNRESET)."""
    try:
        return sock.recv(size)
    except OSError:
        return b""


def _command(calls: LinuxSyscalls, plan: init.InitPlan, tty: int) -> NoReturn:
    """G: its own session (with the tty as its controlling terminal), default signals, exec."""
    try:
        os.setsid()
        if tty >= 0:
            fcntl.ioctl(tty, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(tty, fd)
            os.close(tty)
        signal.set_wakeup_fd(-1)
        default_signals()  # ignored signals would stay ignored after exec
        init.exec_command(calls, plan)
    except OSError as exc:
        code, message = init.exec_failure(plan.argv[0], exc)
        with contextlib.suppress(OSError):
            os.write(2, f"orch exec: {message}\n".encode())
        os._exit(code)
    except BaseException:
        os._exit(FAILED)
