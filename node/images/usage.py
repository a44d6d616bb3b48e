"""Disk accounting for the image store."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class GcResult:
    freed_bytes: int
    removed_images: int
    removed_layers: int
    removed_blobs: int


@dataclass(frozen=True, slots=True)
class DiskUsage:
    total_bytes: int  # allocated blocks, hardlinks counted once per tree
    layer_bytes: int
    blob_bytes: int
    images: int
    layers: int


def tree_bytes(path: Path) -> int:
    """Allocated bytes under `path` (like `du -s`), not following symlinks; best effort (what
    cannot be reached by its path is left out: a figure for metrics and GC, never a reason to fail)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            st = os.lstat(current)
        except OSError:  # gone, or a path too long to name (an image's deep tree): not counted
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            try:
                stack.extend(Path(current) / name for name in os.listdir(current))
            except OSError:
                continue
    return total
