"""A fork server for shims: started once, it forks a shim per container in ~1 ms
instead of the ~80 ms a fresh `python -m node.runtime.shim` spends importing.

    python -m node.runtime.zygote <abstract socket name> <pid file>

It binds the abstract unix socket (no file to go stale; only root peers are
served, checked with SO_PEERCRED), detaches (double fork, own session; its pid
goes to <pid file>) and serves requests one at a time: a request is one JSON
line {"dir": <container dir>} with two fds attached (SCM_RIGHTS: the shim's
report and go pipe ends). It hands them to a spare shim forked ahead of
time (or forks one now if none is ready) and replies b"ok\\n"; the shim then
runs shim.supervise. A shim is the zygote's child, never the agent's: the zygote reaps
shims on SIGCHLD, and if the zygote dies they are re-parented to init and
live on (one fork instead of a double fork saves ~1.5 ms per start).

Single-threaded and stdlib-only besides node.runtime, so fork is safe; the
modules the shim needs are imported once here, and gc.freeze() keeps the
forked shims from dirtying the shared pages on their first collection.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
from pathlib import Path

from node.runtime import shim
from node.runtime.layout import ContainerDir
from node.runtime.sys import LinuxSyscalls, set_process_title

__all__ = ["main", "serve"]

_PR_SET_CHILD_SUBREAPER = 36
_SPARE_AFTER = 0.005  # s without a request before the next spare shim is forked


class _Spare:
    """A shim forked ahead of time, waiting for its container on a socketpair.

    Forking the zygote and the first moments of the child (copy-on-write faults while
    it starts running Python) cost ~3-5 ms here; a spare pays them between starts.
    """

    def __init__(self, listener: socket.socket, keep_out: tuple[int, ...], stage_dir: str) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.pid = os.fork()
        if self.pid == 0:
            signal.set_wakeup_fd(-1)
            for fd in keep_out:
                os.close(fd)
            listener.close()
            ours.close()
            _spare_child(theirs, stage_dir)
        theirs.close()
        self.sock = ours
        self.stale = False  # the host's mounts changed since: its PID 1 has an old copy

    def discard(self) -> None:
        """EOF: the spare exits, and its PID 1 with it."""
        self.sock.close()

    def hand_over(self, msg: bytes, fds: list[int]) -> bool:
        """Give the spare its container; False if it has gone (then fork a shim as before)."""
        try:
            socket.send_fds(self.sock, [msg], fds)
            return True
        except OSError:
            return False
        finally:
            self.sock.close()


def _spare_child(sock: socket.socket, stage_dir: str) -> None:
    try:
        set_process_title("orch-shim (spare)")
        pid1 = shim.fork_staged(stage_dir)
        msg, fds, _, _ = socket.recv_fds(sock, 65536, 2)  # EOF (zygote gone): exit, so does PID 1
        sock.close()
        if len(fds) == 2:
            _shim_child(ContainerDir(Path(json.loads(msg)["dir"])), fds[0], fds[1], pid1)
    finally:
        os._exit(1)


def _handle(conn: socket.socket, listener: socket.socket, spare: _Spare | None, keep_out: tuple[int, ...]) -> bool:
    """Serve one request; True if it used up the spare.

    A request that cannot take a pre-staged PID 1 ({"staged": false}: user namespace, no
    network) gets a freshly forked shim, and the spare stays for the next one.
    """
    msg, fds, _, _ = socket.recv_fds(conn, 65536, 2)
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] != 0:
            raise PermissionError("only root may start shims")
        if len(fds) != 2:
            raise ValueError("expected two fds")
        request = json.loads(msg)
        cdir = ContainerDir(Path(request["dir"]))
        if not request.get("staged", False):
            spare = None
        used = spare is not None
        if (spare is None or not spare.hand_over(msg, fds)) and os.fork() == 0:
            try:  # never back into the zygote's loop
                signal.set_wakeup_fd(-1)
                for fd in keep_out:
                    os.close(fd)
                listener.close()
                conn.close()
                _shim_child(cdir, fds[0], fds[1])
            finally:
                os._exit(1)
        conn.sendall(b"ok\n")
        return used
    finally:
        for fd in fds:
            os.close(fd)


def _shim_child(cdir: ContainerDir, report: int, go: int, pid1: shim.Pid1 | None = None) -> None:
    try:
        log = os.open(cdir.shim_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        shim.supervise(cdir, report, go, pid1)
    finally:
        os._exit(1)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def serve(listener: socket.socket, stage_dir: str) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd is written
    # A spare's PID 1 has a private copy of the mount table from when it was forked: a
    # filesystem mounted on the host later (say, a new image store) would be missing in it.
    # poll() on mountinfo reports every change of our mount namespace: the spare is then stale
    # and is replaced at the next request (not at once: some hosts change mounts all the time,
    # e.g. each `crun run` does, and a spare costs a few ms of CPU to make).
    mounts = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    gc.collect()
    gc.freeze()
    spare: _Spare | None = None
    while True:
        # The next spare is forked once no request came for a moment, so that its fork
        # does not compete for CPU with the start that used the last one.
        timeout = None if spare is not None else _SPARE_AFTER
        ready, _, changed = select.select([listener.fileno(), wake_r], [], [mounts], timeout)
        if changed and spare is not None:
            spare.stale = True
        if not ready and not changed:
            with contextlib.suppress(OSError):
                spare = _Spare(listener, (wake_r, wake_w, mounts), stage_dir)
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
            _reap()
        if listener.fileno() in ready:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(Exception):
                if spare is not None and spare.stale:
                    spare.discard()
                    spare = None
                keep_out = (wake_r, wake_w, mounts, *([spare.sock.fileno()] if spare else []))
                if _handle(conn, listener, spare, keep_out):
                    spare = None


def main(argv: list[str]) -> int:
    name, pid_file = argv[1], Path(argv[2])
    stage_dir = pid_file.parent / "stage"  # a spare's PID 1 mounts a tmpfs here, in its own mount ns
    stage_dir.mkdir(mode=0o700, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind("\0" + name)
    except OSError as exc:  # another Runtime started one first: fine, it serves us too
        print(f"zygote: bind @{name}: {exc}", file=sys.stderr)
        return 1
    listener.listen(64)
    if pid := os.fork():  # the starter (Runtime) reaps this parent; the socket already accepts
        pid_file.write_text(f"{pid}\n")
        os._exit(0)
    os.setsid()
    # A shim need not wait for its PID 1's kernel exit (shim._exit_status): the orphan is then
    # re-parented to us, the shim's parent, and reaped with the shims.
    LinuxSyscalls().prctl(_PR_SET_CHILD_SUBREAPER, 1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(listener, str(stage_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
