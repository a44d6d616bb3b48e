"""Container logs in the CRI format, with size-based rotation.

One line per output line:

    2026-01-01T00:00:00.123456789Z stdout F hello
    <RFC3339Nano UTC>              <stream> <tag> <text>

tag F = a full line; P = a partial line (a line longer than MAX_LINE, or the
last bytes before EOF without a newline, are cut into P pieces ended by F).

`LogWriter` runs in the shim (it reads the container's stdout/stderr pipes);
`parse_log_line` and `read_logs` are for the agent (`orch logs [-f] [--tail]`).
Rotation renames X.log -> X.log.1 -> X.log.2 ... and keeps `max_files` files
in all; `read_logs(follow=True)` notices the rename (inode change) and goes
on with the new X.log after draining the old one.

Each incarnation of an instance has a log of its own, as in Kubernetes: before
a container starts again, `keep_previous` moves its log (rotated files too) to
previous/X.log (`orch logs --previous`), replacing the one kept before.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_LINE",
    "LogLine",
    "LogWriter",
    "format_time",
    "keep_previous",
    "log_file",
    "parse_log_line",
    "parse_time",
    "previous_log",
    "read_logs",
]

MAX_LINE = 16 * 1024  # bytes of text per log line before it is split into P pieces


@dataclass(frozen=True, slots=True)
class LogLine:
    time: str  # RFC3339Nano, as written
    stream: str  # "stdout" | "stderr"
    text: str
    partial: bool = False

    @property
    def timestamp(self) -> float:
        return parse_time(self.time)


def format_time(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def parse_time(stamp: str) -> float:
    """Seconds since the epoch from our RFC3339Nano stamps (UTC, 'Z')."""
    base, _, frac = stamp.rstrip("Z").partition(".")
    import calendar

    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or '0'}")


def parse_log_line(line: str) -> LogLine:
    """Parse one CRI log line (without or with its trailing newline). Raises ValueError if malformed."""
    line = line.removesuffix("\n")
    parts = line.split(" ", 3)
    if len(parts) < 3 or parts[1] not in ("stdout", "stderr") or parts[2] not in ("F", "P"):
        raise ValueError(f"not a CRI log line: {line[:80]!r}")
    return LogLine(parts[0], parts[1], parts[3] if len(parts) == 4 else "", parts[2] == "P")


class LogWriter:
    """Writes CRI lines for chunks read from the container's pipes, rotating by size."""

    def __init__(self, path: Path, max_bytes: int = 10 << 20, max_files: int = 3) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_files = max(1, max_files)
        self._pending: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: str, data: bytes) -> None:
        """A chunk from a pipe; b"" means EOF (flushes a last unterminated line)."""
        buf = self._pending[stream] + data
        out = []
        while True:
            nl = buf.find(b"\n")
            if nl < 0 or nl > MAX_LINE:
                if len(buf) <= MAX_LINE:
                    break
                out.append((b"P", buf[:MAX_LINE]))
                buf = buf[MAX_LINE:]
                continue
            out.append((b"F", buf[:nl]))
            buf = buf[nl + 1 :]
        if not data and buf:
            out.append((b"F", buf))
            buf = b""
        self._pending[stream] = buf
        if out:
            stamp = format_time(time.time_ns()).encode()
            name = stream.encode()
            self._emit(b"".join(b"%s %s %s %s\n" % (stamp, name, tag, text) for tag, text in out))

    def _emit(self, record: bytes) -> None:
        if self._size and self._size + len(record) > self.max_bytes:
            self._rotate()
        os.write(self._fd, record)
        self._size += len(record)

    def _rotate(self) -> None:
        os.close(self._fd)
        names = [self.path] + [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.max_files)]
        if self.max_files == 1:
            os.truncate(self.path, 0)
        else:
            for older, newer in zip(reversed(names[1:]), reversed(names[:-1]), strict=True):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(newer, older)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        self._size = 0

    def close(self) -> None:
        for stream in self._pending:
            self.write(stream, b"")
        os.close(self._fd)


def log_file(log_dir: Path, instance: str) -> Path:
    """Where the shim writes an instance's output (the caller has checked the name)."""
    return log_dir / f"{instance}.log"


def previous_log(log_path: Path) -> Path:
    """Where the last incarnation's log is kept: a directory of its own, so no instance name
    can ever be spelt to mean another file."""
    return log_path.parent / "previous" / log_path.name


def keep_previous(log_path: Path) -> bool:
    """Before a container starts again: its log becomes the previous one (replacing what was
    kept) and the new incarnation writes a new one. False: there was no log to keep."""
    if not log_path.exists():
        return False
    previous = previous_log(log_path)
    previous.parent.mkdir(mode=0o700, exist_ok=True)
    for old in _rotated(previous):
        old.unlink(missing_ok=True)
    for current in _rotated(log_path):  # oldest first; X.log last, so a reader sees it go last
        os.rename(current, previous.parent / current.name)
    return True


def remove_logs(log_dir: Path, instance: str) -> None:
    """An instance's logs, its previous incarnation's included: gone with the instance (as
    `docker rm` and the kubelet do), or a node with churn fills its disk with them."""
    current = log_file(log_dir, instance)
    for path in (*_rotated(current), *_rotated(previous_log(current))):
        path.unlink(missing_ok=True)


def remove_unknown_logs(log_dir: Path, keep: Iterable[str]) -> list[str]:
    """The logs of instances not in `keep` (left by a run that ended before it removed them).
    Returns the instances whose logs were removed."""
    keep = set(keep)
    gone: set[str] = set()
    for folder in (log_dir, log_dir / "previous"):
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                name = _log_owner(entry.name)
                if name is not None and name not in keep and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    gone.add(name)
    return sorted(gone)


def _log_owner(file_name: str) -> str | None:
    """The instance of X.log or X.log.N; None for anything else."""
    name, dot, rest = file_name.partition(".log")
    return name if dot and (rest == "" or (rest[:1] == "." and rest[1:].isdigit())) else None


def _rotated(path: Path) -> list[Path]:
    """Existing files, oldest first: X.log.N ... X.log.1 X.log."""
    older = []
    i = 1
    while (p := path.with_name(f"{path.name}.{i}")).exists():
        older.append(p)
        i += 1
    return [*reversed(older), path]


def _lines(data: bytes) -> Iterator[LogLine]:
    for raw in data.splitlines():
        with contextlib.suppress(ValueError):
            yield parse_log_line(raw.decode(errors="replace"))


def read_logs(
    log_path: Path,
    tail: int | None = None,
    follow: bool = False,
    since: float | None = None,
    *,
    done: Callable[[], bool] | None = None,
    poll: float = 0.1,
) -> Iterator[LogLine]:
    """Lines of X.log.N ... X.log (oldest first): the last `tail`, those at or after `since` (epoch s).

    With follow, keep yielding new lines (across rotations) until `done()` is true
    and the current file has been read to its end; `done` None = forever.
    Malformed lines are skipped.
    """
    files = [p for p in _rotated(log_path) if p.exists()]
    fd = None
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(log_path, os.O_RDONLY | os.O_CLOEXEC)  # opened first: nothing falls between
    chunks = [p.read_bytes() for p in files[:-1]]
    head = b""
    if fd is not None:
        head = _read_to_end(fd)
    data = b"".join(chunks) + head
    end_complete = data.rfind(b"\n") + 1
    lines: Iterator[LogLine] | deque[LogLine] = _lines(data[:end_complete])
    if since is not None:
        lines = (ln for ln in lines if ln.timestamp >= since)
    if tail is not None:
        lines = deque(lines, maxlen=tail) if tail > 0 else deque()
    yield from lines
    if not follow:
        if fd is not None:
            os.close(fd)
        return
    yield from _follow(log_path, fd, data[end_complete:], done, poll)


def _read_to_end(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def _follow(path: Path, fd: int | None, rest: bytes, done: Callable[[], bool] | None, poll: float) -> Iterator[LogLine]:
    try:
        while True:
            finished = done is not None and done()  # checked before reading: the last lines are not lost
            if fd is None:
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            if fd is not None:
                rest += _read_to_end(fd)
                cut = rest.rfind(b"\n") + 1
                yield from _lines(rest[:cut])
                rest = rest[cut:]
                if _replaced(path, fd):  # rotated: the old file is complete, go on with the new one
                    rest += _read_to_end(fd)
                    cut = rest.rfind(b"\n") + 1
                    yield from _lines(rest[:cut])
                    rest = rest[cut:]
                    os.close(fd)
                    fd = None
                    continue
            if finished:
                return
            time.sleep(poll)
    finally:
        if fd is not None:
            os.close(fd)


def _replaced(path: Path, fd: int) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return True
    own = os.fstat(fd)
    return (st.st_ino, st.st_dev) != (own.st_ino, own.st_dev)
