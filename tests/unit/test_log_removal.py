"""Unit: an instance's logs go with it (node/runtime/logs.py remove_logs, remove_unknown_logs)."""

from __future__ import annotations

from pathlib import Path

from node.runtime.logs import keep_previous, log_file, remove_logs, remove_unknown_logs


def logs_of(log_dir: Path, name: str, rotated: int = 2) -> list[Path]:
    current = log_file(log_dir, name)
    paths = [current, *(current.with_name(f"{current.name}.{i}") for i in range(1, rotated + 1))]
    for p in paths:
        p.write_text("x\n")
    return paths


def test_remove_logs_takes_the_current_rotated_and_previous_files_and_nothing_else(tmp_path: Path) -> None:
    logs_of(tmp_path, "web-abcde")
    keep_previous(log_file(tmp_path, "web-abcde"))  # the last incarnation's, under previous/
    logs_of(tmp_path, "web-abcde")
    other = logs_of(tmp_path, "web-abcd")  # a prefix of the name: not its logs
    remove_logs(tmp_path, "web-abcde")
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(p.name for p in other)


def test_the_sweep_removes_the_logs_of_instances_not_kept_and_leaves_other_files(tmp_path: Path) -> None:
    logs_of(tmp_path, "web-kept1")
    logs_of(tmp_path, "web-gone1")
    keep_previous(log_file(tmp_path, "web-gone2"))  # nothing to keep: no file yet
    logs_of(tmp_path, "web-gone2", rotated=0)
    keep_previous(log_file(tmp_path, "web-gone2"))
    (tmp_path / "notes.txt").write_text("not a log\n")
    (tmp_path / "web-x.log.bak").write_text("not ours either\n")
    assert remove_unknown_logs(tmp_path, {"web-kept1"}) == ["web-gone1", "web-gone2"]
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["notes.txt", "web-kept1.log", "web-kept1.log.1", "web-kept1.log.2", "web-x.log.bak"]


def test_the_sweep_does_not_follow_a_symlink_out_of_the_log_dir(tmp_path: Path) -> None:
    outside = tmp_path / "outside.log"
    outside.write_text("keep me\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "evil.log").symlink_to(outside)
    remove_unknown_logs(logs, set())
    assert outside.read_text() == "keep me\n"
