"""Scheduler processes on a real etcd for the integration tests."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.etcd import EtcdServer, free_port
from tests.fixtures.processes import orch_argv, orch_env, run_orch, stop, wait_port


@dataclass
class SchedulerProc:
    address: str
    proc: subprocess.Popen[bytes]


def start_scheduler(etcd: EtcdServer | str, log: Path, identity: str, *extra: str) -> SchedulerProc:
    """etcd: the fixture's server, or endpoints HOST:PORT,...; extra: more `orch scheduler` options."""
    port = free_port()
    endpoints = etcd if isinstance(etcd, str) else etcd.endpoint
    argv = orch_argv(
        "scheduler", "--listen", f"127.0.0.1:{port}", "--etcd", endpoints, "--id", identity,
        "--insecure", "--insecure-etcd",  # the fixture's etcd is plaintext on loopback
        *extra,
    )  # fmt: skip
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=orch_env())
    wait_port(port, proc)
    return SchedulerProc(f"127.0.0.1:{port}", proc)


@pytest.fixture
def schedulers(etcd, tmp_path) -> Iterator[list[SchedulerProc]]:
    """Two schedulers on one etcd: the first to start leads."""
    procs = [start_scheduler(etcd, tmp_path / "scheduler-0.log", "s0")]
    time.sleep(0.3)  # s0 wins the first election
    procs.append(start_scheduler(etcd, tmp_path / "scheduler-1.log", "s1"))
    yield procs
    for p in procs:
        stop(p.proc)


def orch(address: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_orch("--scheduler", address, *args, stdin=stdin)


def instances(address: str) -> list[dict]:
    r = orch(address, "get", "instances", "-o", "json")
    assert r.returncode == 0, r.stderr
    return list(json.loads(r.stdout))
