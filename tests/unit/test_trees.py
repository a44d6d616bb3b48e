"""Unit: the project's one remover of trees it did not shape (orch/trees.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orch.trees import remove_tree


def chain(top: Path, depth: int, outside: Path) -> None:
    """top/d/d/.../d, `depth` deep, each level with a file and a symlink to `outside`."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
            os.symlink(str(outside), "out", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
    finally:
        os.close(fd)


def test_deeper_than_any_recursion_limit_and_longer_than_any_path(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    depth = sys.getrecursionlimit() * 3  # 2 bytes a level: past PATH_MAX (4096) too
    chain(tmp_path / "deep", depth, outside)
    remove_tree(tmp_path / "deep")
    assert sorted(os.listdir(tmp_path)) == ["outside"]
    assert (outside / "keep").read_text() == "mine"  # no symlink followed


def test_wide_directories_files_symlinks_and_missing(tmp_path: Path) -> None:
    wide = tmp_path / "wide"
    for i in range(500):
        (wide / f"sub{i}" / "a" / "b").mkdir(parents=True)
        (wide / f"sub{i}" / "a" / "f").write_text("x")
    (wide / "sub0" / "locked").mkdir(mode=0)  # root or owner: still removable
    remove_tree(wide)
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep").write_text("x")
    remove_tree(tmp_path / "link")  # the link goes, not what it names
    remove_tree(tmp_path / "missing")
    assert sorted(os.listdir(tmp_path)) == ["target"] and (tmp_path / "target" / "keep").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_another_filesystem_inside_is_not_crossed(tmp_path: Path) -> None:
    """In a mount namespace of its own: the host's mount table is not touched."""
    script = textwrap.dedent(f"""
        import errno, os, subprocess
        from pathlib import Path
        from orch.trees import remove_tree
        top = Path({str(tmp_path / "t")!r})
        (top / "a" / "mnt").mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "none", str(top / "a" / "mnt")], check=True)
        (top / "a" / "mnt" / "theirs").write_text("x")
        try:
            remove_tree(top)
        except OSError as exc:
            print(exc.errno == errno.EXDEV, exc.filename, (top / "a" / "mnt" / "theirs").exists())
    """)
    argv = ["unshare", "-m", "--propagation", "private", sys.executable, "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.stdout.split() == ["True", str(tmp_path / "t" / "a" / "mnt"), "True"], done.stderr
