"""The project's one remover of directory trees whose shape someone else chose.

A container's writable layer, an image layer, an extraction in flight: their depth is the
container's or the image's to pick. shutil.rmtree (like os.walk and os.fwalk before Python
3.12/3.13) recurses once per level and raises RecursionError near 1000 levels, which no
`ignore_errors` catches; a path walk from the top fails with ENAMETOOLONG past 4096 bytes.
remove_tree goes down and back up one level at a time instead: relative to directory fds
(never a path from the top), never following a symlink, holding two fds at most, checking that
each `..` is the directory it came from, and refusing to cross into another filesystem.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

__all__ = ["remove_tree"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: Path) -> None:
    """Remove `path` and everything under it; a file or a symlink is just unlinked, a missing
    path is success. Raises OSError naming the path that could not be removed."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if stat.S_ISDIR(top.st_mode):
            _Remover(path, top.st_dev).empty(parent, path.name)
            _gone(os.rmdir, path.name, parent, lambda: path)
        else:
            _gone(os.unlink, path.name, parent, lambda: path)
    finally:
        os.close(parent)


@dataclass(slots=True)
class _Level:
    name: str  # in its parent
    ident: tuple[int, int]  # (st_dev, st_ino)
    pending: list[str] = field(default_factory=list)  # subdirectories still to remove
    rescanned: bool = False


class _Remover:
    def __init__(self, top: Path, dev: int) -> None:
        self.top, self.dev = top, dev

    def where(self, levels: list[_Level], name: str = "") -> Path:
        return self.top.joinpath(*(level.name for level in levels[1:]), *([name] if name else []))

    def empty(self, parent: int, name: str) -> None:
        """Remove everything in the directory `name` of `parent`, depth first, without recursion."""
        fd = self._open(parent, name, lambda: self.top)
        if fd < 0:
            return
        levels = [_Level(name, _ident(fd))]
        try:
            levels[-1].pending = self._clear(fd, levels)
            while True:
                level = levels[-1]
                if level.pending:
                    name = level.pending.pop()
                    child = self._open(fd, name, partial(self.where, levels, name))
                    if child < 0:
                        continue
                    os.close(fd)
                    fd = child
                    levels.append(_Level(name, _ident(fd)))
                    levels[-1].pending = self._clear(fd, levels)
                elif not level.rescanned:  # what appeared meanwhile (nothing should)
                    level.rescanned = True
                    level.pending = self._clear(fd, levels)
                elif len(levels) == 1:
                    return
                else:
                    fd = self._up(fd, levels)
        finally:
            os.close(fd)

    def _open(self, parent: int, name: str, shown: Callable[[], Path]) -> int:
        """A subdirectory's fd; -1 if it is gone or is no directory any more (then unlinked)."""
        try:
            fd = os.open(name, _DIR, dir_fd=parent)
        except FileNotFoundError:
            return -1
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise OSError(exc.errno, f"remove: {exc.strerror}", str(shown())) from None
            _gone(os.unlink, name, parent, shown)
            return -1
        if os.fstat(fd).st_dev != self.dev:
            os.close(fd)
            raise OSError(errno.EXDEV, "remove: another filesystem is mounted here", str(shown()))
        return fd

    def _clear(self, fd: int, levels: list[_Level]) -> list[str]:
        """Unlink every non-directory in fd's directory; the names of its subdirectories."""
        subdirs = []
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                else:
                    _gone(os.unlink, entry.name, fd, partial(self.where, levels, entry.name))
        return subdirs

    def _up(self, fd: int, levels: list[_Level]) -> int:
        """Back to the parent (checked to be the one we came from), removing the emptied level."""
        done = levels.pop()
        parent = os.open("..", _DIR, dir_fd=fd)
        if _ident(parent) != levels[-1].ident:
            os.close(parent)
            raise OSError(errno.ESTALE, "remove: the tree was moved while it was removed", str(self.where(levels)))
        os.close(fd)
        _gone(os.rmdir, done.name, parent, partial(self.where, levels, done.name))
        return parent


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _gone(remove: Callable[..., None], name: str, dir_fd: int, shown: Callable[[], Path]) -> None:
    """remove(name, dir_fd=dir_fd) (os.unlink or os.rmdir); already gone is fine. shown() is the
    path for the error message, built only then (building it each time would cost O(depth))."""
    try:
        remove(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OSError(exc.errno, f"remove: {exc.strerror}", str(shown())) from None
