"""The Runtime's side of the shim handshake (see shim.py for the protocol), and the
client of the zygote (zygote.py) that forks the shims."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.runtime.cgroups.placement import Supervisors, scope_command
from node.runtime.errors import RuntimeStartError
from node.runtime.layout import ContainerDir
from node.runtime.secret_mounts import SecretPayload

# A request reaches the zygote in one read of its stream socket: one socket buffer's worth (about
# 32 KiB on Linux), so the secrets of one container (variables and files) are kept well below that.
MAX_REQUEST = 24_000

__all__ = ["Zygote", "run_shim", "shim_command"]

START_TIMEOUT = 30.0  # s for the shim's own steps; time spent in on_netns is not counted
# The directory holding the `node` package, so `-m node.runtime.shim` resolves in the shim.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def shim_command(cdir: ContainerDir, report_fd: int, go_fd: int) -> list[str]:
    return [sys.executable, "-m", "node.runtime.shim", str(cdir.path), str(report_fd), str(go_fd)]


def _shim_env() -> dict[str, str]:
    """The environment of the zygote, the shims and the exec helper: only what Python needs to
    find this package. Never the agent's own: a container's PID 1 is forked from a shim, and
    whatever the agent was started with (tokens, proxies, credentials) has no business there."""
    path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    return {"PATH": os.environ.get("PATH") or os.defpath, "PYTHONPATH": path, "LANG": "C.UTF-8"}


class _Lines:
    """JSON lines from the shim's report pipe, with a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def next(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError(f"no word from the shim in {timeout:.0f} s")
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        msg = json.loads(line)
        return msg if isinstance(msg, dict) else None


def _code_version() -> str:
    """A digest of this package's source files (path, size, mtime); changes with every deploy."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for path in sorted([*here.rglob("*.py"), *here.rglob("*.c")]):
        st = path.stat()
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


class Zygote:
    """The fork server of one state dir: started on first use, restarted if it died.

    Its files live in <state_dir>/.zygote/ (mode 0700: pid, lock, log, and its socket
    <code version>.sock, mode 0600). The process that starts it holds its lifeline (see
    zygote.py): the zygote exits with that process, and the next user starts another.

    supervisors: the cgroup the zygote moves itself into, so that its shims live there
    (under systemd: a scope of their own, created with the first zygote; placement.py).
    """

    def __init__(
        self,
        state_dir: Path,
        supervisors: Supervisors | None = None,
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        init_binary: Callable[[], Path] | None = None,
    ) -> None:
        self.supervisors = supervisors
        self.init_binary = init_binary  # orch-init (native.py), built on first use; None: only stop()
        self.cgroup_root = cgroup_root
        self.dir = state_dir / ".zygote"
        digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
        self.prefix = f"orch-zygote-{digest}-"
        version = _code_version()
        self.name = self.prefix + version  # new code, new zygote: never a stale fork server
        self.socket = self.dir / f"{version}.sock"
        self._lifeline = -1  # write end; only this process holds it (O_CLOEXEC)

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        dir_fd = -1
        try:
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            sock.connect(f"/proc/self/fd/{dir_fd}/{self.socket.name}")  # any state dir path length
        except OSError:
            sock.close()
            raise
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)
        return sock

    def spawn_shim(
        self, cdir: ContainerDir, report_w: int, go_r: int, staged: bool = False, secrets: SecretPayload | None = None
    ) -> None:
        """Have the zygote fork a shim for cdir; starts the zygote when there is none.

        staged: the container may take a pre-staged PID 1 (staged.usable).
        """
        for attempt in (1, 2):
            try:
                sock = self._connect()
            except (ConnectionRefusedError, FileNotFoundError):
                self.start()
                sock = self._connect()
            with sock:
                sock.settimeout(START_TIMEOUT)
                request = {"dir": str(cdir.path), "staged": staged, **(secrets or SecretPayload()).wire()}
                payload = json.dumps(request).encode()
                if len(payload) > MAX_REQUEST:
                    raise ValueError(
                        f"secrets (variables and files, base64): {len(payload)} bytes, over the limit of {MAX_REQUEST}"
                    )
                socket.send_fds(sock, [payload], [report_w, go_r])
                reply = sock.recv(16)
            if reply.startswith(b"ok"):
                return
            if reply or attempt == 2:  # no reply: it was exiting (its starter had ended); once more
                raise OSError(f"zygote refused to start a shim ({reply.decode(errors='replace').strip()}); "
                              f"see {self.dir / 'log'}")  # fmt: skip
            self.stop(keep_dir=True)

    def start(self) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)  # also an older version's dir
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time; the others then connect
            with contextlib.suppress(ConnectionRefusedError, FileNotFoundError):
                self._connect().close()
                return
            self.stop(keep_dir=True)  # an older version's zygote, if any
            for stale in self.dir.glob("*.sock"):
                stale.unlink(missing_ok=True)
            self._close_lifeline()
            lifeline_r, self._lifeline = os.pipe2(os.O_CLOEXEC)
            try:
                with open(self.dir / "log", "ab") as log:
                    init = self.init_binary() if self.init_binary is not None else Path("/nonexistent")
                    cmd = self._placed([sys.executable, "-m", "node.runtime.zygote", self.name, str(self.dir),
                                        self.socket.name, str(lifeline_r), str(init)])  # fmt: skip
                    subprocess.run(
                        cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_shim_env(), cwd="/",
                        pass_fds=(lifeline_r,), check=False,
                    )  # fmt: skip
            finally:
                os.close(lifeline_r)

    def _placed(self, cmd: list[str]) -> list[str]:
        """cmd with the zygote's cgroup as its last argument (it moves itself there at once),
        run by systemd-run in a new scope when the scope is missing (the first zygote)."""
        sup = self.supervisors
        if sup is None:
            return cmd
        cmd = [*cmd, str(self.cgroup_root / sup.path)]
        return cmd if (self.cgroup_root / sup.scope_path).is_dir() else [*scope_command(sup), *cmd]

    def ensure_running(self) -> None:
        """Start the zygote unless one runs: its cgroup (and scope) must exist before the containers'."""
        if self.pid() is None:
            self.start()

    def _close_lifeline(self) -> None:
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1

    def pid(self) -> int | None:
        """The running zygote's pid (checked against its command line), else None."""
        try:
            pid = int((self.dir / "pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if self.prefix.encode() in cmdline else None

    def stop(self, keep_dir: bool = False) -> None:
        """Kill the zygote of this state dir (any code version). Its shims live on."""
        if (pid := self.pid()) is not None:
            with contextlib.suppress(ProcessLookupError):
                fd = os.pidfd_open(pid)
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    select.select([fd], [], [], 5.0)
                finally:
                    os.close(fd)
        if not keep_dir:
            self._close_lifeline()
        if self.dir.exists() and not keep_dir:
            for path in [*self.dir.glob("*.sock"), *(self.dir / name for name in ("pid", "lock", "log"))]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            with contextlib.suppress(OSError):
                (self.dir / "stage").rmdir()  # empty here; a spare's tmpfs on it is in its own mount ns
            with contextlib.suppress(OSError):
                self.dir.rmdir()


def run_shim(
    cdir: ContainerDir,
    on_netns: Callable[[int], object] | None,
    zygote: Zygote | None = None,
    staged: bool = False,
    secrets: SecretPayload | None = None,
) -> None:
    """Start the shim (through the zygote, or as a fresh process) and drive the handshake.

    staged: the container may take a pre-staged PID 1 (zygote only; see staged.py).

    Returns when the command was exec'd or failed to exec.
    """
    id = cdir.path.name
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        if secrets and (secrets.env or secrets.mounts) and zygote is None:  # no place on a command line
            raise ValueError("variables and files from secrets need the zygote (Runtime(use_zygote=True))")
        if zygote is not None:
            zygote.spawn_shim(cdir, report_w, go_r, staged, secrets)
            os.close(report_w)
            os.close(go_r)
            report_w = go_r = -1
            _drive(_Lines(report_r), go_w, on_netns, cdir)
            return
        with open(cdir.shim_log, "ab") as log:
            # subprocess, not os.fork: the agent is multi-threaded; the shim detaches
            # itself at once (double fork), so wait() returns within its start-up time.
            proc = subprocess.Popen(
                shim_command(cdir, report_w, go_r),
                pass_fds=(report_w, go_r),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd="/",
                env=_shim_env(),
            )
        os.close(report_w)
        os.close(go_r)
        report_w = go_r = -1
        proc.wait()
        _drive(_Lines(report_r), go_w, on_netns, cdir)
    except (OSError, TimeoutError, ValueError) as exc:
        raise RuntimeStartError(f"shim: {exc}", id=id) from exc
    finally:
        for fd in (report_r, report_w, go_r, go_w):
            if fd >= 0:
                os.close(fd)


def _drive(lines: _Lines, go_w: int, on_netns: Callable[[int], object] | None, cdir: ContainerDir) -> None:
    id = cdir.path.name
    while (msg := lines.next(START_TIMEOUT)) is not None:
        event = msg.get("event")
        if event == "netns":
            try:
                if on_netns is not None:
                    on_netns(int(msg["pid"]))
            except Exception as exc:
                os.write(go_w, b"abort\n")  # the shim lets PID 1 exit without exec
                lines.next(START_TIMEOUT)
                raise RuntimeStartError(f"on_netns failed: {exc!r}", id=id) from exc
            os.write(go_w, b"go\n")
        elif event == "started":
            return
        elif event == "start_failed" and msg.get("stage") == "exec":
            return  # the container's outcome (127/126, StartError), already in exit.json
        else:
            raise RuntimeStartError(str(msg.get("message", msg)), id=id)
    raise RuntimeStartError(f"shim exited without reporting; see {cdir.shim_log}: {_tail(cdir.shim_log)}", id=id)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace")
    except OSError:
        return ""
