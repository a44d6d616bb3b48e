"""Watching an `orch up` cluster through an episode (a restart, an outage) for the
liveness e2e tests: what every instance of some apps looked like all along, node
states, and the events. Polls the scheduler's gRPC API (cheaper than the CLI)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from orch.tls import SCHEDULER, TlsFiles, channel
from orch.v1 import api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb
from tests.fixtures.processes import orch_env, stop

NODE_STATES = {api_pb2.NODE_STATE_READY: "Ready", api_pb2.NODE_STATE_NOT_READY: "NotReady",
               api_pb2.NODE_STATE_RESTARTING: "Restarting"}  # fmt: skip


class Api:
    def __init__(self, info: dict[str, Any]) -> None:
        tls = TlsFiles.in_dir(Path(info["tlsDir"]), "admin").load() if info.get("tlsDir") else None
        self.channel = channel(info["schedulers"][0], tls, peer=SCHEDULER)
        self.stub = api_pb2_grpc.OrchStub(self.channel)

    def instances(self, apps: set[str]) -> list[pb.Instance]:
        resp = self.stub.ListInstances(api_pb2.ListInstancesRequest(), timeout=5)
        return [i for i in resp.instances if i.app in apps]

    def nodes(self) -> dict[str, str]:
        resp = self.stub.ListNodes(api_pb2.ListNodesRequest(), timeout=5)
        return {n.node.name: NODE_STATES.get(n.state, "?") for n in resp.nodes}

    def events(self, reason: str = "") -> list[pb.Event]:
        resp = self.stub.ListEvents(api_pb2.ListEventsRequest(), timeout=5)
        return [e for e in resp.events if not reason or e.reason == reason]

    def close(self) -> None:
        self.channel.close()


@dataclass
class Seen:
    """Everything an Observer saw of the watched apps' instances."""

    states: dict[str, set[str]] = field(default_factory=dict)  # instance -> states
    pids: dict[str, set[int]] = field(default_factory=dict)  # instance -> pids reported
    node_states: dict[str, set[str]] = field(default_factory=dict)
    errors: int = 0  # polls the scheduler did not answer (it may be down on purpose)

    def add(self, insts: list[pb.Instance], nodes: dict[str, str]) -> None:
        for i in insts:
            state = pb.InstanceState.Name(i.status.state).removeprefix("INSTANCE_STATE_")
            self.states.setdefault(i.name, set()).add(state)
            if i.status.pid:
                self.pids.setdefault(i.name, set()).add(i.status.pid)
        for name, state in nodes.items():
            self.node_states.setdefault(name, set()).add(state)

    def lost(self) -> list[str]:
        return sorted(n for n, s in self.states.items() if "LOST" in s)


@contextmanager
def observed(api: Api, apps: set[str], every: float = 0.2) -> Iterator[Seen]:
    """Poll in the background while the block runs."""
    seen = Seen()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                seen.add(api.instances(apps), api.nodes())
            except grpc.RpcError:
                seen.errors += 1
            done.wait(every)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def snapshot(insts: list[pb.Instance]) -> dict[str, tuple[str, int, int, int]]:
    """name -> (node, pid, restarts, started_at ns): what must not change when nothing moves."""
    return {i.name: (i.node, i.status.pid, i.status.restarts, i.status.started_at.ToNanoseconds()) for i in insts}


def running(api: Api, apps: set[str], count: int, off: str = "") -> list[pb.Instance] | None:
    """count instances of apps, all Running; off: leaving out those on that node (cut off)."""
    insts = [i for i in api.instances(apps) if not off or i.node != off]
    ok = len(insts) == count and all(i.status.state == pb.INSTANCE_STATE_RUNNING and i.status.pid for i in insts)
    return insts if ok else None


def story(api: Api, apps: set[str], since: float, nodes: Collection[str] = ()) -> str:
    """What the cluster says of some apps (and nodes) since a wall-clock time: their instances
    now and the events, each at seconds from `since`. For a failure's message: a wait that ran
    out in the emulated VM otherwise says only what it waited for."""
    lines = [f"instances of {sorted(apps)} now:"]
    for i in api.instances(apps):
        status = pb.InstanceState.Name(i.status.state).removeprefix("INSTANCE_STATE_")
        lines.append(f"  {i.name} on {i.node or '-'}: {status} {i.status.reason} {i.status.message}".rstrip())
    lines.append(f"events since (s from {since:.2f}):")
    for e in sorted(api.events(), key=lambda e: e.time.ToNanoseconds()):
        at = e.time.ToNanoseconds() / 1e9 - since
        if at >= 0 and (e.object in nodes or e.object.rsplit("-", 1)[0] in apps or e.object in apps):
            lines.append(f"  {at:+7.2f} {e.object} {e.reason}: {e.message}")
    return "\n".join(lines)


def process(info: dict[str, Any], role: str, node: str | None = None, index: int = 0) -> dict[str, Any]:
    procs = [p for p in info["processes"] if p["role"] == role and (node is None or p["node"] == node)]
    return dict(procs[index])


def restart(proc: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    """Start a process again exactly as `orch up` did (cluster.json's argv)."""
    with open(log, "ab") as out:
        return subprocess.Popen(proc["argv"], stdout=out, stderr=subprocess.STDOUT, env=orch_env())


class Restarted:
    """Processes a test started again; stopped (by PID) before `orch up` tears the cluster down."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
            stop(p)


def wait_exit(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            return
        if stat[stat.rindex(")") + 2] == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not exit within {timeout}s")
