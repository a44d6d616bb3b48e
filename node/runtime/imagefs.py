"""Read an image's file on the host as the container will see it, without ever leaving the image.

The Runtime needs a few of the image's files before the container exists (/etc/passwd and /etc/group
for `user:`). They live in the overlay's lower layers, which the image controls: `etc/passwd ->
/etc/shadow` would read the host's file, `-> /dev/zero` fill the agent's memory, a FIFO hang its
thread. So a path is resolved the way the kernel will resolve it inside the container, on the host:

* across the layer stack (top layer first) as overlayfs merges it: the topmost layer that has a name
  wins; a whiteout (a 0/0 character device, what node.images writes) hides the name below it; a
  directory marked opaque (trusted.overlay.opaque=y) hides the same directory in the layers below;
  a non-directory below a directory ends the merge;
* symlinks are followed inside the image: an absolute target starts again at the image root, `..`
  stops at the root, at most MAX_SYMLINKS of them (openat2's RESOLVE_IN_ROOT, over a layer stack);
* each directory is opened O_NOFOLLOW relative to its parent's fd, the final file O_NOFOLLOW|
  O_NONBLOCK, and only a regular file (fstat) of at most `limit` bytes is read;
* a walk holds the fds of one merged directory at a time (`..` looks the path up again from the
  image root), and the steps, the depth and the directories opened are capped: whatever the image,
  the agent's fds and time are not the image's to spend.

A missing file (or a symlink into nothing, e.g. to /dev/zero, which no image has) is None; anything
else wrong is an ImageFileError naming the path.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_FILE_BYTES", "MAX_SYMLINKS", "OPAQUE_XATTR", "ImageFileError", "is_whiteout", "read_image_file"]

OPAQUE_XATTR = "trusted.overlay.opaque"  # on a directory: the layers below do not show through
MAX_SYMLINKS = 40  # the kernel's limit per path walk
MAX_FILE_BYTES = 1 << 20
_MAX_DEPTH = 256  # directories deep
_MAX_STEPS = 4096  # components looked up in one walk, symlink targets included
_MAX_OPENS = 4096  # directories opened in one walk (one per layer that has it), `..` walks again included
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # the layer dirs themselves are ours, not the image's
_DIR_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ImageFileError(ValueError):
    """The image's file exists but cannot be used (not a regular file, too big, a symlink loop)."""

    def __init__(self, path: str, why: str, resolved: str = "") -> None:
        via = f" (resolved to {resolved})" if resolved and resolved != path else ""
        super().__init__(f"the image's {path}{via} {why}")
        self.path, self.why, self.resolved = path, why, resolved


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def read_image_file(layers: Sequence[Path], path: str, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The content of the absolute `path` in the image made of `layers` (top first); None if absent."""
    with _Walk(layers, path) as walk:
        try:
            found = walk.resolve()
            return None if found is None else _read_regular(found, path, walk.resolved, limit)
        except ImageFileError:
            raise
        except OSError as exc:  # EACCES, ELOOP from a race, EIO ...
            raise ImageFileError(path, f"cannot be read: {exc.strerror or exc}", walk.resolved) from exc


@dataclass(frozen=True, slots=True)
class _Found:
    st: os.stat_result
    parent: int  # fd of the layer directory that holds it
    name: str
    dirs: tuple[int, ...] = ()  # a directory: its fds in every layer it merges, top first


class _Walk:
    """One resolution. It holds the fds of one merged directory at a time (one per layer that
    has it) and a name list for the path above it: `..` walks the names again from the image
    root instead of keeping every level open, so `a/../a/../...` or a deep path costs few fds.
    The directories it may open are capped (_MAX_OPENS) as its steps are (_MAX_STEPS)."""

    def __init__(self, layers: Sequence[Path], path: str) -> None:
        self.layers, self.path = layers, path
        self.held: set[int] = set()  # every fd open now
        self.opens = 0
        self.names: list[str] = []  # the resolved path so far, below the image root

    def __enter__(self) -> _Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close(tuple(self.held))

    @property
    def resolved(self) -> str:
        return "/" + "/".join(self.names)

    def _open_dir(self, parent: int | None, name: str) -> int:
        self.opens += 1
        if self.opens > _MAX_OPENS:
            raise ImageFileError(self.path, f"needs more than {_MAX_OPENS} directory lookups", self.resolved)
        fd = os.open(name, _DIR_FLAGS if parent is not None else _ROOT_FLAGS, dir_fd=parent)
        self.held.add(fd)
        return fd

    def _close(self, fds: tuple[int, ...]) -> None:
        for fd in fds:
            self.held.discard(fd)
            os.close(fd)

    def resolve(self) -> _Found | None:
        """The final component of the path, symlinks followed inside the image; None if absent."""
        here = self._merge_roots()  # the merged directory at self.names
        todo = list(reversed(self.path.split("/")))  # components still to walk, next one last
        hops = steps = 0
        while todo:
            name = todo.pop()
            steps += 1
            if steps > _MAX_STEPS or len(self.names) >= _MAX_DEPTH:
                raise ImageFileError(self.path, "is nested too deeply")
            if name in ("", "."):
                continue
            if name == "..":  # clamped at the image root
                if self.names:
                    self.names.pop()
                    here = self._walk_again(here)
                continue
            found = self._lookup(here, name)
            if found is None:
                return None
            if stat.S_ISLNK(found.st.st_mode):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise ImageFileError(self.path, "has too many levels of symbolic links")
                target = os.readlink(name, dir_fd=found.parent)
                if not target:
                    return None
                if target.startswith("/"):
                    self.names.clear()
                    here = self._walk_again(here)
                todo.extend(reversed(target.split("/")))
                continue
            self.names.append(name)
            if stat.S_ISDIR(found.st.st_mode):
                self._close(here)
                here = found.dirs
            elif any(c not in ("", ".") for c in todo):
                return None  # a file where a directory is needed: ENOTDIR, nothing there
            else:
                return found  # its parent's fds stay open until the walk ends
        raise ImageFileError(self.path, "is a directory", self.resolved)

    def _merge_roots(self) -> tuple[int, ...]:
        # overlayfs merges the layers' roots whole: an opaque marker on a root is not looked at.
        return tuple(self._open_dir(None, str(layer)) for layer in self.layers)

    def _walk_again(self, here: tuple[int, ...]) -> tuple[int, ...]:
        """Close `here`; the merged directory at self.names, looked up again from the image root."""
        self._close(here)
        here = self._merge_roots()
        for name in self.names:
            found = self._lookup(here, name)
            self._close(here)
            if found is None or not stat.S_ISDIR(found.st.st_mode):
                raise ImageFileError(self.path, "changed while it was read", self.resolved)
            here = found.dirs
        return here

    def _lookup(self, dirs: tuple[int, ...], name: str) -> _Found | None:
        """overlayfs's lookup of `name` in a merged directory (its layers' fds, top first)."""
        for i, fd in enumerate(dirs):
            st = _lstat(fd, name)
            if st is None:
                continue
            if is_whiteout(st):
                return None
            if not stat.S_ISDIR(st.st_mode):
                return _Found(st, fd, name)
            merged = [self._open_dir(fd, name)]
            for lower in dirs[i + 1 :]:
                below = _lstat(lower, name)
                if below is None:
                    continue
                if not stat.S_ISDIR(below.st_mode):
                    break  # a whiteout or a file hides everything under it
                merged.append(self._open_dir(lower, name))
            return _Found(st, fd, name, self._until_opaque(merged))
        return None

    def _until_opaque(self, dirs: list[int]) -> tuple[int, ...]:
        """The directories that show through: up to and including the first opaque one (the
        ones below are closed at once)."""
        for i, fd in enumerate(dirs):
            if _opaque(fd):
                self._close(tuple(dirs[i + 1 :]))
                return tuple(dirs[: i + 1])
        return tuple(dirs)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
            return False
        raise


def _read_regular(found: _Found, path: str, resolved: str, limit: int) -> bytes:
    if not stat.S_ISREG(found.st.st_mode):  # refused before open: opening a device can have effects
        raise ImageFileError(path, f"is {_kind(found.st.st_mode)}, not a regular file", resolved)
    fd = os.open(found.name, _FILE_FLAGS, dir_fd=found.parent)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageFileError(path, f"is {_kind(st.st_mode)}, not a regular file", resolved)
        if st.st_size > limit:
            raise ImageFileError(path, f"is larger than {limit} bytes ({st.st_size})", resolved)
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:  # it grew after the fstat
        raise ImageFileError(path, f"is larger than {limit} bytes", resolved)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISDIR: "a directory",
        stat.S_ISLNK: "a symlink",
    }
    return next((what for test, what in kinds.items() if test(mode)), f"of type {stat.S_IFMT(mode):o}")
