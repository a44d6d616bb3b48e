"""Service discovery on a real `orch up --nodes 3`: DNS latency from a container, and how soon a
readiness change reaches the names and the VIP rules.

    python -m bench.discovery [--queries 2000] [--rounds 20]      (root; prints markdown tables)

- DNS latency: a UDP socket created in a container's network namespace (the packet's path is
  the container's: eth0, veth, bridge, the agent on the gateway) asks the gateway, one query
  at a time, for an app name (answered), an instance name, and a name that does not exist.
  The forwarding path is measured apart, in-process on loopback (our server, and another one
  of ours as the "upstream"): a test never sends queries to the machine's real resolvers.
- Ready → resolvable: an app with an exec readiness probe (`sh -c "test -e /tmp/ready"`, every
  100 ms), and a second one with a service. Each round removes the file (waits until the name
  has no address and the VIP rule is gone), then creates it through /proc/<pid>/root and
  times: the instance written Ready to etcd (an etcd watch, as the schedulers' own: the moment
  the control plane knows), `flip.orch` answering its address to a container (polled every
  1 ms), and flipvip's DNAT rule in the client node's chain (iptables -S in a loop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rcode

from node.dns import DnsServer, Forwarder
from node.network.netns import open_netns
from node.network.services import ServiceChains
from orch.tls import SCHEDULER, TlsFiles, channel
from orch.v1 import agent_pb2 as apb
from orch.v1 import api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb
from scheduler.store import Store, WatchEvent
from tests.e2e.cluster import unused_cidr
from tests.fixtures.processes import orch_argv, orch_env, stop
from tests.fixtures.rootfs import build_busybox_rootfs

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
APPS = """
apiVersion: orch/v1
kind: App
metadata: {name: client}
spec:
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  stopGracePeriod: 1s
---
apiVersion: orch/v1
kind: App
metadata: {name: web}
spec:
  replicas: 3
  image: rootfs:%(root)s
  command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
  stopGracePeriod: 1s
---
apiVersion: orch/v1
kind: App
metadata: {name: flip}
spec:
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  readiness: {exec: [sh, -c, "test -e /tmp/ready"], periodSeconds: 100ms}
  stopGracePeriod: 1s
---
apiVersion: orch/v1
kind: App
metadata: {name: flipvip}
spec:
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  readiness: {exec: [sh, -c, "test -e /tmp/ready"], periodSeconds: 100ms}
  service: {port: 80}
  stopGracePeriod: 1s
"""


def wait_for(check: Callable[[], T | None], timeout: float, what: str, poll: float = 0.01) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def udp_socket_in(pid: int) -> socket.socket:
    """A UDP socket of pid's network namespace (created there by a throwaway thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    made: list[socket.socket] = []
    with open_netns(pid) as fd:

        def enter() -> None:
            if libc.setns(fd, CLONE_NEWNET) == 0:
                made.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

        worker = threading.Thread(target=enter)
        worker.start()
        worker.join()
    if not made:
        raise RuntimeError(f"cannot enter the network namespace of {pid}")
    return made[0]


def percentiles(ms: list[float]) -> str:
    ms = sorted(ms)
    return f"{statistics.median(ms):.2f} | {ms[int(len(ms) * 0.99) - 1]:.2f} | {ms[-1]:.2f}"


class Cluster:
    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        tls = TlsFiles.in_dir(Path(info["tlsDir"]), "admin").load() if info.get("tlsDir") else None
        self.channel = channel(info["schedulers"][0], tls, peer=SCHEDULER)
        self.stub = api_pb2_grpc.OrchStub(self.channel)

    def running(self, app: str) -> list[pb.Instance]:
        resp = self.stub.ListInstances(api_pb2.ListInstancesRequest(app=app), timeout=5)
        return [i for i in resp.instances if i.status.state == pb.INSTANCE_STATE_RUNNING]

    def bridge_of(self, node: str) -> str:
        agent = next(p for p in self.info["processes"] if p["role"] == "agent" and p["node"] == node)
        return str(agent["argv"][agent["argv"].index("--bridge") + 1])


def ask(sock: socket.socket, gateway: str, name: str) -> tuple[float, dns.message.Message]:
    query = dns.message.make_query(name, "A")
    started = time.perf_counter()
    reply = dns.query.udp(query, gateway, timeout=2, sock=sock)
    return (time.perf_counter() - started) * 1000, reply


def latency_in_container(cluster: Cluster, queries: int) -> list[tuple[str, str]]:
    (client,) = cluster.running("client")
    gateway = client.status.ip.rsplit(".", 1)[0] + ".1"
    web = cluster.running("web")[0]
    rows = []
    with contextlib.closing(udp_socket_in(client.status.pid)) as sock:
        for what, name in (
            ("`web.orch` (3 ready instances)", "web.orch."),
            ("`<instance>.web.orch`", f"{web.name}.web.orch."),
            ("`nope.orch` (NXDOMAIN)", "nope.orch."),
        ):
            for _ in range(50):  # warm up
                ask(sock, gateway, name)
            times = [ask(sock, gateway, name)[0] for _ in range(queries)]
            rows.append((what, percentiles(times)))
    return rows


def latency_forwarded(queries: int) -> str:
    async def measure() -> list[float]:
        upstream = DnsServer("127.0.0.1", "example.test", Forwarder([]), port=0)
        await upstream.start()
        upstream.update(
            apb.Endpoints(apps=[apb.AppEndpoints(app="www", endpoints=[apb.Endpoint(ip="10.1.0.1", ready=True)])])
        )
        ours = DnsServer("127.0.0.1", "orch", Forwarder([("127.0.0.1", upstream.port)]), port=0)
        await ours.start()
        ours.update(apb.Endpoints())
        loop = asyncio.get_running_loop()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                times = []
                for _ in range(queries + 50):
                    query = dns.message.make_query("www.example.test.", "A").to_wire()
                    started = time.perf_counter()
                    await loop.sock_sendto(sock, query, ("127.0.0.1", ours.port))
                    await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)
                    times.append((time.perf_counter() - started) * 1000)
                return times[50:]
        finally:
            await ours.close()
            await upstream.close()

    return percentiles(asyncio.run(measure()))


def set_ready(inst: pb.Instance, ready: bool) -> None:
    flag = Path(f"/proc/{inst.status.pid}/root/tmp/ready")
    if ready:
        flag.touch()
    else:
        flag.unlink(missing_ok=True)


class ReadyWatch:
    """When each instance of flip and flipvip was last written Ready to etcd (an etcd watch, as the
    schedulers' own: the moment the control plane knows)."""

    def __init__(self, info: dict[str, Any]) -> None:
        tls = TlsFiles.in_dir(Path(info["tlsDir"]) / "etcd", "scheduler").load() if info.get("tlsDir") else None
        self.store = Store(info["etcd"], tls=tls)
        self.ready_at: dict[str, float] = {}  # app -> monotonic time its instance turned ready
        self._ready: dict[str, bool] = {}
        self.cancel = self.store.watch(self.store.snapshot().revision + 1, self._events, lambda e: None)

    def _events(self, events: list[WatchEvent], revision: int) -> None:
        now = time.monotonic()
        for ev in events:
            if not ev.key.startswith(("instances/flip/", "instances/flipvip/")) or ev.value is None:
                continue
            inst = pb.Instance.FromString(ev.value)
            if inst.status.ready and not self._ready.get(inst.app):
                self.ready_at[inst.app] = now
            self._ready[inst.app] = inst.status.ready

    def close(self) -> None:
        self.cancel()
        self.store.close()


class Flipper:
    """Turns the probed instances unready and ready again, and times what follows."""

    def __init__(self, cluster: Cluster, sock: socket.socket, gateway: str, chain: str, watch: ReadyWatch) -> None:
        self.cluster, self.sock, self.gateway, self.chain, self.watch = cluster, sock, gateway, chain, watch

    def probed(self) -> list[pb.Instance]:
        return self.cluster.running("flip") + self.cluster.running("flipvip")

    def resolves(self, ip: str) -> bool:
        return ip in {rd.address for rrset in ask(self.sock, self.gateway, "flip.orch.")[1].answer for rd in rrset}

    def rule(self, ip: str) -> bool:
        out = subprocess.run(["iptables", "-t", "nat", "-S", self.chain], capture_output=True, text=True).stdout
        return f"--to-destination {ip}:80" in out

    def round(self) -> tuple[float, float, float, float]:
        """(file → Ready in etcd, Ready → resolvable, file → resolvable, Ready → VIP rule) in ms."""
        both = wait_for(lambda: p if len(p := self.probed()) == 2 else None, 30, "both running")
        flip, vip = sorted(both, key=lambda i: i.app)
        for inst in (flip, vip):
            set_ready(inst, False)
        wait_for(lambda: not any(i.status.ready for i in self.probed()), 10, "not ready")
        wait_for(lambda: not self.resolves(flip.status.ip) and not self.rule(vip.status.ip), 10, "name, rule gone")
        self.watch.ready_at.clear()
        rule_at: list[float] = []

        def watch_rule() -> None:
            wait_for(lambda: self.rule(vip.status.ip), 10, "the VIP rule")
            rule_at.append(time.monotonic())

        thread = threading.Thread(target=watch_rule)
        t0 = time.monotonic()
        for inst in (flip, vip):
            set_ready(inst, True)
        thread.start()
        wait_for(lambda: self.resolves(flip.status.ip), 10, "flip.orch resolvable", poll=0.001)
        resolvable = time.monotonic()
        thread.join(15)
        ready = wait_for(lambda: self.watch.ready_at.get("flip"), 10, "flip Ready in etcd")
        vip_ready = wait_for(lambda: self.watch.ready_at.get("flipvip"), 10, "flipvip Ready in etcd")
        return (
            (ready - t0) * 1000,
            (resolvable - ready) * 1000,
            (resolvable - t0) * 1000,
            (rule_at[0] - vip_ready) * 1000,
        )


def readiness_rounds(cluster: Cluster, rounds: int) -> list[tuple[float, float, float, float]]:
    (client,) = cluster.running("client")
    gateway = client.status.ip.rsplit(".", 1)[0] + ".1"
    chain = ServiceChains.of(cluster.bridge_of(client.node)).dnat
    watch = ReadyWatch(cluster.info)
    try:
        with contextlib.closing(udp_socket_in(client.status.pid)) as sock:
            flipper = Flipper(cluster, sock, gateway, chain, watch)
            return [flipper.round() for _ in range(rounds)]
    finally:
        watch.close()


@contextlib.contextmanager
def orch_up(base: Path) -> Iterator[dict[str, Any]]:
    state = base / "up"
    # Both /16s held until orch up stops: another process must not take them.
    with unused_cidr(244) as services, unused_cidr(170) as cidr:
        argv = orch_argv("up", "--nodes", "3", "--state-dir", str(state), "--port", "0", "--service-cidr", services)
        env = orch_env() | {"ORCH_UP_CIDR": cidr}
        with open(base / "up.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            wait_for(lambda: (state / "cluster.json").exists() or proc.poll() is not None, 60, "cluster.json", 0.1)
            if proc.poll() is not None:
                raise RuntimeError(f"orch up exited: {(base / 'up.log').read_text()[-2000:]}")
            yield json.loads((state / "cluster.json").read_text())
        finally:
            stop(proc, timeout=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (real containers)", file=sys.stderr)
        return 1
    forwarded = latency_forwarded(args.queries)
    with tempfile.TemporaryDirectory(prefix="orch-bench-discovery-") as tmp:
        base = Path(tmp)
        rootfs = build_busybox_rootfs(base / "rootfs")
        with orch_up(base) as info:
            cluster = Cluster(info)
            try:
                r = subprocess.run(orch_argv("--scheduler", info["schedulers"][0], "--tls-dir", info["tlsDir"],
                                             "apply", "-"), input=APPS % {"root": rootfs}, text=True,
                                   capture_output=True, env=orch_env(), check=False)  # fmt: skip
                if r.returncode != 0:
                    raise RuntimeError(f"apply failed: {r.stderr}")
                # flip and flipvip are not ready until a round makes them: Running is enough.
                counts = {"client": 1, "web": 3, "flip": 1, "flipvip": 1}
                wait_for(lambda: all(len(cluster.running(a)) == n for a, n in counts.items()), 120, "all running", 0.2)
                rows = latency_in_container(cluster, args.queries)
                api_ready, to_dns, total, to_rule = (
                    list(c) for c in zip(*readiness_rounds(cluster, args.rounds), strict=True)
                )
            finally:
                cluster.channel.close()
    print(f"DNS query latency, one query at a time, {args.queries} queries each (ms)\n")
    print("| query | p50 | p99 | max |")
    print("|---|---|---|---|")
    for what, text in rows:
        print(f"| {what}, from a container | {text} |")
    print(f"| forwarded: our server → an upstream, both on loopback | {forwarded} |")
    print(f"\nReadiness change → names and VIP rules, {args.rounds} rounds, probe every 100 ms (ms)\n")
    print("| from → to | p50 | p99 | max |")
    print("|---|---|---|---|")
    print(f"| readiness file created → Ready in etcd (probe period, exec probe, report) | {percentiles(api_ready)} |")
    print(f"| **Ready in etcd → `<app>.orch` answers it, in a container** | {percentiles(to_dns)} |")
    print(f"| readiness file created → resolvable | {percentiles(total)} |")
    print(f"| Ready in etcd → its DNAT rule in the client node's VIP chain (polled) | {percentiles(to_rule)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
