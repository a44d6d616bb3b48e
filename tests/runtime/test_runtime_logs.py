"""Logs: the CRI line format, rotation, and read_logs (tail, since, follow across rotation)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime
from node.runtime.logs import (
    MAX_LINE,
    LogLine,
    LogWriter,
    format_time,
    keep_previous,
    parse_log_line,
    previous_log,
    read_logs,
)
from tests.runtime.test_runtime_containers import run

MakeConfig = Callable[..., ContainerConfig]


def test_parse_log_line() -> None:
    line = parse_log_line("2026-01-01T00:00:00.123456789Z stdout F hello world\n")
    assert line == LogLine("2026-01-01T00:00:00.123456789Z", "stdout", "hello world")
    assert line.timestamp == pytest.approx(1767225600.123456789)
    assert parse_log_line("2026-01-01T00:00:00.000000000Z stderr P ").partial
    for bad in ("", "hello", "2026 stdin F x", "2026 stdout X x"):
        with pytest.raises(ValueError):
            parse_log_line(bad)


def test_format_time_is_rfc3339_nano() -> None:
    assert format_time(1767225600_000000042) == "2026-01-01T00:00:00.000000042Z"


def test_writer_splits_lines_and_keeps_partials(tmp_path: Path) -> None:
    w = LogWriter(tmp_path / "c.log")
    w.write("stdout", b"one\ntw")
    w.write("stderr", b"err\n")
    w.write("stdout", b"o\n" + b"x" * (MAX_LINE + 5))
    w.close()  # EOF: the unterminated rest is a final F line
    lines = [parse_log_line(raw) for raw in (tmp_path / "c.log").read_text().splitlines()]
    assert [(ln.stream, ln.text, ln.partial) for ln in lines] == [
        ("stdout", "one", False),
        ("stderr", "err", False),
        ("stdout", "two", False),
        ("stdout", "x" * MAX_LINE, True),
        ("stdout", "xxxxx", False),
    ]


def test_writer_rotates_by_size_and_keeps_max_files(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    w = LogWriter(path, max_bytes=1000, max_files=3)
    for i in range(100):
        w.write("stdout", f"line {i:03d}\n".encode())  # ~50 bytes per CRI line
    w.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["c.log", "c.log.1", "c.log.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    texts = [ln.text for ln in read_logs(path)]
    assert texts == [f"line {i:03d}" for i in range(100 - len(texts), 100)]  # oldest gone, order kept
    assert [ln.text for ln in read_logs(path, tail=2)] == ["line 098", "line 099"]


def test_read_logs_since(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_text(
        "2026-01-01T00:00:00.000000000Z stdout F old\n2026-01-01T00:00:10.000000000Z stdout F new\nnot a line\n"
    )
    assert [ln.text for ln in read_logs(path, since=1767225605.0)] == ["new"]


def test_follow_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    w = LogWriter(path, max_bytes=400, max_files=2)
    w.write("stdout", b"first\n")
    finished = threading.Event()

    def produce() -> None:
        for i in range(30):
            w.write("stdout", f"n{i}\n".encode())
            time.sleep(0.005)
        w.close()
        finished.set()

    seen = []
    thread = threading.Thread(target=produce)
    reader = read_logs(path, tail=1, follow=True, done=finished.is_set, poll=0.01)
    seen.append(next(reader).text)
    thread.start()
    seen += [ln.text for ln in reader]
    thread.join()
    assert seen == ["first"] + [f"n{i}" for i in range(30)]


@pytest.mark.root
def test_container_output_is_timestamped_and_rotated(runtime: Runtime, make_config: MakeConfig) -> None:
    script = "echo out; echo err >&2; seq 1 400"
    config = make_config("chatty", "sh", "-c", script, log_max_bytes=4096, log_max_files=2)
    t0 = time.time()
    run(runtime, config)
    lines = list(read_logs(config.log_path))
    assert all(t0 - 1 < ln.timestamp < time.time() + 1 for ln in lines)
    assert {(ln.stream, ln.text) for ln in lines if ln.text in ("out", "err")} <= {("stdout", "out"), ("stderr", "err")}
    numbers = [int(ln.text) for ln in lines if ln.text.isdigit()]  # the streams interleave freely
    assert numbers == list(range(401 - len(numbers), 401)) and len(numbers) > 50
    assert config.log_path.with_name("chatty.log.1").exists()
    assert not config.log_path.with_name("chatty.log.2").exists()


def test_keep_previous_moves_the_log_with_its_rotated_files(tmp_path: Path) -> None:
    """Before a container starts again its log becomes the previous one (orch logs -p), replacing
    the one kept before; what the next incarnation writes starts a new log."""
    log = tmp_path / "web-a.log"
    assert not keep_previous(log)  # never started: nothing to keep
    w = LogWriter(log, max_bytes=200, max_files=3)
    for i in range(12):
        w.write("stdout", f"first {i}\n".encode())
    w.close()
    assert (tmp_path / "web-a.log.1").exists()  # rotated at least once
    first = [ln.text for ln in read_logs(log)]
    assert keep_previous(log)
    assert not log.exists() and not (tmp_path / "web-a.log.1").exists()
    assert [ln.text for ln in read_logs(previous_log(log))] == first
    w = LogWriter(log)
    w.write("stdout", b"second\n")
    w.close()
    assert [ln.text for ln in read_logs(log)] == ["second"]
    assert keep_previous(log)  # the third incarnation: the first's log (and its rotations) are gone
    assert [ln.text for ln in read_logs(previous_log(log))] == ["second"]
    assert sorted(p.name for p in previous_log(log).parent.iterdir()) == ["web-a.log"]


def test_a_follower_goes_on_with_the_next_incarnation(tmp_path: Path) -> None:
    """orch logs -f across a restart: the old log is read to its end, then the new one."""
    log = tmp_path / "web-a.log"
    w = LogWriter(log)
    w.write("stdout", b"one\n")
    seen: list[str] = []
    done = threading.Event()
    reader = threading.Thread(
        target=lambda: seen.extend(ln.text for ln in read_logs(log, follow=True, done=done.is_set, poll=0.01))
    )
    reader.start()
    w.write("stdout", b"two\n")
    w.close()
    time.sleep(0.05)
    keep_previous(log)
    w = LogWriter(log)
    w.write("stdout", b"three\n")
    w.close()
    time.sleep(0.1)
    done.set()
    reader.join(5)
    assert seen == ["one", "two", "three"]
