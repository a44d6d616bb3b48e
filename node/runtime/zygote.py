"""A fork server for shims: started once, it forks a shim per container in ~1 ms
instead of the ~80 ms a fresh `python -m node.runtime.shim` spends importing.

    python -m node.runtime.zygote <name> <zygote dir> <socket name> <lifeline fd> <orch-init> [<cgroup dir>]

It binds a unix socket at <zygote dir>/<socket name> (the dir is 0700, the socket 0600),
detaches (double fork, own session; its pid goes to <zygote dir>/pid) and serves requests
one at a time: a request is one JSON line {"dir": <container dir>} with two fds attached
(SCM_RIGHTS: the shim's report and go pipe ends). It hands them to a spare shim forked
ahead of time (or forks one now if none is ready) and replies b"ok\n"; the shim then
runs shim.supervise. A shim is the zygote's child, never the agent's: the zygote reaps
shims on SIGCHLD, and if the zygote dies they are re-parented to init and
live on (one fork instead of a double fork saves ~1.5 ms per start).

Who may ask (a request makes a process that is root on the host): only a peer that is
uid 0 and in the zygote's own mount namespace (SO_PEERCRED, SO_PEERPIDFD), so neither a
local user nor a container's root reaches it, even through a path it was given; the
directory's mode keeps both from the socket in the first place. The socket is a path,
not an abstract name: abstract sockets have no permissions and are reachable from
every process of the network namespace.

It lives as long as its starter: <lifeline fd> is the read end of a pipe whose write
end only the starting process (the agent) holds, so the zygote exits when the agent
does, however it ends, and the next agent starts its own. Shims live on either way.

<orch-init>: the binary a container's PID 1 execs when it asks for init (native.py). The
zygote holds it as one sealed memfd that every container's PID 1 inherits and execs, so its
pages are shared by all of them.

<cgroup dir>: the cgroup it moves itself into first (made if missing), so that every shim
it forks lives there (cgroups/placement.py: the supervisors' leaf of a systemd scope).

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

from node.runtime import native, shim
from node.runtime.cgroups.common import write
from node.runtime.errors import CgroupWriteError
from node.runtime.layout import ContainerDir
from node.runtime.secret_mounts import SecretPayload
from node.runtime.sys import LinuxSyscalls, set_process_title

__all__ = ["main", "peer_refused", "serve"]

_PR_SET_CHILD_SUBREAPER = 36
_SO_PEERPIDFD = 77  # Linux 6.5+; the socket module of Python 3.11 has no name for it
_SPARE_AFTER = 0.005  # s without a request before the next spare shim is forked


class _Spare:
    """A shim forked ahead of time, waiting for its container on a socketpair.

    Forking the zygote and the first moments of the child (copy-on-write faults while
    it starts running Python) cost ~3-5 ms here; a spare pays them between starts.
    """

    def __init__(self, listener: socket.socket, keep_out: tuple[int, ...], stage_dir: str, init_image: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.pid = os.fork()
        if self.pid == 0:
            signal.set_wakeup_fd(-1)
            for fd in keep_out:
                os.close(fd)
            listener.close()
            ours.close()
            _spare_child(theirs, stage_dir, init_image)
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


def _spare_child(sock: socket.socket, stage_dir: str, init_image: int) -> None:
    try:
        set_process_title("orch-shim (spare)")
        pid1 = shim.fork_staged(stage_dir, init_image)
        msg, fds, _, _ = socket.recv_fds(sock, 65536, 2)  # EOF (zygote gone): exit, so does PID 1
        sock.close()
        if len(fds) == 2:
            request = json.loads(msg)
            cdir = ContainerDir(Path(request["dir"]))
            _shim_child(cdir, (fds[0], fds[1]), init_image, pid1, _secrets(request))
    finally:
        os._exit(1)


def _handle(
    conn: socket.socket, listener: socket.socket, spare: _Spare | None, keep_out: tuple[int, ...], init_image: int
) -> bool:
    """Serve one request; True if it used up the spare.

    A request that cannot take a pre-staged PID 1 ({"staged": false}: a user namespace)
    gets a freshly forked shim, and the spare stays for the next one.
    """
    msg, fds, _, _ = socket.recv_fds(conn, 65536, 2)  # first: a refused peer then reads the reply
    try:
        if refused := peer_refused(conn):
            print(f"zygote: request refused: {refused}", file=sys.stderr, flush=True)
            conn.sendall(b"refused\n")
            return False
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
                _shim_child(cdir, (fds[0], fds[1]), init_image, None, _secrets(request))
            finally:
                os._exit(1)
        conn.sendall(b"ok\n")
        return used
    finally:
        for fd in fds:
            os.close(fd)


def peer_refused(conn: socket.socket) -> str:
    """Why the peer of conn may not start shims; "" if it may (root, our mount namespace)."""
    pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != 0:
        return f"pid {pid} runs as uid {uid}, not root"
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, _SO_PEERPIDFD)
    except OSError:  # before Linux 6.5: the pid; the liveness check below still catches a peer gone
        pidfd = os.pidfd_open(pid)
    try:
        peer = os.stat(f"/proc/{pid}/ns/mnt")
        signal.pidfd_send_signal(pidfd, 0)  # still the peer: the namespace read above was its own
    except OSError as exc:
        return f"pid {pid}: {exc}"
    finally:
        os.close(pidfd)
    own = os.stat("/proc/self/ns/mnt")
    if (peer.st_dev, peer.st_ino) != (own.st_dev, own.st_ino):
        return f"pid {pid} is in another mount namespace (a container?)"
    return ""


def _secrets(request: dict[str, object]) -> SecretPayload:
    """The request's secrets (shim_client.spawn_shim). Malformed: none, and PID 1 then refuses
    to run a container whose secret volumes have no files (secret_mounts.py)."""
    try:
        return SecretPayload.from_wire(request)
    except ValueError as exc:
        print(f"zygote: {exc}", file=sys.stderr, flush=True)
        return SecretPayload()


def _shim_child(
    cdir: ContainerDir,
    fds: tuple[int, int],
    init_image: int,
    pid1: shim.Pid1 | None = None,
    secrets: SecretPayload | None = None,
) -> None:
    try:
        log = os.open(cdir.shim_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        shim.supervise(cdir, fds[0], fds[1], pid1, init_image, secrets)
    finally:
        os._exit(1)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def serve(listener: socket.socket, stage_dir: str, lifeline: int, init_image: int) -> None:
    """Until EOF on lifeline (the starter has exited)."""
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
        ready, _, changed = select.select([listener.fileno(), wake_r, lifeline], [], [mounts], timeout)
        if lifeline in ready and not os.read(lifeline, 1):
            return  # a spare gets EOF on its socket and exits, its PID 1 with it
        if changed and spare is not None:
            spare.stale = True
        if not ready and not changed:
            with contextlib.suppress(OSError):
                spare = _Spare(listener, (wake_r, wake_w, mounts, lifeline), stage_dir, init_image)
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
                keep_out = (wake_r, wake_w, mounts, lifeline, *([spare.sock.fileno()] if spare else []))
                if _handle(conn, listener, spare, keep_out, init_image):
                    spare = None


def _listen(zygote_dir: Path, sock_name: str) -> socket.socket:
    """Bind <zygote_dir>/<sock_name> with mode 0600, through /proc/self/fd: a state dir's
    path may be longer than the 107 bytes a unix socket address can hold."""
    dir_fd = os.open(zygote_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    umask = os.umask(0o177)
    try:
        listener.bind(f"/proc/self/fd/{dir_fd}/{sock_name}")
    except OSError:
        listener.close()
        raise
    finally:
        os.umask(umask)
        os.close(dir_fd)
    listener.listen(64)
    return listener


def main(argv: list[str]) -> int:
    zygote_dir, sock_name, lifeline = Path(argv[2]), argv[3], int(argv[4])
    if len(argv) > 6:  # before the first fork: the shims are born there
        try:
            Path(argv[6]).mkdir(exist_ok=True)
            write(Path(argv[6]) / "cgroup.procs", str(os.getpid()))
        except (OSError, CgroupWriteError) as exc:
            print(f"zygote: cannot move into cgroup {argv[6]}: {exc}", file=sys.stderr)
            return 1
    try:  # before the first fork: every shim and PID 1 inherits it
        init_image = native.sealed_copy(Path(argv[5]))
    except OSError as exc:
        print(f"zygote: orch-init {argv[5]}: {exc}", file=sys.stderr)
        return 1
    stage_dir = zygote_dir / "stage"  # a spare's PID 1 mounts a tmpfs here, in its own mount ns
    stage_dir.mkdir(mode=0o700, exist_ok=True)
    try:
        listener = _listen(zygote_dir, sock_name)
    except OSError as exc:  # another Runtime started one first: fine, it serves us too
        print(f"zygote: bind {zygote_dir / sock_name}: {exc}", file=sys.stderr)
        return 1
    if pid := os.fork():  # the starter (Runtime) reaps this parent; the socket already accepts
        (zygote_dir / "pid").write_text(f"{pid}\n")
        os._exit(0)
    os.setsid()
    # A shim need not wait for its PID 1's kernel exit (orch-shim.c end_status): the orphan is then
    # re-parented to us, the shim's parent, and reaped with the shims.
    LinuxSyscalls().prctl(_PR_SET_CHILD_SUBREAPER, 1)
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.close(devnull)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.set_inheritable(lifeline, False)
    serve(listener, str(stage_dir), lifeline, init_image)
    return 0  # the socket file stays: connecting to it is refused, and the next starter replaces it


if __name__ == "__main__":
    sys.exit(main(sys.argv))
