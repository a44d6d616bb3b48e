"""Placement throughput with hollow nodes.

A real etcd and a real scheduler process; N hollow agents (no runtime: they
report every desired instance Running and ready at once, with an address, as a
real agent reports a networked container) speak the real gRPC session from one
asyncio process. One app of R replicas (with a readiness probe) is applied; we
time until every instance has reached an agent in its desired set (placed,
committed to etcd and pushed) and until all are reported Running, and read the
scheduler's peak RSS (VmHWM). Every agent hears of every endpoint: we count the
bytes of endpoints each receives, during the start and during a churn of
CHURN_FLIPS readiness changes afterwards (with the scheduler's CPU time then).
With --schedulers N, N schedulers share the etcd and the hollow agents spread
their sessions over them (peak RSS and CPU are the first one's, started first: it
mostly leads).

    python -m bench.hollow --nodes 100 1000 5000 --instances 10000 [--compare-whole-endpoints] [--schedulers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from node.session import first_scheduler
from orch.v1 import agent_pb2 as apb
from orch.v1 import api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb
from tests.fixtures.etcd import free_port, start_etcd
from tests.fixtures.processes import orch_argv, orch_env, stop, wait_port

SESSION = "/orch.v1.AgentSession/Session"
ENDPOINTS_TAG = bytes([10 << 3 | 2])  # SchedulerMessage.endpoints: field 10, length-delimited
NODES_PER_CHANNEL = 20
# After all are Running: this many readiness flips (an instance turns unready, or ready again),
# one every CHURN_EVERY s, as probes do in a cluster at rest; then CHURN_SETTLE s to propagate.
CHURN_FLIPS, CHURN_EVERY, CHURN_SETTLE = (
    100,
    0.05,
    2.0,
)  # HTTP/2 streams share a connection (a real fleet has one each); saves fds


@dataclass
class Result:
    nodes: int
    instances: int
    placed_s: float
    running_s: float
    peak_rss_mib: float
    reconnects: int = 0
    why: Counter[str] = field(default_factory=Counter)  # the errors that ended sessions
    endpoint_mib_per_agent: float = 0.0  # endpoints messages received, on average, until all Running
    churn_kib_per_agent: float = 0.0  # the same during the churn: CHURN_FLIPS readiness changes
    churn_cpu_s: float = 0.0  # the scheduler's CPU time during the churn
    # CPU seconds from the apply until every instance was delivered: the schedulers, this process
    # (the hollow agents; every thread), etcd. Against placed_s, whether 2 cores were all busy.
    delivery_cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)
    half_s: float = 0.0  # from the apply until half of the instances were at their agents
    most_s: float = 0.0  # until nine tenths were

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
    half_at: float = 0.0  # when half, and nine tenths, had arrived: the delivery's shape
    most_at: float = 0.0

    def add(self, n: int) -> None:
        self.seen += n
        now = time.monotonic()
        if not self.half_at and 2 * self.seen >= self.want:
            self.half_at = now
        if not self.most_at and 10 * self.seen >= 9 * self.want:
            self.most_at = now
        if self.seen >= self.want and not self.done.is_set():
            self.at = now
            self.done.set()


@dataclass
class Hollow:
    """One hollow node: what it was told to run, across reconnects."""

    name: str
    index: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    known: set[str] = field(default_factory=set)
    reconnects: int = 0
    why: Counter[str] = field(default_factory=Counter)  # status code and details of each error
    addresses: int = 0  # handed out to its instances
    endpoint_bytes: int = 0  # received in endpoints messages
    reports: dict[str, apb.InstanceReport] = field(default_factory=dict)  # the last one of each instance
    outbox: asyncio.Queue[apb.AgentMessage] | None = None  # of the current session
    endpoint_updates: bool = True  # False: as an agent older than Endpoints updates (the whole view each time)


def running(node: Hollow, inst: pb.Instance) -> apb.InstanceReport:
    """Running and ready with an address, as a real agent reports a networked container: so the
    instance is an endpoint, which every agent's DNS and VIP rules hear about."""
    node.addresses += 1
    ip = f"10.{node.index >> 8 & 255}.{node.index & 255}.{node.addresses % 250 + 2}"
    status = pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, ready=True, ip=ip)
    node.reports[inst.name] = apb.InstanceReport(name=inst.name, app=inst.app, status=status)
    return node.reports[inst.name]


async def hollow_node(channel: grpc.aio.Channel, node: Hollow, stop_event: asyncio.Event, delivered: Delivered) -> None:
    """Like a real agent, reconnect after an error (a busy scheduler may refuse a registration)."""
    while not stop_event.is_set():
        try:
            await hollow_session(channel, node, stop_event, delivered)
        except grpc.aio.AioRpcError as e:
            node.reconnects += 1
            node.why[f"{e.code().name}: {(e.details() or '')[:100]}"] += 1
            await asyncio.sleep(0.5)


async def hollow_session(
    channel: grpc.aio.Channel, node: Hollow, stop_event: asyncio.Event, delivered: Delivered
) -> None:
    outbox: asyncio.Queue[apb.AgentMessage] = asyncio.Queue()
    cap = pb.Resources(cpu_millis=64_000, memory_bytes=256 << 30, pids=1 << 20)
    reg = apb.Register(
        node=node.name, capacity=cap, accepts_templates=True, accepts_endpoint_updates=node.endpoint_updates
    )
    outbox.put_nowait(apb.AgentMessage(register=reg))
    node.outbox = outbox

    async def requests() -> AsyncIterator[apb.AgentMessage]:
        while True:
            yield await outbox.get()

    # Raw responses: endpoints (every agent gets every change) are counted, not parsed; one
    # process parsing them for a thousand agents would measure itself, not the scheduler.
    session: grpc.aio.StreamStreamMultiCallable[apb.AgentMessage, bytes] = channel.stream_stream(
        SESSION, request_serializer=apb.AgentMessage.SerializeToString
    )
    call = session(requests())
    interval = 1.0

    async def heartbeat() -> None:
        while not stop_event.is_set():
            outbox.put_nowait(apb.AgentMessage(heartbeat=apb.Heartbeat()))
            await asyncio.sleep(interval)

    beat: asyncio.Task[None] | None = None
    try:
        async for raw in call:
            if raw[:1] == ENDPOINTS_TAG:
                node.endpoint_bytes += len(raw)
                continue
            msg = apb.SchedulerMessage.FromString(raw)
            if msg.WhichOneof("msg") == "registered":
                interval = msg.registered.heartbeat_interval_ms / 1000
                beat = asyncio.create_task(heartbeat())
                node.ready.set()
            elif msg.WhichOneof("msg") == "desired":
                new = [i for i in msg.desired.instances if i.name not in node.known]
                node.known = {i.name for i in msg.desired.instances}
                delivered.add(len(new))
                if new:
                    report = apb.StatusReport(instances=[running(node, i) for i in new])
                    outbox.put_nowait(apb.AgentMessage(status=report))
    finally:
        if beat:
            beat.cancel()
        call.cancel()


async def quiet(fleet: list[Hollow], still: float = 1.0, limit: float = 120.0) -> None:
    """Until no endpoints arrive for `still` seconds."""
    deadline = time.monotonic() + limit
    last = -1
    while (now := sum(n.endpoint_bytes for n in fleet)) != last and time.monotonic() < deadline:
        last = now
        await asyncio.sleep(still)


async def churn(fleet: list[Hollow]) -> None:
    rng = random.Random(1)
    for _ in range(CHURN_FLIPS):
        node = rng.choice([n for n in fleet if n.reports and n.outbox is not None])
        report = node.reports[rng.choice(sorted(node.reports))]
        report.status.ready = not report.status.ready
        assert node.outbox is not None
        node.outbox.put_nowait(apb.AgentMessage(status=apb.StatusReport(instances=[report])))
        await asyncio.sleep(CHURN_EVERY)
    await asyncio.sleep(CHURN_SETTLE)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpus(scheds: list[subprocess.Popen[bytes]], etcd_pid: int) -> tuple[float, float, float]:
    """CPU seconds so far: the schedulers', this process's (the hollow agents), etcd's."""
    own = os.times()
    return sum(cpu_seconds(p.pid) for p in scheds), own.user + own.system, cpu_seconds(etcd_pid)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run_one(
    nodes: int, instances: int, lease_ttl: int, endpoint_updates: bool = True, schedulers: int = 1
) -> Result:
    etcd = start_etcd()
    ports = [free_port() for _ in range(schedulers)]
    addrs = [f"127.0.0.1:{port}" for port in ports]
    addr = addrs[0]
    scheds: list[subprocess.Popen[bytes]] = []
    stop_event = asyncio.Event()
    delivered = Delivered(instances)
    tasks: list[asyncio.Task[None]] = []
    channels: list[grpc.aio.Channel] = []
    try:
        for k, port in enumerate(ports):  # one after the other: the first to listen leads
            argv = orch_argv(
                "scheduler", "--listen", addrs[k], "--etcd", etcd.endpoint, "--lease-ttl", str(lease_ttl),
                "-v", "--insecure", "--insecure-etcd",  # plaintext: hollow agents measure scheduling, not TLS
            )  # fmt: skip
            log_path = Path(tempfile.gettempdir()) / f"orch-bench-scheduler-{nodes}{f'-{k}' if k else ''}.log"
            with open(log_path, "wb") as log:
                scheds.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=orch_env()))
            wait_port(port, scheds[-1])
        sched = scheds[0]
        fleet = [Hollow(f"hollow-{i:05d}", i, endpoint_updates=endpoint_updates) for i in range(nodes)]
        on_channel: Counter[int] = Counter()  # sessions on each scheduler's newest channel
        newest: dict[int, grpc.aio.Channel] = {}
        for node in fleet:
            k = first_scheduler(node.name, schedulers)  # where a real agent of that name starts
            if on_channel[k] % NODES_PER_CHANNEL == 0:
                newest[k] = grpc.aio.insecure_channel(addrs[k])
                channels.append(newest[k])
            on_channel[k] += 1
            tasks.append(asyncio.create_task(hollow_node(newest[k], node, stop_event, delivered)))
        await asyncio.wait_for(asyncio.gather(*(n.ready.wait() for n in fleet)), timeout=300)
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = api_pb2_grpc.OrchStub(ch)
            spec = pb.AppSpec(name="bench", replicas=instances, image="rootfs:/x", command=["true"])
            spec.resources.cpu_millis = 10
            spec.readiness.tcp = 8080  # so readiness flips (the churn) move endpoints
            cpu_before = cpus(scheds, etcd.proc.pid)
            started = time.monotonic()
            await stub.Apply(api_pb2.ApplyRequest(apps=[spec]))
            await asyncio.wait_for(delivered.done.wait(), timeout=600)
            placed_s = delivered.at - started
            (s1, a1, e1), (s0, a0, e0) = cpus(scheds, etcd.proc.pid), cpu_before
            delivery_cpu = (s1 - s0, a1 - a0, e1 - e0)
            running_s = 0.0
            while not running_s:  # polled gently: each GetApp is a full snapshot in the scheduler
                info = await stub.GetApp(api_pb2.GetAppRequest(name="bench"), timeout=60)
                if info.running == instances:
                    running_s = time.monotonic() - started
                await asyncio.sleep(0.2)
        reconnects = sum(n.reconnects for n in fleet)
        why = sum((n.why for n in fleet), Counter[str]())
        await quiet(fleet)  # the last endpoints of the start reached every agent
        received = sum(n.endpoint_bytes for n in fleet)
        cpu = cpu_seconds(sched.pid)
        await churn(fleet)
        churned = sum(n.endpoint_bytes for n in fleet) - received
        return Result(
            nodes,
            instances,
            placed_s,
            running_s,
            peak_rss_mib(sched.pid),
            reconnects,
            why,
            received / nodes / 2**20,
            churned / nodes / 2**10,
            cpu_seconds(sched.pid) - cpu,
            delivery_cpu,
            delivered.half_at - started,
            delivered.most_at - started,
        )
    finally:
        stop_event.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close()
        for proc in scheds:
            stop(proc)
        etcd.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--instances", type=int, default=10_000)
    # Kubernetes' node lease is 40 s: a big fleet beats slowly; failure detection is measured separately.
    parser.add_argument("--lease-ttl", type=int, default=40, help="node lease TTL for the hollow fleet (seconds)")
    parser.add_argument(
        "--compare-whole-endpoints",
        action="store_true",
        help="after each run, the same with agents that take only whole endpoint views (before issue 12)",
    )
    parser.add_argument(
        "--schedulers", type=int, default=1, help="schedulers on the same etcd; hollow agents spread over them"
    )
    args = parser.parse_args(argv)
    print(
        "| nodes | instances | endpoints to agents | all at agents (s) | all Running (s) | placed/s | Running/s "
        "| scheduler peak RSS | agent reconnects | endpoints received per agent | churn: received per agent "
        "| churn: scheduler CPU | CPU until delivered: schedulers / hollow agents / etcd "
        "| half / nine tenths at agents (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in args.nodes:
        for updates in (True, False) if args.compare_whole_endpoints else (True,):
            r = asyncio.run(run_one(n, args.instances, args.lease_ttl, updates, args.schedulers))
            print(
                f"| {r.nodes} | {r.instances} | {'updates' if updates else 'whole view'} | {r.placed_s:.2f} "
                f"| {r.running_s:.2f} | {r.placed_per_s:,.0f} | {r.running_per_s:,.0f} | {r.peak_rss_mib:.0f} MiB "
                f"| {r.reconnects} | {r.endpoint_mib_per_agent:.2f} MiB | {r.churn_kib_per_agent:,.1f} KiB "
                f"| {r.churn_cpu_s:.1f} s | {' / '.join(f'{c:.1f}' for c in r.delivery_cpu)} s "
                f"| {r.half_s:.2f} / {r.most_s:.2f} |",
                flush=True,
            )
            for reason, count in r.why.most_common(5):
                print(f"  reconnects: {count} x {reason}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
