"""Secrets on their way to PID 1, and the secret volumes PID 1 mounts with them.

A container's secrets (variables and files) never touch the node's disk: the Runtime hands them
to the zygote in its request (`SecretPayload.wire`), the shim passes them to PID 1 after "G"
(shim.py `_frame`), and PID 1 merges the variables into its environment and runs SECRET_STEPS.

Each secret volume gets a tmpfs of its own, made detached (fsopen/fsmount: no path reaches it
while it is filled), its files written beneath it, then made read-only and attached at the mount
point `mount_volumes` made before the rootfs went read-only. It lives in the container's mount
namespace only: the host never has it mounted, and the kernel drops it with the container's last
process (nothing to clean up, even after a crash). "noswap" (Linux 6.4+) keeps it out of swap.

Still host root, before the user namespace is joined: the files are owned by the container's
user as the host sees it (its uid plus the id block's base with `hostUsers: false`), and the
mount belongs to the host's user namespace, so container root cannot make it writable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from node.runtime import mountapi
from node.runtime import sys as sc
from node.runtime.beneath import RESOLVE_BENEATH, open_dir, openat2
from node.runtime.init import InitPlan, Step, open_mount_point
from node.runtime.model import SecretFile, SecretMount
from orch.secretrefs import file_mode_problem, item_path_problem

__all__ = ["SECRET_STEPS", "SecretPayload", "check_files"]

_RESOLVE_NO_SYMLINKS = 0x04
_PAGE = 4096
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class SecretPayload:
    """What travels in memory from the Runtime to PID 1."""

    env: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[SecretMount, ...] = ()

    def wire(self) -> dict[str, Any]:
        mounts = [
            {"target": m.target, "files": [[f.path, f.mode, base64.b64encode(f.data).decode()] for f in m.files]}
            for m in self.mounts
        ]
        return {"env": dict(self.env), "mounts": mounts}

    @classmethod
    def from_wire(cls, obj: object) -> SecretPayload:
        """ValueError on anything but what `wire` makes."""
        if not isinstance(obj, dict):
            raise ValueError("secrets: expected an object")
        env, mounts = obj.get("env") or {}, obj.get("mounts") or []
        if not isinstance(env, dict) or not isinstance(mounts, list):
            raise ValueError("secrets: env must be an object, mounts a list")
        try:
            return cls({str(k): str(v) for k, v in env.items()}, tuple(_mount(m) for m in mounts))
        except (KeyError, TypeError, binascii.Error) as e:
            raise ValueError(f"secrets: a mount is malformed ({e})") from None


def _mount(m: dict[str, Any]) -> SecretMount:
    files = tuple(SecretFile(str(p), int(mode), base64.b64decode(data, validate=True)) for p, mode, data in m["files"])
    return SecretMount(str(m["target"]), files)


def _dirs(mount: SecretMount) -> set[str]:
    """Every directory the files need ("a/b/c" needs "a" and "a/b")."""
    return {"/".join(f.path.split("/")[:i]) for f in mount.files for i in range(1, f.path.count("/") + 1)}


def check_files(mount: SecretMount) -> str | None:
    """The first problem with a mount's files (a hostile path, a bad mode, one path twice)."""
    seen: set[str] = set()
    for f in mount.files:
        problem = item_path_problem(f.path) or file_mode_problem(f.mode)
        if problem is not None:
            return f"file {f.path!r} {problem}"
        dirs = {"/".join(f.path.split("/")[:i]) for i in range(1, f.path.count("/") + 1)}
        if f.path in seen or dirs & seen or any(s.startswith(f.path + "/") for s in seen):
            return f'file "{f.path}" clashes with another file of the volume'
        seen.add(f.path)
    return None


def _mount_secret_volumes(s: sc.Syscalls, p: InitPlan) -> None:
    """After pivot_root ("/" is the rootfs) and "G", still host root."""
    sent = {m.target: m for m in p.secret_mounts}
    if set(sent) != set(p.secret_targets):
        raise OSError(
            errno.EINVAL, f"secret volumes: expected files for {sorted(p.secret_targets)}, got {sorted(sent)}"
        )
    userns = p.userns_root if p.userns_fd >= 0 else 0
    owner = (userns + p.uid, userns + p.gid)
    for target in p.secret_targets:
        _mount_one(s, sent[target], owner)


def _mount_one(s: sc.Syscalls, mount: SecretMount, owner: tuple[int, int]) -> None:
    where = f"secret volume at {mount.target}"
    if (problem := check_files(mount)) is not None:  # again, whatever the agent checked
        raise OSError(errno.EINVAL, f"{where}: {problem}")
    pages = sum(max(1, -(-len(f.data) // _PAGE)) for f in mount.files)
    options = {
        "size": str((pages + 4) * _PAGE),
        "nr_inodes": str(len(_dirs(mount)) + len(mount.files) + 16),
        "mode": "0755",
        "uid": str(owner[0]),
        "gid": str(owner[1]),
    }
    attrs = mountapi.MOUNT_ATTR_NOSUID | mountapi.MOUNT_ATTR_NODEV
    tree = mountapi.new_tmpfs(options, ("noswap",), attrs, where)
    try:
        for f in mount.files:
            _write(tree, f, owner)
        mountapi.set_attrs(tree, attrs | mountapi.MOUNT_ATTR_RDONLY, -1, where)
        target = open_mount_point(s, "/", mount.target)
        try:
            mountapi.attach(tree, target, "", where)
        finally:
            s.close(target)
    finally:
        os.close(tree)


def _write(tree: int, f: SecretFile, owner: tuple[int, int]) -> None:
    """One file beneath the detached tmpfs: its directories 0755, itself f.mode, all owner's.
    Every step is resolved beneath the tmpfs: a path that slipped past check_files stays in it."""
    parts = f.path.split("/")
    for i, part in enumerate(parts[:-1]):
        dir_fd = open_dir(tree, "/".join(parts[:i]), RESOLVE_BENEATH)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=dir_fd)
                os.chown(part, *owner, dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(dir_fd)
    fd = openat2(tree, f.path, _FILE_FLAGS, RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS)
    try:
        view = memoryview(f.data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchown(fd, *owner)
        os.fchmod(fd, f.mode)  # after the chown, which clears set-id bits
    finally:
        os.close(fd)


# Run by PID 1 after "G", before EXEC_STEPS (not part of them: `orch exec` joins the container's
# mount namespace, where the volumes already are).
SECRET_STEPS: tuple[Step, ...] = (("mount_secret_volumes", _mount_secret_volumes),)
