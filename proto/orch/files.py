"""The project's one atomic file writer.

A reader (or a process restarted after a crash) sees the old content or the
new, never a part: the data goes to a unique temporary file beside the
target, which is then renamed over it. With fsync (the default) the file is
synced before the rename and the directory after it, so the new content also
survives a power loss; callers whose files die with the host anyway (a
container's runtime state) may skip it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "write_atomic", "write_json_atomic"]


def fsync_dir(directory: Path) -> None:
    """Make a rename (or a create) in directory durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, fsync: bool = True) -> None:
    """Replace path with data, all or nothing; the file gets exactly `mode` (no umask)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600: a private key is never readable, even for a moment.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_json_atomic(
    path: Path,
    doc: object,
    *,
    mode: int = 0o644,
    fsync: bool = True,
    indent: int | None = None,
    sort_keys: bool = False,
) -> None:
    text = json.dumps(doc, indent=indent, sort_keys=sort_keys) + "\n"
    write_atomic(path, text.encode(), mode=mode, fsync=fsync)
