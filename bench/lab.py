"""`orch up --hosts 3` on a lab of hosts: how long until it is ready, and until 6 replicas run.

    python -m bench.lab [--runs 3]      (root; prints a markdown table)

Each run starts `orch up --hosts 3` (a network namespace per host on a lab bridge; etcd with a
member on each host, schedulers on h1 and h2, an agent on every host, mutual TLS) and times,
polling the scheduler's gRPC API from the root namespace over the lab network every 50 ms:

- ready: from starting `orch up` until all 3 nodes are Ready;
- 6 Running: from Apply of a busybox app of 6 replicas (`sleep`) until all 6 are Running;
- stopped: from SIGTERM until `orch up` exits, having removed containers, cgroups, the
  namespaces and the bridge.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from orch.tls import SCHEDULER, TlsFiles, channel
from orch.v1 import api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb
from tests.e2e.cluster import unused_cidr
from tests.fixtures.processes import orch_argv, orch_env, stop
from tests.fixtures.rootfs import build_busybox_rootfs

T = TypeVar("T")
POLL = 0.05
REPLICAS = 6


def wait_for(check: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # not serving yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


@contextlib.contextmanager
def lab_up(base: Path, cidr_start: int) -> Iterator[tuple[dict[str, Any], subprocess.Popen[bytes]]]:
    """`orch up --hosts 3` (its output in base/up.log) until the block ends, on a /16 held until it
    has stopped (another process must not take it); yields cluster.json and the process."""
    state = base / "up"
    with unused_cidr(cidr_start) as cidr:
        env = orch_env() | {"ORCH_UP_CIDR": cidr}
        with open(base / "up.log", "ab") as log:
            proc = subprocess.Popen(orch_argv("up", "--hosts", "3", "--state-dir", str(state)), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)  # fmt: skip
        try:
            yield wait_for(lambda: json.loads((state / "cluster.json").read_text()), 120, "cluster.json"), proc
        finally:
            stop(proc, timeout=120)


def run_once(base: Path, rootfs: Path) -> tuple[float, float, float]:
    started = time.monotonic()
    with lab_up(base, 160) as (info, proc):
        tls = TlsFiles.in_dir(Path(info["tlsDir"]), "admin").load()
        with channel(info["schedulers"][0], tls, peer=SCHEDULER) as ch:
            stub = api_pb2_grpc.OrchStub(ch)

            def nodes_ready() -> bool:
                nodes = stub.ListNodes(api_pb2.ListNodesRequest(), timeout=5).nodes
                return len(nodes) == 3 and all(n.state == api_pb2.NODE_STATE_READY for n in nodes)

            wait_for(nodes_ready, 120, "3 Ready nodes")
            ready = time.monotonic() - started
            spec = pb.AppSpec(name="bench-lab", replicas=REPLICAS, image=f"rootfs:{rootfs}", command=["sleep", "1d"])
            spec.stop_grace_period_ms = 1000
            applied = time.monotonic()
            stub.Apply(api_pb2.ApplyRequest(apps=[spec]), timeout=10)

            def all_running() -> bool:
                insts = stub.ListInstances(api_pb2.ListInstancesRequest(app="bench-lab"), timeout=5).instances
                return sum(i.status.state == pb.INSTANCE_STATE_RUNNING for i in insts) == REPLICAS

            wait_for(all_running, 120, f"{REPLICAS} Running")
            running = time.monotonic() - applied
        stopping = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(f"orch up exited with {proc.returncode}; see {base / 'up.log'}")
    return ready, running, time.monotonic() - stopping


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, real containers)", file=sys.stderr)
        return 1
    samples = []
    with tempfile.TemporaryDirectory(prefix="orch-bench-lab-") as tmp:
        base = Path(tmp)
        rootfs = build_busybox_rootfs(base / "rootfs")
        for k in range(args.runs):
            samples.append(run_once(base, rootfs))
            print(f"run {k + 1}: ready {samples[-1][0]:.2f} s, {REPLICAS} Running {samples[-1][1]:.2f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    print(f"`orch up --hosts 3` (3 etcd members, 2 schedulers, 3 agents, mutual TLS), {len(samples)} runs\n")
    print("| | p50 (s) | min (s) | max (s) |")
    print("|---|---|---|---|")
    for what, xs in (
        ("`orch up --hosts 3` to 3 nodes Ready", [s[0] for s in samples]),
        (f"Apply of {REPLICAS} replicas to all Running", [s[1] for s in samples]),
        ("SIGTERM to everything removed", [s[2] for s in samples]),
    ):
        print(f"| {what} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
