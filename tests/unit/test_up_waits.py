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
