"""What the agent asks of the exec helper (exec_helper.py), and how they talk.

The control socket between the Runtime (exec_client.py) and the helper, and the socket between
the helper and its child in the container (exec_container.py), carry JSON lines:

    agent  → helper   the ExecRequest (first line); then {"resize": [rows, cols]}; EOF: kill it all
    helper → agent    {"ok": true} once the command was forked, or {"error": ..., "not_running": bool}
    helper → C        "G" once C is in the container's cgroup; EOF: reap and exit
    C      → helper   {"started": true} (with a tty, the pty master rides along, SCM_RIGHTS) or
                      {"error": ...}; then {"status": <wait status>} when the command ended
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.runtime.security import Identity

__all__ = ["FAILED", "ExecRequest", "Lines", "send"]

FAILED = 125  # the exec itself failed (docker's code), not the command


@dataclass(frozen=True, slots=True)
class ExecRequest:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # over the container's environment
    identity: Identity | None = None  # None: the container's user
    working_dir: str = ""  # "": the container's
    tty: bool = False
    size: tuple[int, int] = (24, 80)  # rows, cols of the tty

    def to_json(self) -> dict[str, Any]:
        i = self.identity
        ident = None if i is None else {"uid": i.uid, "gid": i.gid, "groups": list(i.groups)}
        return {
            "argv": list(self.argv),
            "env": dict(self.env),
            "identity": ident,
            "working_dir": self.working_dir,
            "tty": self.tty,
            "size": list(self.size),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecRequest:
        i = data.get("identity")
        identity = None if i is None else Identity(int(i["uid"]), int(i["gid"]), tuple(int(g) for g in i["groups"]))
        rows, cols = data.get("size") or (24, 80)
        env = {str(k): str(v) for k, v in (data.get("env") or {}).items()}
        argv = tuple(str(a) for a in data["argv"])
        return cls(argv, env, identity, str(data.get("working_dir", "")), bool(data.get("tty")), (int(rows), int(cols)))


class Lines:
    """JSON lines on a unix stream socket; fds passed with SCM_RIGHTS collect in `fds`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.fds: list[int] = []
        self.eof = False

    def feed(self) -> None:
        """One recv (blocks unless the socket is readable); sets eof at the end."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, 4)
        except ConnectionResetError:  # closed with something of ours unread: EOF all the same
            data, fds = b"", []
        self.fds += fds
        self.buf += data
        self.eof = self.eof or not data

    def pop(self) -> dict[str, Any] | None:
        """The next complete message, or None."""
        if b"\n" not in self.buf:
            return None
        line, _, self.buf = self.buf.partition(b"\n")
        msg = json.loads(line)
        return msg if isinstance(msg, dict) else {}

    def next(self) -> dict[str, Any] | None:
        """Blocks for the next message; None at EOF."""
        while (msg := self.pop()) is None and not self.eof:
            self.feed()
        return msg


def send(sock: socket.socket, msg: dict[str, Any], fds: Sequence[int] = ()) -> None:
    with contextlib.suppress(OSError):  # the other side went away: it learns from our exit
        socket.send_fds(sock, [json.dumps(msg).encode() + b"\n"], list(fds))
