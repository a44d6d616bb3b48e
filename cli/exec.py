"""`orch exec INSTANCE [-i] [-t] -- CMD...`, as `kubectl exec` / `docker exec` behave.

Without -t, the command's stdout and stderr stay separate; -i forwards stdin; -t gives it a
terminal (from the container's devpts): the local terminal goes raw for the session and is
restored on every way out, and window size changes (SIGWINCH) are forwarded.

Exit codes: the command's own (128+n when signal n ended it, 127 not found, 126 cannot run);
orch's own failures print one line and exit with a code of their own (EXIT_* below).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sys
import termios
import threading
import tty as tty_
from collections.abc import Iterator
from types import FrameType
from typing import NoReturn

import click
import grpc

from cli.client import Client, describe_rpc_error
from orch.tls import SCHEDULER, channel
from orch.v1 import exec_pb2 as xpb
from orch.v1.api_pb2_grpc import OrchStub

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_NOT_RUNNING",
    "EXIT_UNREACHABLE",
    "ExecError",
    "run_exec",
]

EXIT_NOT_FOUND = 121  # no such instance
EXIT_NOT_RUNNING = 122  # the instance exists but is not running
EXIT_UNREACHABLE = 123  # its node is not ready, or its agent does not answer
EXIT_ERROR = 125  # anything else: the scheduler cannot be reached, refused the call, ...

CODES = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_NOT_RUNNING,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNREACHABLE,
}


class ExecError(Exception):
    """orch could not run the command: a one-line message and the exit code."""

    def __init__(self, message: str, code: int, signalled: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.signalled = signalled  # SIGTERM/SIGHUP ended it


def run_exec(c: Client, instance: str, command: list[str], *, stdin: bool, tty: bool) -> int:
    """The command's exit code; orch's own failures are printed and give EXIT_*."""
    if tty and not os.isatty(0):
        click.echo("orch exec: stdin is not a terminal; running without -t", err=True)
        tty = False
    start = xpb.ExecStart(instance=instance, command=command, tty=tty, stdin=stdin, size=_size() if tty else None)
    try:
        return _on_some_scheduler(c, xpb.ExecInput(start=start))
    except ExecError as e:
        click.echo(str(e), err=True)
        if e.signalled:
            _exit_now(e.code)
        return e.code
    except KeyboardInterrupt:  # Ctrl-C without -t: the stream was cancelled on the way out
        _exit_now(130)


def _exit_now(code: int) -> NoReturn:
    """Exit at once when a signal ended the session, without the interpreter's teardown: it
    joins gRPC's threads, and one still busy with the cancelled stream kept a Ctrl-C'd exec
    alive on a loaded machine. The terminal is already restored (the finally blocks ran)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def _on_some_scheduler(c: Client, start: xpb.ExecInput) -> int:
    last = "no scheduler address"
    for address in c.addresses:
        with channel(address, c.tls, peer=SCHEDULER) as opened:
            try:  # only a scheduler that answers: once the stream runs, it is not retried elsewhere
                grpc.channel_ready_future(opened).result(timeout=c.timeout)
            except grpc.FutureTimeoutError:
                hint = "is it running? (--scheduler, $ORCH_SCHEDULER; with TLS: --tls-dir, $ORCH_TLS_DIR)"
                last = f"cannot reach the scheduler at {address}; {hint}"
                continue
            try:
                return _session(OrchStub(opened), start)
            except grpc.RpcError as e:
                code = CODES.get(e.code(), EXIT_ERROR)
                message = f"Error: {e.details()}" if code != EXIT_ERROR else describe_rpc_error(e, address)
                raise ExecError(message, code) from None
    raise ExecError(last, EXIT_ERROR)


def _session(stub: OrchStub, start: xpb.ExecInput) -> int:
    # Bounded: stdin is read only as fast as the stream takes it (a big file is not buffered here).
    requests: queue.Queue[xpb.ExecInput | None] = queue.Queue(maxsize=16)
    requests.put(start)
    responses = stub.Exec(iter(requests.get, None))
    try:
        with _raw_terminal(start.start.tty), _forward_resizes(requests, start.start.tty), _ended_by_signals():
            if start.start.stdin:
                threading.Thread(target=_read_stdin, args=(requests,), daemon=True).start()
            for out in responses:
                kind = out.WhichOneof("msg")
                if kind == "stdout":
                    _write_all(1, out.stdout)
                elif kind == "stderr":
                    _write_all(2, out.stderr)
                elif kind == "exit_code":
                    return out.exit_code
    finally:
        responses.cancel()
        with contextlib.suppress(queue.Full):
            requests.put_nowait(None)  # ends the request iterator, if gRPC still reads it
    raise ExecError("Error: the exec ended without the command's exit code", EXIT_ERROR)


def _read_stdin(requests: queue.Queue[xpb.ExecInput | None]) -> None:
    with contextlib.suppress(OSError):
        while data := os.read(0, 32768):
            requests.put(xpb.ExecInput(stdin=data))
    requests.put(xpb.ExecInput(stdin_eof=True))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _size() -> xpb.TerminalSize:
    size = os.get_terminal_size(0)
    return xpb.TerminalSize(rows=size.lines, cols=size.columns)


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    """Raw mode (every key, ^C included, goes to the command) until the block ends, however."""
    if not enabled:
        yield
        return
    saved = termios.tcgetattr(0)
    try:
        tty_.setraw(0, termios.TCSANOW)  # not TCSAFLUSH: keep what was typed ahead
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _forward_resizes(requests: queue.Queue[xpb.ExecInput | None], enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return

    def resized(_sig: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(queue.Full):  # in a signal handler: never block; the next one catches up
            requests.put_nowait(xpb.ExecInput(resize=_size()))

    previous = signal.signal(signal.SIGWINCH, resized)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


@contextlib.contextmanager
def _ended_by_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP end the session through the same finally blocks as the command's end."""

    def stop(sig: int, _frame: FrameType | None) -> None:
        raise ExecError(f"orch exec: stopped by signal {sig}", 128 + sig, signalled=True)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
