"""The volumes of this node's instances (docs/runtime.md, Volumes).

    <state_dir>/volumes/               0700: only root on the host reaches what is below
        <instance>/<volume>/           an emptyDir: 0777 like Kubernetes' (any user of the
                                       container may write); `medium: Memory`: a tmpfs there

An emptyDir belongs to the instance, not to its container: it is made at the first start,
kept across restarts (a restart removes and re-creates the container) and removed with the
instance (`remove`), or as a leftover once the scheduler no longer wants the instance
(`remove_unknown`, `cleanup_all`).

A hostPath is checked here, whatever the scheduler decided: it must be one of the node's
allowed directories (`orch node --allow-host-path`) or below one, resolved without leaving it
(a symlink out is refused), and exist unless its type is DirectoryOrCreate. The runtime
resolves it again beneath the same directory when it mounts it (node/runtime/beneath.py).

Size limits: a tmpfs has its size; a disk emptyDir is measured (`du`, as the kubelet does) and
an instance over its limit is evicted (`over_limit`, node/worker.py): docs/decisions.md.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from node.runtime import Mount
from node.runtime import sys as sc
from node.runtime.beneath import RESOLVE_BENEATH, open_dir
from orch.quantity import format_memory
from orch.trees import remove_tree
from orch.v1 import types_pb2 as pb
from orch.volumes import MEDIUM_MEMORY, allowed_by, host_path_problem, mount_path_problem

__all__ = ["NodeVolumes", "VolumeError"]

log = logging.getLogger(__name__)
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DU_TIMEOUT = 30.0  # s; a tree too big to measure in this time is reported, not waited for


class VolumeError(Exception):
    """An instance's volume cannot be provided here; `reason` is its status reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NodeVolumes:
    root: Path  # <state_dir>/volumes
    allowed: tuple[str, ...] = ()  # --allow-host-path, normalized absolute paths

    def prepare(self, inst: pb.Instance) -> tuple[Mount, ...]:
        """The instance's mounts, its emptyDirs made (and tmpfs mounted) if missing. VolumeError."""
        _check_name(inst.name, "instance")
        spec = inst.spec
        sources: dict[str, tuple[Path, str, bool]] = {}  # name -> (root, path beneath it, owned)
        secrets = set()  # made by the runtime in the container (node/secret_volumes.py)
        for volume in spec.volumes:
            _check_name(volume.name, "volume")
            if volume.HasField("secret"):
                secrets.add(volume.name)
            elif volume.HasField("host_path"):
                sources[volume.name] = (*self._host_path(volume), False)
            elif volume.HasField("empty_dir"):
                sources[volume.name] = (self._empty_dir(inst.name, volume), "", True)
            else:
                raise VolumeError("FailedMount", f'volume "{volume.name}" has no source')
        mounts = []
        for m in spec.volume_mounts:
            if m.name in secrets:
                continue
            if m.name not in sources:
                raise VolumeError("FailedMount", f'volumeMount "{m.mount_path}": no volume named "{m.name}"')
            if (problem := mount_path_problem(m.mount_path)) is not None:
                raise VolumeError("FailedMount", f'volumeMount of "{m.name}": mountPath "{m.mount_path}" {problem}')
            root, path, owned = sources[m.name]
            mounts.append(Mount(root, path, m.mount_path, m.read_only, owned))
        return tuple(mounts)

    def _host_path(self, volume: pb.Volume) -> tuple[Path, str]:
        path, kind = volume.host_path.path, volume.host_path.type
        if (problem := host_path_problem(path)) is not None:
            raise VolumeError("HostPathNotAllowed", f'hostPath "{path}" of volume "{volume.name}" {problem}')
        top = allowed_by(path, self.allowed)
        if top is None:
            allowed = ", ".join(self.allowed) or "none"
            raise VolumeError(
                "HostPathNotAllowed",
                f'hostPath "{path}" of volume "{volume.name}" is not under a directory this node allows '
                f"(--allow-host-path: {allowed})",
            )
        below = path[len(top) :].lstrip("/")
        try:
            top_fd = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise VolumeError("FailedMount", f'the allowed directory "{top}" of this node: {e.strerror}') from e
        try:
            try:
                os.close(open_dir(top_fd, below, RESOLVE_BENEATH, create=kind == "DirectoryOrCreate"))
            finally:
                os.close(top_fd)
        except OSError as e:
            reason = "HostPathNotAllowed" if e.errno == errno.EXDEV else "FailedMount"
            missing = e.errno == errno.ENOENT and kind != "DirectoryOrCreate"
            what = "does not exist (type: DirectoryOrCreate makes it)" if missing else e.strerror
            raise VolumeError(reason, f'hostPath "{path}" of volume "{volume.name}": {what}') from e
        return Path(top), below

    def _empty_dir(self, instance: str, volume: pb.Volume) -> Path:
        path = self.root / instance / volume.name
        try:
            for level in (self.root, self.root / instance):
                level.mkdir(mode=0o700, exist_ok=True)
            if not path.is_dir():
                path.mkdir(mode=0o777)
                os.chmod(path, 0o777)  # whatever the umask
            if volume.empty_dir.medium == MEDIUM_MEMORY and not os.path.ismount(path):
                limit = volume.empty_dir.size_limit_bytes
                options = "mode=0777" + (f",size={limit}" if limit else "")
                sc.LinuxSyscalls().mount("tmpfs", str(path), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, options)
        except OSError as e:
            raise VolumeError("FailedMount", f'emptyDir "{volume.name}": {e}') from e
        return path

    def over_limit(self, inst: pb.Instance) -> str:
        """Why the instance is to be evicted ("" if not): a disk emptyDir above its sizeLimit (blocking)."""
        for volume in inst.spec.volumes:
            empty = volume.empty_dir
            if not volume.HasField("empty_dir") or empty.medium == MEDIUM_MEMORY or not empty.size_limit_bytes:
                continue
            used = disk_usage(self.root / inst.name / volume.name, DU_TIMEOUT)
            limit = format_memory(empty.size_limit_bytes)
            if used is None:  # fail closed: a tree made too big to measure must not escape its limit
                return f'Usage of EmptyDir volume "{volume.name}" could not be measured within {DU_TIMEOUT:.0f}s'
            if used > empty.size_limit_bytes:
                return f'Usage of EmptyDir volume "{volume.name}" exceeds the limit "{limit}" ({used} bytes)'
        return ""

    def remove(self, instance: str) -> None:
        """The instance's emptyDirs, tmpfs unmounted first. Gone already is fine."""
        if not _NAME.fullmatch(instance):
            return
        top = self.root / instance
        if not top.is_dir():
            return
        for entry in os.scandir(top):
            if os.path.ismount(entry.path):
                sc.LinuxSyscalls().umount2(entry.path, sc.MNT_DETACH)
        remove_tree(top)  # enters no other filesystem: a tmpfs it could not unmount stays

    def remove_unknown(self, keep: Iterable[str]) -> list[str]:
        """The emptyDirs of instances not in `keep` (an agent restart's leftovers)."""
        wanted = set(keep)
        removed = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name) if self.root.is_dir() else []:
            if entry.name not in wanted:
                try:
                    self.remove(entry.name)
                    removed.append(entry.name)
                except OSError as e:
                    log.warning("removing the volumes of %s: %s", entry.name, e)
        return removed

    def cleanup_all(self) -> None:
        self.remove_unknown(())
        if self.root.is_dir():
            remove_tree(self.root)


def _check_name(name: str, what: str) -> None:
    """Names become directory names here: never trust the scheduler with them."""
    if not _NAME.fullmatch(name):
        raise VolumeError("FailedMount", f"{what} name {name!r} is not a DNS label")


def disk_usage(path: Path, timeout: float = DU_TIMEOUT) -> int | None:
    """Bytes on disk under `path` on its own filesystem, symlinks not followed (`du -sxB1`);
    None if that took longer than `timeout`. 0 if it cannot be measured at all (logged)."""
    try:
        out = subprocess.run(
            ["du", "-s", "-x", "-B1", "--", str(path)], capture_output=True, text=True, timeout=timeout, check=False
        )
        return int(out.stdout.split()[0]) if out.stdout else 0
    except subprocess.TimeoutExpired:
        return None
    except (OSError, ValueError) as e:
        log.warning("measuring %s: %s", path, e)
        return 0
