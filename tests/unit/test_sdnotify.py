"""sd_notify: one datagram to $NOTIFY_SOCKET (a path or an abstract name), a no-op elsewhere."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from orch import sdnotify


def test_sends_to_a_socket_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert sdnotify.ready("serving on 127.0.0.1:7070")
        assert listener.recv(4096) == b"READY=1\nSTATUS=serving on 127.0.0.1:7070"
        assert sdnotify.stopping()
        assert listener.recv(4096) == b"STOPPING=1"


def test_sends_to_an_abstract_socket() -> None:
    name = f"orch-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(4096) == b"READY=1"


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "/nonexistent/notify"])
def test_without_a_manager_it_does_nothing(value: str) -> None:
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": value} if value else {})
