"""A host cut off on a lab of hosts: how long until its instances run elsewhere, when a
self-fencing singleton stops, and how long the old instances live on once the link is back.

    python -m bench.partition [--runs 5]      (root; prints a markdown table)

One `orch up --hosts 3` (every default: 1 s node lease) for all runs. Each run applies an app
of 6 replicas (`sleep`, 2 per host) and a singleton with `onNodeLost: Stop` on h3 that logs a
line every 50 ms, cuts h3's link (`ip link set eth0 down` in its namespace: h3 holds an etcd
member and an agent, no scheduler), and measures, polling the scheduler's gRPC API every 50 ms
from the root namespace:

- replaced: from the cut until all 6 replicas Running on h1 and h2 (the two lost ones replaced);
- singleton killed: from the cut until the old singleton's last log line (h3's agent killed it);
- singleton back: from the cut until the replacement's first log line;
- fenced after heal: from the link coming back until h3's agent stopped both old replicas.

Then it deletes both apps and waits for h3 to be Ready again. Log lines are stamped by the shim
as it reads them; the hosts share this machine's clock and disk.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.lab import lab_up, wait_for
from cli import lab as labnet
from node.runtime.logs import parse_log_line
from orch.tls import SCHEDULER, TlsFiles, channel
from orch.v1 import api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb
from tests.fixtures.rootfs import build_busybox_rootfs

CUT = "h3"
REPLICAS = 6


class Cluster:
    def __init__(self, info: dict[str, Any], stub: api_pb2_grpc.OrchStub) -> None:
        self.info = info
        self.stub = stub
        self.netns = {h["name"]: h["netns"] for h in info["lab"]["hosts"]}

    def instances(self, app: str) -> list[pb.Instance]:
        return list(self.stub.ListInstances(api_pb2.ListInstancesRequest(app=app), timeout=5).instances)

    def ready(self) -> bool:
        nodes = self.stub.ListNodes(api_pb2.ListNodesRequest(), timeout=5).nodes
        return len(nodes) == 3 and all(n.state == api_pb2.NODE_STATE_READY for n in nodes)

    def link(self, host: str, up: bool) -> None:
        subprocess.run(["ip", "-n", self.netns[host], "link", "set", labnet.HOST_IFNAME, "up" if up else "down"],
                       check=True)  # fmt: skip

    def cordon(self, node: str, on: bool) -> None:
        self.stub.SetSchedulable(api_pb2.SetSchedulableRequest(name=node, schedulable=not on), timeout=10)

    def events_since(self, since: float) -> list[pb.Event]:
        events = self.stub.ListEvents(api_pb2.ListEventsRequest(limit=1000), timeout=5).events
        return [e for e in events if e.time.ToNanoseconds() / 1e9 >= since]

    def etcd_leader(self) -> str:
        """The host whose etcd member leads (its metrics say so)."""
        for p in self.info["processes"]:
            if p["role"] == "etcd":
                with contextlib.suppress(OSError), urllib.request.urlopen(p["metricsUrl"], timeout=2) as r:
                    if "etcd_server_is_leader 1" in r.read().decode():
                        return str(p["host"])
        return "?"

    def log_times(self, node: str, instance: str) -> list[float]:
        agent = next(p for p in self.info["processes"] if p["role"] == "agent" and p["host"] == node)
        state = Path(agent["argv"][agent["argv"].index("--state-dir") + 1])
        lines = (state / "logs" / f"{instance}.log").read_text().splitlines()
        return [parse_log_line(line).timestamp for line in lines if line.strip()]


def specs(rootfs: Path) -> tuple[pb.AppSpec, pb.AppSpec]:
    steady = pb.AppSpec(name="bench-cut", replicas=REPLICAS, image=f"rootfs:{rootfs}", command=["sleep", "1d"])
    steady.stop_grace_period_ms = 1000
    solo = pb.AppSpec(name="bench-solo", replicas=1, image=f"rootfs:{rootfs}",
                      command=["sh", "-c", "while :; do echo $HOSTNAME; sleep 0.05; done"])  # fmt: skip
    solo.on_node_lost = pb.NODE_LOST_ACTION_STOP
    solo.update.max_surge, solo.update.max_unavailable = 0, 1
    solo.stop_grace_period_ms = 1000
    return steady, solo


def running_on(c: Cluster, app: str, count: int, nodes: set[str]) -> list[pb.Instance] | None:
    insts = [i for i in c.instances(app) if i.node in nodes]
    ok = len(insts) == count and all(i.status.state == pb.INSTANCE_STATE_RUNNING and i.status.pid for i in insts)
    return insts if ok else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_once(c: Cluster, rootfs: Path) -> tuple[float, float, float, float]:
    steady, solo = specs(rootfs)
    for node in ("h1", "h2"):  # the singleton starts on h3
        c.cordon(node, True)
    c.stub.Apply(api_pb2.ApplyRequest(apps=[steady, solo]), timeout=10)
    [old_solo] = wait_for(lambda: running_on(c, "bench-solo", 1, {CUT}), 60, "the singleton on h3")
    for node in ("h1", "h2"):
        c.cordon(node, False)
    insts = wait_for(lambda: running_on(c, "bench-cut", REPLICAS, {"h1", "h2", "h3"}), 60, "6 Running")
    old = [i.status.pid for i in insts if i.node == CUT]
    time.sleep(1)
    leader = c.etcd_leader()
    cut = time.monotonic()
    cut_wall = time.time()
    c.link(CUT, up=False)
    try:
        wait_for(lambda: running_on(c, "bench-cut", REPLICAS, {"h1", "h2"}), 30, "replaced on h1 and h2")
        replaced = time.monotonic() - cut
        [new_solo] = wait_for(lambda: running_on(c, "bench-solo", 1, {"h1", "h2"}), 30, "the singleton back")
        wait_for(lambda: len(c.log_times(new_solo.node, new_solo.name)) > 2, 10, "the new singleton's log")
        # Read while h3 is cut off: once healed, its agent removes the dropped instance and its log.
        killed = c.log_times(CUT, old_solo.name)[-1] - cut_wall
    finally:
        c.link(CUT, up=True)
    healed = time.monotonic()
    wait_for(lambda: not any(alive(p) for p in old), 60, "the old replicas fenced")
    fenced = time.monotonic() - healed
    back = c.log_times(new_solo.node, new_solo.name)[0] - cut_wall
    events = c.events_since(cut_wall)
    lost = min((e.time.ToNanoseconds() / 1e9 - cut_wall for e in events if e.reason == "InstanceLost"), default=-1)
    holds = sorted({e.reason for e in events if e.reason.startswith("Eviction")})
    print(f"  etcd leader before the cut: {leader}; first InstanceLost {lost:.2f} s after the cut; "
          f"holds: {', '.join(holds) or 'none'}", file=sys.stderr, flush=True)  # fmt: skip
    for app in ("bench-cut", "bench-solo"):
        c.stub.DeleteApp(api_pb2.DeleteAppRequest(name=app), timeout=10)
    wait_for(lambda: not c.instances("bench-cut") and not c.instances("bench-solo"), 60, "apps removed")
    wait_for(c.ready, 60, "3 nodes Ready")
    time.sleep(7)  # past any grace the cut started (scheduler/liveness.py reconnect_grace)
    return replaced, killed, back, fenced


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, real containers)", file=sys.stderr)
        return 1
    samples = []
    with tempfile.TemporaryDirectory(prefix="orch-bench-partition-") as tmp:
        base = Path(tmp)
        rootfs = build_busybox_rootfs(base / "rootfs")
        with lab_up(base, 163) as (info, _):
            tls = TlsFiles.in_dir(Path(info["tlsDir"]), "admin").load()
            with channel(info["schedulers"][0], tls, peer=SCHEDULER) as ch:
                c = Cluster(info, api_pb2_grpc.OrchStub(ch))
                wait_for(c.ready, 120, "3 Ready nodes")
                for k in range(args.runs):
                    samples.append(run_once(c, rootfs))
                    r, kl, b, f = samples[-1]
                    print(f"run {k + 1}: replaced {r:.2f} s, singleton killed {kl:.2f} s, back {b:.2f} s, "
                          f"fenced after heal {f:.2f} s", file=sys.stderr, flush=True)  # fmt: skip
    print(f"h3 of `orch up --hosts 3` cut off (default 1 s lease), {len(samples)} runs\n")
    print("| | p50 (s) | min (s) | max (s) |")
    print("|---|---|---|---|")
    for what, i in (
        ("cut to the 2 lost replicas replaced, all 6 Running", 0),
        ("cut to the `onNodeLost: Stop` singleton's last log line (killed by its agent)", 1),
        ("cut to its replacement's first log line", 2),
        ("link back to h3's 2 old replicas stopped (fenced)", 3),
    ):
        xs = [s[i] for s in samples]
        print(f"| {what} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
