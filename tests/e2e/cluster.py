"""Running `orch up` for e2e tests, and talking to it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.fixtures.processes import orch_argv, orch_env, run_orch, stop


def unused_cidr(start: int = 200) -> str:
    """A 10.x/16 that no route on this host covers, for the test cluster's bridges."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    for second in range(start, start + 50):
        if f"10.{second}." not in routes:
            return f"10.{second}.0.0/16"
    raise RuntimeError("no free 10.x/16 for the test cluster")


@contextmanager
def orch_up(tmp_path: Path, *args: str, cidr_start: int = 200) -> Iterator[dict[str, Any]]:
    """Runs orch up until the block ends; yields cluster.json. Checks it cleaned up."""
    state = tmp_path / "up"
    argv = orch_argv("up", "--state-dir", str(state), "--port", "0", *args)
    env = orch_env() | {"ORCH_UP_CIDR": unused_cidr(cidr_start)}
    with open(tmp_path / "up.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        # A lab of three hosts in the emulated VM (debian-vm) takes over a minute to come up.
        deadline = time.monotonic() + 240
        while not (state / "cluster.json").exists():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "orch up did not write cluster.json"
            time.sleep(0.1)
        yield json.loads((state / "cluster.json").read_text())
    finally:
        stop(proc, signal.SIGTERM, timeout=60)
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


def wait_all_removed(info: dict[str, Any], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (left := instances(info)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [(i["name"], i["node"], i["state"], i["reason"], i["desired"]) for i in left]
