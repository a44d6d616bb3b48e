"""Running `orch up` for e2e tests, and talking to it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.fixtures.processes import orch_argv, orch_env, run_orch, stop

CIDR_LOCKS = Path(tempfile.gettempdir()) / "orch-test-cidrs"
BRIDGE_TESTS = 213  # 10.213.x.0/24: the single bridges of the network tests (free_subnet), never a cluster's


@contextmanager
def unused_cidr(start: int = 200) -> Iterator[str]:
    """A 10.x/16 that no route on this host covers, for a test cluster's bridges, held until the
    block ends: pytest workers running side by side (make test's -n) must not pick the same one
    before either has made a bridge. The hold is an flock, so a killed test process frees it."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    CIDR_LOCKS.mkdir(exist_ok=True)
    for second in range(start, min(start + 50, 255)):
        if f"10.{second}." in routes or second == BRIDGE_TESTS:
            continue
        fd = os.open(CIDR_LOCKS / f"10.{second}", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield f"10.{second}.0.0/16"
        finally:
            os.close(fd)
        return
    raise RuntimeError(f"no free 10.x/16 from 10.{start} for the test cluster")


@contextmanager
def orch_up(tmp_path: Path, *args: str, cidr_start: int = 200) -> Iterator[dict[str, Any]]:
    """Runs orch up until the block ends; yields cluster.json. Checks it cleaned up."""
    state = tmp_path / "up"
    argv = orch_argv("up", "--state-dir", str(state), "--port", "0", *args)
    with unused_cidr(cidr_start) as cidr, open(tmp_path / "up.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=orch_env() | {"ORCH_UP_CIDR": cidr})
        try:
            # A lab of three hosts in the emulated VM (debian-vm) takes over a minute to come up.
            deadline = time.monotonic() + 240
            while not (state / "cluster.json").exists():
                assert proc.poll() is None, (tmp_path / "up.log").read_text()
                up_log = (tmp_path / "up.log").read_text(errors="replace")
                # A start that failed says why, then stops (minutes when starved): fail now, with
                # its reason, not after the deadline and the stop, past pytest's own timeout.
                if time.monotonic() > deadline or "orch up: stopping" in up_log:  # its own words say why
                    raise AssertionError(f"orch up did not write cluster.json:\n{up_log[-3000:]}")
                time.sleep(0.1)
            yield json.loads((state / "cluster.json").read_text())
        finally:
            # orch up stops every daemon and removes what they made: a lab of three hosts took over
            # 60 s in the emulated VM, and a SIGKILL then leaves the lab behind.
            stop(proc, signal.SIGTERM, timeout=180)
    assert proc.returncode == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert not (state / "cluster.json").exists()


def orch(
    info: dict[str, Any], *args: str, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    tls = ["--tls-dir", info["tlsDir"]] if info.get("tlsDir") else []
    return run_orch("--scheduler", info["schedulers"][0], *tls, *args, stdin=stdin, timeout=timeout)


def instances(info: dict[str, Any]) -> list[dict[str, Any]]:
    r = orch(info, "get", "instances", "-o", "json")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))


def wait_removed(info: dict[str, Any], *apps: str, timeout: float = 20) -> None:
    """Until no instance of these apps is left (none named: of any app, for a cluster a test has
    to itself). A test on a shared cluster names its own, so that another test's leftovers do
    not fail it too."""
    deadline = time.monotonic() + timeout
    while (left := [i for i in instances(info) if not apps or i["app"] in apps]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [(i["name"], i["node"], i["state"], i["reason"], i["desired"]) for i in left]


def delete_apps(info: dict[str, Any], *apps: str, timeout: float = 20) -> None:
    for app in apps:
        r = orch(info, "delete", "app", app)
        assert r.returncode == 0, r.stderr
    wait_removed(info, *apps, timeout=timeout)
