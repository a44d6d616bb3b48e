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
    *.corrupt-<unix time>   a state file that could not be read, set aside (read_json)

While a Runtime starts the container it holds an flock on the directory itself
(start_lock): a container without a live shim is a start in progress only while
that lock is held, and a start that failed or died is plain to see.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orch import files

__all__ = [
    "ContainerDir",
    "proc_start_time",
    "read_json",
    "set_aside",
    "set_aside_files",
    "start_in_progress",
    "start_lock",
    "write_json_atomic",
]

log = logging.getLogger(__name__)
CORRUPT = ".corrupt-"  # <file>.corrupt-<unix time>: state that could not be read, kept for a post-mortem


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

    No fsync: after a host crash the containers are gone anyway, it would cost
    milliseconds on every start, and read_json sets aside what a crash tore.
    """
    files.write_json_atomic(path, data, mode=0o600, fsync=False)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in path; None if there is none.

    A file that is there but unreadable (empty or torn after a host crash, not JSON,
    not an object, not a file) is set aside with a warning (set_aside) and reads as
    missing: one bad file must not stop an agent from starting. Writers replace files
    atomically, so a reader never sees one half-written.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        set_aside(path, exc.strerror or str(exc))
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        set_aside(path, "empty" if not raw.strip() else f"not JSON ({exc})")
        return None
    if not isinstance(data, dict):
        set_aside(path, f"not a JSON object but {type(data).__name__}")
        return None
    return data


def set_aside(path: Path, why: str) -> Path | None:
    """Rename an unreadable state file to <name>.corrupt-<unix time>, with a warning naming
    both; None if it is gone already (another reader set it aside first)."""
    target = path.with_name(f"{path.name}{CORRUPT}{int(time.time())}")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("state file %s is unreadable (%s) and could not be set aside: %s", path, why, exc)
        return None
    log.warning("state file %s is unreadable (%s): set aside as %s", path, why, target.name)
    return target


def set_aside_files(directory: Path) -> list[str]:
    """Names of the files set aside in directory, oldest first."""
    try:
        names = [name for name in os.listdir(directory) if CORRUPT in name]
    except OSError:
        return []
    return sorted(names, key=lambda name: (name.rpartition(CORRUPT)[2], name))


def start_lock(cdir: ContainerDir) -> int:
    """An fd holding an exclusive flock on the container's directory: a start is in progress
    until it is closed (or its process dies). O_CLOEXEC: no shim or helper inherits it."""
    fd = os.open(cdir.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def start_in_progress(cdir: ContainerDir) -> bool:
    """Whether some Runtime, in any process, holds start_lock on cdir right now."""
    try:
        fd = os.open(cdir.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # also drops our shared lock
    return False


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
