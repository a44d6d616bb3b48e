"""Unit: the project's one atomic writer (orch/files.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orch import files


def test_replaces_whole_with_exact_mode(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("old")
    old_umask = os.umask(0o077)
    try:
        files.write_atomic(path, b"new", mode=0o640)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o640  # exactly the mode asked for, whatever the umask
    assert os.listdir(tmp_path) == ["key"]  # no temporary file left behind


def test_private_file_is_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:  # the mode while the secret is being written
        modes.append(os.fstat(fd).st_mode & 0o777)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spy)
    files.write_atomic(tmp_path / "k", b"secret", mode=0o600)
    assert modes == [0o600]


def test_syncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    files.write_atomic(tmp_path / "a", b"1")
    assert len(synced) == 2 and synced[1] == str(tmp_path)  # the temporary file, then the directory
    synced.clear()
    files.write_atomic(tmp_path / "b", b"1", fsync=False)
    assert synced == []


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    files.write_json_atomic(path, {"v": 1})

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        files.write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["state.json"]
