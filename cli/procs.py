"""The processes of a local cluster (`orch up`): where each runs, starting it, waiting until it
serves, stopping it by PID."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from cli import lab
from cli.client import CliError

__all__ = ["LOCAL", "Place", "Proc", "free_port", "http_ok", "tcp_open", "terminate", "wait_until"]


@dataclass
class Proc:
    role: str
    node: str | None
    argv: list[str]
    metricsUrl: str | None
    publishAddress: str | None = None  # agents: the local address their hostPorts are published on
    host: str | None = None  # the lab host it runs on; None: this machine's own network namespace
    pid: int = 0
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Place:
    """Where a process runs: on loopback here, or on a lab host (inside its network namespace)."""

    address: str
    host: lab.LabHost | None = None

    @property
    def name(self) -> str | None:
        return self.host.name if self.host else None

    def argv(self, argv: list[str]) -> list[str]:
        return [*lab.enter(self.host), *argv] if self.host else argv

    def port(self, well_known: int) -> int:
        """A lab host has a network stack of its own: the well-known port, as on a machine of its own."""
        return well_known if self.host else free_port()


LOCAL = Place("127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SLOW = 5.0  # s: a daemon slower than this to serve is named as it is waited for


def wait_until(check: Callable[[], bool], what: str, timeout: float, proc: Proc, slow: float = SLOW) -> None:
    """Until check() holds, the process exits (an error), or timeout. A slow wait says so, and
    again when it ends: on a slow machine (an emulated VM) `orch up` otherwise printed nothing
    for minutes, and whoever waited on it could not tell which daemon held it up."""
    started = time.monotonic()
    deadline = started + timeout
    told = False
    while time.monotonic() < deadline:
        assert proc.popen is not None
        if proc.popen.poll() is not None:
            raise CliError(f"{what}: process exited with code {proc.popen.returncode}; see its log")
        with contextlib.suppress(OSError, ValueError):
            if check():
                if told:
                    print(f"orch up: {what} ready after {time.monotonic() - started:.0f}s", flush=True)
                return
        if not told and time.monotonic() - started >= slow:
            print(f"orch up: waiting for {what} (up to {timeout:.0f}s)", flush=True)
            told = True
        time.sleep(0.05)
    raise CliError(f"{what}: not ready after {timeout:.0f}s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:
        return bool(r.status == 200)


def tcp_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=0.5):
        return True


def terminate(group: list[Proc]) -> None:
    """SIGTERM to all, then wait for each (SIGKILL after 10 s)."""
    running = [p.popen for p in group if p.popen is not None]
    for popen in running:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signal.SIGTERM)
    for popen in running:
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
