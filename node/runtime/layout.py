"""On-disk layout of one container's state dir, shared by the Runtime and the shim.

<state_dir>/<id>/          0700, in a 0700 state_dir: spec.json holds the app's env (secrets)
    spec.json     written by the Runtime before the shim starts (config + cgroup); 0600 like every JSON here
    start.json    written by the shim: shim and container pids (+ start times), started_at
    exit.json     written by the shim once, atomically, when the container has ended
    shim.log      the shim's own stderr (tracebacks), not the container's output
    hostname hosts resolv.conf   bound read-only onto /etc/* in the container
    upper/ work/  the overlay's writable layer
    rootfs/       the overlay mount point (mounted only inside the container)
    layers/       with a user namespace: mount points of the idmapped image layers (ditto)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orch import files

__all__ = ["ContainerDir", "proc_start_time", "read_json", "write_json_atomic"]


@dataclass(frozen=True, slots=True)
class ContainerDir:
    path: Path

    @property
    def spec(self) -> Path:
        return self.path / "spec.json"

    @property
    def start(self) -> Path:
        return self.path / "start.json"

    @property
    def exit(self) -> Path:
        return self.path / "exit.json"

    @property
    def shim_log(self) -> Path:
        return self.path / "shim.log"

    @property
    def etc(self) -> dict[str, Path]:
        """Container path -> the state dir file bound onto it."""
        return {f"/etc/{name}": self.path / name for name in ("hostname", "hosts", "resolv.conf")}

    @property
    def upper(self) -> Path:
        return self.path / "upper"

    @property
    def work(self) -> Path:
        return self.path / "work"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def idmapped(self) -> Path:
        return self.path / "layers"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """tmp + rename: a reader (or an agent after a crash) sees all or nothing.

    No fsync: after a host crash the containers are gone anyway, and it would
    cost milliseconds on every start.
    """
    files.write_json_atomic(path, data, mode=0o600, fsync=False)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None


def proc_start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Start time (clock ticks after boot) of a live pid, to tell it from a reused pid; None if gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parens: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has ended; only its parent has not reaped it
        return None
    return int(fields[19])
