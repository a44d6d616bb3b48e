"""Where the container's stdin/stdout/stderr come from: the one place to change for log pipes.

Today stdout and stderr are the log file itself, opened O_APPEND by the shim.
A later pipe + reader in the shim (timestamps, rotation) replaces only
`open_output` and `attach`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["attach", "open_output"]


def open_output(log_path: Path) -> int:
    """Opened in the shim (host paths), before the container's mount namespace exists."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def attach(output_fd: int) -> None:
    """In the container's PID 1 before setup: stdin /dev/null, stdout+stderr to output_fd."""
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(devnull)
    os.close(output_fd)
