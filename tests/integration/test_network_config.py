"""The cluster's address ranges on a real etcd: the first scheduler stores them, a later one
with other ranges refuses to start and says which (two schedulers carving subnets or VIPs out of
different ranges would hand out overlapping addresses), one with the same ranges serves."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from orch.v1 import types_pb2 as pb
from scheduler.store import Store
from tests.fixtures.etcd import free_port
from tests.fixtures.processes import orch_argv, orch_env, stop, wait_for
from tests.integration.conftest import orch, start_scheduler


def scheduler_argv(etcd, *extra: str) -> list[str]:
    return orch_argv("scheduler", "--listen", f"127.0.0.1:{free_port()}", "--etcd", etcd.endpoint,
                     "--insecure", "--insecure-etcd", *extra)  # fmt: skip


def test_a_scheduler_with_other_ranges_refuses_to_start(etcd, tmp_path: Path) -> None:
    first = start_scheduler(etcd, tmp_path / "s0.log", "s0", "--service-cidr", "10.97.0.0/24")
    try:
        store = Store([etcd.endpoint])
        stored = store.get(pb.ClusterNetwork, store.keys.network())
        store.close()
        assert stored is not None
        assert stored.value == pb.ClusterNetwork(
            cluster_cidr="10.88.0.0/16", node_subnet_size=24, service_cidr="10.97.0.0/24"
        )

        argv = scheduler_argv(etcd, "--cluster-cidr", "10.77.0.0/16", "--service-cidr", "10.97.0.0/24")
        other = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=orch_env())
        assert other.returncode == 1
        assert "Traceback" not in other.stderr
        assert "--cluster-cidr 10.77.0.0/16 differs from the cluster's 10.88.0.0/16" in other.stderr, other.stderr
        assert "/orch/config/network" in other.stderr

        argv = scheduler_argv(etcd, "--node-subnet-size", "26", "--service-cidr", "10.96.0.0/16")
        other = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=orch_env())
        assert other.returncode == 1
        assert "--node-subnet-size 26 differs from the cluster's 24" in other.stderr, other.stderr
        assert "--service-cidr 10.96.0.0/16 differs from the cluster's 10.97.0.0/24" in other.stderr

        same = start_scheduler(etcd, tmp_path / "s1.log", "s1", "--service-cidr", "10.97.0.0/24")
        try:
            assert orch(same.address, "get", "nodes").returncode == 0
        finally:
            stop(same.proc)
    finally:
        stop(first.proc)


def test_a_scheduler_says_while_it_cannot_reach_etcd(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    argv = orch_argv(
        "scheduler", "--listen", f"127.0.0.1:{free_port()}", "--etcd", dead, "--insecure", "--insecure-etcd"
    )
    log = tmp_path / "scheduler.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=orch_env())
    try:
        wait_for(lambda: "cannot reach etcd yet" in log.read_text(), 30, "the warning")
        assert dead in log.read_text()
        time.sleep(0.5)
        assert proc.poll() is None  # it keeps trying: etcd may start after it (systemd)
    finally:
        stop(proc)
