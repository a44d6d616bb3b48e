"""The runtime's public data: what to run (ContainerConfig) and what happened (ContainerState)."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_PATH",
    "ContainerConfig",
    "ContainerState",
    "ContainerStatus",
    "valid_id",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def valid_id(id: str) -> bool:
    """Ids become directory and cgroup names, so only DNS-1123 labels are accepted."""
    return bool(_DNS1123_LABEL.match(id))


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    id: str
    rootfs: Path
    argv: tuple[str, ...]
    env: Mapping[str, str]
    log_path: Path
    hostname: str = ""
    working_dir: str = "/"
    cpu_millis: int = 0
    memory_bytes: int = 0
    pids: int = 0
    network: bool = True


class ContainerStatus(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class ContainerState:
    id: str
    status: ContainerStatus
    pid: int | None
    exit_code: int | None
    oom_killed: bool
    started_at: float | None
    finished_at: float | None
    reason: str
    message: str
