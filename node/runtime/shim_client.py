"""The Runtime's side of the shim handshake (see shim.py for the protocol)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.runtime.errors import RuntimeStartError
from node.runtime.layout import ContainerDir

__all__ = ["run_shim", "shim_command"]

START_TIMEOUT = 30.0  # s for the shim's own steps; time spent in on_netns is not counted
# The directory holding the `node` package, so `-m node.runtime.shim` resolves in the shim.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def shim_command(cdir: ContainerDir, report_fd: int, go_fd: int) -> list[str]:
    return [sys.executable, "-m", "node.runtime.shim", str(cdir.path), str(report_fd), str(go_fd)]


def _shim_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    return env


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


def run_shim(cdir: ContainerDir, on_netns: Callable[[int], None] | None) -> None:
    """Spawn the shim and drive the handshake. Returns when the command was exec'd or failed to exec."""
    id = cdir.path.name
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
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


def _drive(lines: _Lines, go_w: int, on_netns: Callable[[int], None] | None, cdir: ContainerDir) -> None:
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
