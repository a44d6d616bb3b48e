"""Volumes (`spec.volumes`, `spec.volumeMounts`): the shape checks and the hostPath rule,
one place for the API, the CLI, the scheduler's placement filter and the node's re-check.

Pure: paths are compared as text here. The node resolves them on disk (node/volumes.py,
node/runtime/beneath.py) without following symlinks out of the allowed directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from orch.secretrefs import secret_volume_problems

if TYPE_CHECKING:  # annotations only: the runtime (zygote, PID 1) does not load protobuf
    from orch.v1 import types_pb2

__all__ = [
    "HOST_PATH_TYPES",
    "MEDIUM_MEMORY",
    "MOUNT_FORBIDDEN",
    "allowed_by",
    "host_path_problem",
    "mount_path_problem",
    "volume_problems",
]

MEDIUM_MEMORY = "Memory"  # Kubernetes' spelling; "" is the node's disk
HOST_PATH_TYPES = ("", "Directory", "DirectoryOrCreate")  # "": Directory (it must exist)
# Kernel interfaces the runtime sets up and masks: a volume over them would undo that.
MOUNT_FORBIDDEN = ("/proc", "/sys", "/dev")
# Files the runtime binds from the node (read-only): a directory cannot go over them.
MOUNT_RESERVED = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
MAX_PATH = 4096
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _path_problem(path: str) -> str | None:
    """Absolute, canonical, no NUL: what a path must be before anyone resolves it."""
    if not path.startswith("/"):
        return "must be an absolute path"
    if "\0" in path:
        return f"must not contain a NUL byte (at offset {path.index(chr(0))})"
    if len(path) > MAX_PATH:
        return f"must be at most {MAX_PATH} characters, got {len(path)}"
    parts = path.split("/")[1:]
    if path != "/" and any(part in ("", ".", "..") for part in parts):
        return 'must be a plain absolute path: no "..", "." or empty components, no trailing "/"'
    return None


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top + "/")


def host_path_problem(path: str) -> str | None:
    return _path_problem(path)


def mount_path_problem(path: str) -> str | None:
    """Where a volume may go in the container: not /, not over proc, sys, dev or the etc files."""
    if (problem := _path_problem(path)) is not None:
        return problem
    if path == "/":
        return 'must not be "/"'
    if any(_under(path, top) for top in MOUNT_FORBIDDEN):
        return f"must not be {', '.join(MOUNT_FORBIDDEN)} or below them"
    if path in MOUNT_RESERVED:
        return "is a file the node provides (read-only); choose another path"
    return None


def allowed_by(path: str, allowed: Iterable[str]) -> str | None:
    """The allowed directory that covers `path` (itself or below it), else None."""
    return next((top for top in allowed if _under(path, top)), None)


def volume_problems(spec: types_pb2.AppSpec) -> Iterator[tuple[str, str]]:
    """(field path, message) for every problem with the app's volumes and mounts."""
    names: dict[str, int] = {}
    for i, volume in enumerate(spec.volumes):
        path = f"spec.volumes[{i}]"
        if len(volume.name) > 63 or not _NAME.fullmatch(volume.name):
            yield f"{path}.name", f'"{_printable(volume.name)}" is not a DNS label (lowercase letters, digits, "-")'
        elif volume.name in names:
            yield f"{path}.name", f'"{volume.name}" is already used by spec.volumes[{names[volume.name]}]'
        names.setdefault(volume.name, i)
        yield from _source_problems(path, volume)
    mounted: dict[str, int] = {}
    secrets = {v.name for v in spec.volumes if v.HasField("secret")}
    for i, mount in enumerate(spec.volume_mounts):
        path = f"spec.volumeMounts[{i}]"
        if mount.name not in names:
            yield f"{path}.name", f'no volume named "{_printable(mount.name)}" in spec.volumes'
        if (problem := mount_path_problem(mount.mount_path)) is not None:
            yield f"{path}.mountPath", f'"{_printable(mount.mount_path)}" {problem}'
        elif mount.mount_path in mounted:
            yield f"{path}.mountPath", f"is already mounted by spec.volumeMounts[{mounted[mount.mount_path]}]"
        mounted.setdefault(mount.mount_path, i)
    yield from _below_secret_problems(spec, secrets)


def _below_secret_problems(spec: types_pb2.AppSpec, secrets: set[str]) -> Iterator[tuple[str, str]]:
    """A secret volume is mounted last and read-only (its tmpfs is made after the others):
    no other mount can sit below it."""
    tops = [(j, m.mount_path) for j, m in enumerate(spec.volume_mounts) if m.name in secrets]
    for i, mount in enumerate(spec.volume_mounts):
        for j, top in tops:
            if i != j and top != "/" and mount.mount_path.startswith(top + "/"):
                yield (
                    f"spec.volumeMounts[{i}].mountPath",
                    f"is below spec.volumeMounts[{j}].mountPath, a secret volume (read-only): mount it elsewhere",
                )


def _source_problems(path: str, volume: types_pb2.Volume) -> Iterator[tuple[str, str]]:
    kind = volume.WhichOneof("source")
    if kind is None:
        yield path, "needs one of emptyDir, hostPath or secret"
    elif kind == "secret":
        yield from secret_volume_problems(f"{path}.secret", volume.secret)
    elif kind == "empty_dir":
        empty = volume.empty_dir
        if empty.medium not in ("", MEDIUM_MEMORY):
            medium = _printable(empty.medium)
            yield f"{path}.emptyDir.medium", f'must be "{MEDIUM_MEMORY}" or left out (the node\'s disk), got "{medium}"'
        if empty.size_limit_bytes < 0:
            yield f"{path}.emptyDir.sizeLimit", f"must not be negative, got {empty.size_limit_bytes}"
    else:
        host = volume.host_path
        if (problem := host_path_problem(host.path)) is not None:
            yield f"{path}.hostPath.path", f'"{_printable(host.path)}" {problem}'
        if host.type not in HOST_PATH_TYPES:
            yield f"{path}.hostPath.type", f'must be Directory or DirectoryOrCreate, got "{_printable(host.type)}"'


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")
