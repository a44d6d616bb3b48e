"""Placement throughput with hollow nodes.

A real etcd and a real scheduler process; N hollow agents (no runtime: they
report every desired instance Running at once) speak the real gRPC session
from one asyncio process. One app of R replicas is applied; we time until
every instance has reached an agent in its desired set (placed, committed to
etcd and pushed) and until all are reported Running, and read the
scheduler's peak RSS (VmHWM).

    python -m bench.hollow --nodes 100 1000 5000 --instances 10000
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from orch.v1 import agent_pb2 as apb
from orch.v1 import agent_pb2_grpc, api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb
from tests.fixtures.etcd import free_port, start_etcd
from tests.fixtures.processes import orch_argv, orch_env, stop, wait_port

NODES_PER_CHANNEL = 20  # HTTP/2 streams share a connection (a real fleet has one each); saves fds


@dataclass
class Result:
    nodes: int
    instances: int
    placed_s: float
    running_s: float
    peak_rss_mib: float
    reconnects: int = 0

    @property
    def placed_per_s(self) -> float:
        return self.instances / self.placed_s

    @property
    def running_per_s(self) -> float:
        return self.instances / self.running_s


@dataclass
class Delivered:
    """Instances seen in desired sets across all hollow nodes."""

    want: int
    seen: int = 0
    at: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, n: int) -> None:
        self.seen += n
        if self.seen >= self.want and not self.done.is_set():
            self.at = time.monotonic()
            self.done.set()


@dataclass
class Hollow:
    """One hollow node: what it was told to run, across reconnects."""

    name: str
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    known: set[str] = field(default_factory=set)
    reconnects: int = 0


async def hollow_node(channel: grpc.aio.Channel, node: Hollow, stop_event: asyncio.Event, delivered: Delivered) -> None:
    """Like a real agent, reconnect after an error (a busy scheduler may refuse a registration)."""
    while not stop_event.is_set():
        try:
            await hollow_session(channel, node, stop_event, delivered)
        except grpc.aio.AioRpcError:
            node.reconnects += 1
            await asyncio.sleep(0.5)


async def hollow_session(
    channel: grpc.aio.Channel, node: Hollow, stop_event: asyncio.Event, delivered: Delivered
) -> None:
    outbox: asyncio.Queue[apb.AgentMessage] = asyncio.Queue()
    cap = pb.Resources(cpu_millis=64_000, memory_bytes=256 << 30, pids=1 << 20)
    outbox.put_nowait(apb.AgentMessage(register=apb.Register(node=node.name, capacity=cap, accepts_templates=True)))

    async def requests():  # type: ignore[no-untyped-def]
        while True:
            yield await outbox.get()

    call = agent_pb2_grpc.AgentSessionStub(channel).Session(requests())
    interval = 1.0

    async def heartbeat() -> None:
        while not stop_event.is_set():
            outbox.put_nowait(apb.AgentMessage(heartbeat=apb.Heartbeat()))
            await asyncio.sleep(interval)

    beat: asyncio.Task[None] | None = None
    try:
        async for msg in call:
            if msg.WhichOneof("msg") == "registered":
                interval = msg.registered.heartbeat_interval_ms / 1000
                beat = asyncio.create_task(heartbeat())
                node.ready.set()
            elif msg.WhichOneof("msg") == "desired":
                new = [i for i in msg.desired.instances if i.name not in node.known]
                node.known = {i.name for i in msg.desired.instances}
                delivered.add(len(new))
                if new:
                    running = pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, ready=True)
                    report = apb.StatusReport(
                        instances=[apb.InstanceReport(name=i.name, app=i.app, status=running) for i in new]
                    )
                    outbox.put_nowait(apb.AgentMessage(status=report))
    finally:
        if beat:
            beat.cancel()
        call.cancel()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run_one(nodes: int, instances: int, lease_ttl: int) -> Result:
    etcd = start_etcd()
    port = free_port()
    argv = orch_argv(
        "scheduler", "--listen", f"127.0.0.1:{port}", "--etcd", etcd.endpoint, "--lease-ttl", str(lease_ttl), "-v",
        "--insecure", "--insecure-etcd",  # plaintext: hollow agents measure scheduling, not TLS
    )  # fmt: skip
    log_path = Path(tempfile.gettempdir()) / f"orch-bench-scheduler-{nodes}.log"
    with open(log_path, "wb") as log:
        sched = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=orch_env())
    addr = f"127.0.0.1:{port}"
    stop_event = asyncio.Event()
    delivered = Delivered(instances)
    tasks: list[asyncio.Task[None]] = []
    channels = []
    try:
        wait_port(port, sched)
        fleet = [Hollow(f"hollow-{i:05d}") for i in range(nodes)]
        for i, node in enumerate(fleet):
            if i % NODES_PER_CHANNEL == 0:
                channels.append(grpc.aio.insecure_channel(addr))
            tasks.append(asyncio.create_task(hollow_node(channels[-1], node, stop_event, delivered)))
        await asyncio.wait_for(asyncio.gather(*(n.ready.wait() for n in fleet)), timeout=300)
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = api_pb2_grpc.OrchStub(ch)
            spec = pb.AppSpec(name="bench", replicas=instances, image="rootfs:/x", command=["true"])
            spec.resources.cpu_millis = 10
            started = time.monotonic()
            await stub.Apply(api_pb2.ApplyRequest(apps=[spec]))
            await asyncio.wait_for(delivered.done.wait(), timeout=600)
            placed_s = delivered.at - started
            running_s = 0.0
            while not running_s:  # polled gently: each GetApp is a full snapshot in the scheduler
                info = await stub.GetApp(api_pb2.GetAppRequest(name="bench"), timeout=60)
                if info.running == instances:
                    running_s = time.monotonic() - started
                await asyncio.sleep(0.2)
        reconnects = sum(n.reconnects for n in fleet)
        return Result(nodes, instances, placed_s, running_s, peak_rss_mib(sched.pid), reconnects)
    finally:
        stop_event.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()
        stop(sched)
        etcd.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--instances", type=int, default=10_000)
    # Kubernetes' node lease is 40 s: a big fleet beats slowly; failure detection is measured separately.
    parser.add_argument("--lease-ttl", type=int, default=40, help="node lease TTL for the hollow fleet (seconds)")
    args = parser.parse_args(argv)
    print(
        "| nodes | instances | all at agents (s) | all Running (s) | placed/s | Running/s | scheduler peak RSS "
        "| agent reconnects |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n in args.nodes:
        r = asyncio.run(run_one(n, args.instances, args.lease_ttl))
        print(
            f"| {r.nodes} | {r.instances} | {r.placed_s:.2f} | {r.running_s:.2f} | {r.placed_per_s:,.0f} "
            f"| {r.running_per_s:,.0f} | {r.peak_rss_mib:.0f} MiB | {r.reconnects} |",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
