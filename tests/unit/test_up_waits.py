"""`orch up` names a daemon that is slow to serve while it waits, and when it is ready
(cli/procs.py): on an emulated VM it was silent for minutes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cli.client import CliError
from cli.procs import Proc, wait_until


def sleeper() -> Proc:
    proc = Proc("agent", "node-0", [sys.executable, "-c", "import time; time.sleep(30)"], None)
    proc.popen = subprocess.Popen(proc.argv)
    return proc


def test_a_slow_daemon_is_named_while_waited_for_and_when_ready(capsys) -> None:
    proc = sleeper()
    ready_at = time.monotonic() + 0.4
    try:
        wait_until(lambda: time.monotonic() >= ready_at, "agent node-0", 10, proc, slow=0.1)
    finally:
        proc.popen.kill()  # type: ignore[union-attr]
        proc.popen.wait()  # type: ignore[union-attr]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "orch up: waiting for agent node-0 (up to 10s)"
    assert out[1].startswith("orch up: agent node-0 ready after ")


def test_a_quick_daemon_says_nothing_and_one_that_never_serves_is_an_error(capsys) -> None:
    proc = sleeper()
    try:
        wait_until(lambda: True, "scheduler-0", 10, proc, slow=0.1)
        assert capsys.readouterr().out == ""
        with pytest.raises(CliError, match="etcd up: not ready after 0s"):
            wait_until(lambda: False, "etcd up", 0.3, proc, slow=0.1)
    finally:
        proc.popen.kill()  # type: ignore[union-attr]
        proc.popen.wait()  # type: ignore[union-attr]


def test_a_start_that_fails_says_why_before_the_long_stop(tmp_path, monkeypatch, capsys) -> None:
    """The reason comes first: on a starved machine the stop took minutes, and the VM's test
    gave up before `orch up` said which daemon had not come up (1f56058)."""
    from cli import up

    told: list[str] = []

    def start(cluster: object, schedulers: int) -> None:
        raise CliError("agent node-2: not ready after 90s")

    monkeypatch.setattr(up, "start", start)
    monkeypatch.setattr(up.Cluster, "stop", lambda self: told.append(capsys.readouterr().err))
    with pytest.raises(SystemExit) as exited:
        up.run_cluster(1, tmp_path / "up", 0, 1)
    assert exited.value.code == 1
    assert told == ["orch up: agent node-2: not ready after 90s\n"]  # said before the stop began


def test_sigterm_while_starting_stops_at_once(tmp_path, monkeypatch, capsys) -> None:
    """Not after every daemon's wait (up to 90 s each on a starved machine)."""
    import os
    import signal
    import threading

    from cli import up

    stopped: list[float] = []
    monkeypatch.setattr(up, "start", lambda cluster, schedulers: time.sleep(30))
    monkeypatch.setattr(up.Cluster, "stop", lambda self: stopped.append(time.monotonic()))
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    began = time.monotonic()
    try:
        up.run_cluster(1, tmp_path / "up", 0, 1)
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    assert stopped and stopped[0] - began < 10
    assert "orch up: SIGTERM while starting" in capsys.readouterr().out
