"""systemd's readiness protocol (sd_notify(3)), stdlib only: one datagram to $NOTIFY_SOCKET.

A unit with Type=notify is "active" only once its main process sends READY=1, so
`systemctl start orch-scheduler` returns when the scheduler serves, not when it was
forked; STOPPING=1 says that a stop has begun. Outside systemd (no $NOTIFY_SOCKET)
every call is a no-op that returns False.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["notify", "ready", "stopping"]


def _address(value: str) -> str | None:
    if value.startswith("@"):  # an abstract socket
        return "\0" + value[1:]
    return value if value.startswith("/") else None  # vsock: addresses are not supported here


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` ("READY=1", "STATUS=...", newline-separated assignments); True if sent.

    Never raises: a service must not fail because its manager stopped listening."""
    address = _address((os.environ if env is None else env).get("NOTIFY_SOCKET", ""))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping() -> bool:
    return notify("STOPPING=1")
