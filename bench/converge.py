"""Convergence against Docker Swarm, side by side in one run.

    python -m bench.converge [--runs 3] [--orch-only]   (root; needs docker.io: `make bench` installs it)

Each case is timed from the spawn of the CLI command to the first poll (every 50 ms, over
each system's API) where all N replicas are running:

- apply 10: a new app/service of 10 replicas;
- apply 50: a new app/service of 50 replicas;
- scale 50 → 100;
- kill: one container's init SIGKILLed, until it (orch: the same instance, restarted in
  place) or its replacement task (Swarm) is running again and all N are.

orch: `orch up --nodes 3` (real etcd, scheduler, agents, containers), the busybox rootfs as a
local image (`rootfs:`), `restartPolicy: Always`. Swarm: Debian's docker.io, a single-node
swarm, `docker service create --detach --no-resolve-image`, `--restart-delay 0s`, the same
rootfs imported as a local image, and dockerd started with DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1
so it never looks for a public registry. dockerd runs in a network namespace of its own (it
makes bridges and rules there, never on the host), with its data and exec roots under a
temporary directory and its cgroups under a parent of its own; all of it is removed at the end.
The two systems run one after the other for each case, `--runs` times. A second table says where
orch's time went in each case, from its records' own timestamps (created, started, the previous
incarnation's end, stored) against the moment of the spawn or the kill.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.recovery import orch_up
from orch.tls import SCHEDULER, TlsFiles, channel
from orch.v1 import api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb
from scheduler.timeutil import seconds  # the records' timestamps: this host's clock, as time.time()
from tests.fixtures.processes import orch_argv, orch_env, stop
from tests.fixtures.rootfs import build_busybox_rootfs

POLL = 0.05  # s between polls of each system's API
TIMEOUT = 120.0  # s a case may take before the bench gives up
DOCKER, DOCKERD = "/usr/bin/docker", "/usr/sbin/dockerd"  # Debian's docker.io
NETNS = "orchbench-swarm"
CGROUP_PARENT = "orchbench-swarm"
ADDRESS = "192.0.2.1"  # the swarm's advertise address, inside its own namespace only
CASES = ("apply 10", "apply 50", "scale 50 to 100", "SIGKILL to Running")


def wait_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {TIMEOUT:.0f}s waiting for {what}")
        time.sleep(POLL)


def timed(argv: list[str], done: Callable[[], bool], what: str, env: dict[str, str] | None = None) -> float:
    """Seconds from spawning argv until done() (the command's own exit is not waited for first)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_until(lambda: done() or _failed(proc, what), what)
    finally:
        _, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: {' '.join(argv[:4])} exited {proc.returncode}: {err.decode()[-500:]}")
    return elapsed


def _failed(proc: subprocess.Popen[bytes], what: str) -> bool:
    if proc.poll() not in (None, 0):
        raise RuntimeError(f"{what}: the command failed: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
    return False


# -- orch ------------------------------------------------------------------------------


class Orch:
    def __init__(self, info: dict[str, Any], rootfs: Path, manifests: Path) -> None:
        self.phases: list[dict[str, float]] = []  # one per case, in order: where its time went (s)
        tls = TlsFiles.in_dir(Path(info["tlsDir"]), "admin").load() if info.get("tlsDir") else None
        self.channel = channel(info["schedulers"][0], tls, peer=SCHEDULER)
        self.stub = api_pb2_grpc.OrchStub(self.channel)
        self.env = orch_env() | {"ORCH_SCHEDULER": info["schedulers"][0], "ORCH_TLS_DIR": info.get("tlsDir", "")}
        self.rootfs = rootfs
        self.manifests = manifests

    def running(self, app: str) -> list[pb.Instance]:
        insts = self.stub.ListInstances(api_pb2.ListInstancesRequest(app=app), timeout=5).instances
        return [i for i in insts if i.status.state == pb.INSTANCE_STATE_RUNNING and i.desired != pb.DESIRED_STATE_STOP]

    def all_running(self, app: str, n: int) -> bool:
        return len(self.running(app)) == n

    def apply(self, app: str, n: int) -> float:
        path = self.manifests / f"{app}.yaml"
        path.write_text(
            f"apiVersion: orch/v1\nkind: App\nmetadata: {{name: {app}}}\nspec:\n  replicas: {n}\n"
            f"  image: rootfs:{self.rootfs}\n  command: [sleep, '100000']\n  stopGracePeriod: 1s\n"
        )
        return self._traced(orch_argv("apply", str(path)), app, n)

    def scale(self, app: str, n: int) -> float:
        return self._traced(orch_argv("scale", app, str(n)), app, n)

    def _traced(self, argv: list[str], app: str, n: int) -> float:
        began = time.time()
        elapsed = timed(argv, lambda: self.all_running(app, n), f"orch {' '.join(argv[-2:])}", self.env)
        new = [i for i in self.running(app) if seconds(i.created_at) >= began]
        created = [seconds(i.created_at) - began for i in new]
        started = sorted(seconds(i.status.started_at) - began for i in new)
        self.phases.append({
            "spawn to placed": max(created),
            "placed to first start": started[0] - max(created),
            "first to last start": started[-1] - started[0],
            "last start to seen Running": elapsed - started[-1],
        })  # fmt: skip
        return elapsed

    def kill(self, app: str, n: int) -> float:
        victim = self.running(app)[0]
        restarts = victim.status.restarts
        t0 = time.monotonic()
        os.kill(victim.status.pid, signal.SIGKILL)

        def back() -> bool:
            insts = {i.name: i for i in self.running(app)}
            again = insts.get(victim.name)
            return len(insts) == n and again is not None and again.status.restarts > restarts

        killed = time.time()
        wait_until(back, f"orch {victim.name} Running again")
        elapsed = time.monotonic() - t0
        again = next(i for i in self.running(app) if i.name == victim.name)
        ended = seconds(again.status.last_termination.finished_at) - killed
        started = seconds(again.status.started_at) - killed
        stored = seconds(again.updated_at) - killed
        self.phases.append({
            "SIGKILL to exit noticed": ended,
            "exit noticed to started again": started - ended,
            "started to stored": stored - started,
            "stored to seen Running": elapsed - stored,
        })  # fmt: skip
        return elapsed

    def delete(self, *apps: str) -> None:
        for app in apps:
            self.stub.DeleteApp(api_pb2.DeleteAppRequest(name=app), timeout=10)

        def gone() -> bool:
            return not any(
                self.stub.ListInstances(api_pb2.ListInstancesRequest(app=a), timeout=5).instances for a in apps
            )

        wait_until(gone, "orch apps deleted")

    def close(self) -> None:
        self.channel.close()


# -- Docker Swarm --------------------------------------------------------------------------


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


class Swarm:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = str(base / "docker.sock")
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}"}

    def docker(self, *args: str) -> list[str]:
        return [DOCKER, *args]

    def api(self, path: str) -> Any:
        conn = UnixHTTP(self.sock)
        try:
            conn.request("GET", path)
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def tasks(self, service: str) -> list[dict[str, Any]]:
        filters = quote(json.dumps({"service": [service], "desired-state": ["running"]}))
        found = self.api(f"/tasks?filters={filters}")
        if not isinstance(found, list):  # {"message": ...}: no such service yet
            return []
        return [t for t in found if t["Status"]["State"] == "running"]

    def all_running(self, service: str, n: int) -> bool:
        return len(self.tasks(service)) == n

    def apply(self, service: str, n: int) -> float:
        argv = self.docker("service", "create", "--detach", "--no-resolve-image", "--quiet", "--name", service,
                           "--replicas", str(n), "--restart-delay", "0s", "--stop-grace-period", "1s",
                           "orchbench/busybox:1", "sleep", "100000")  # fmt: skip
        return timed(argv, lambda: self.all_running(service, n), f"swarm {service}", self.env)

    def scale(self, service: str, n: int) -> float:
        argv = self.docker("service", "scale", "--detach", f"{service}={n}")
        return timed(argv, lambda: self.all_running(service, n), f"swarm scale {service}", self.env)

    def kill(self, service: str, n: int) -> float:
        victim = self.tasks(service)[0]
        container = self.api(f"/containers/{victim['Status']['ContainerStatus']['ContainerID']}/json")
        t0 = time.monotonic()
        os.kill(int(container["State"]["Pid"]), signal.SIGKILL)

        def back() -> bool:
            tasks = self.tasks(service)
            return len(tasks) == n and victim["ID"] not in {t["ID"] for t in tasks}

        wait_until(back, f"swarm {service}'s task replaced")
        return time.monotonic() - t0

    def delete(self, *services: str) -> None:
        subprocess.run(self.docker("service", "rm", *services), env=self.env, capture_output=True, check=True)
        wait_until(lambda: not any(self.api(f"/containers/json?filters={_label(s)}") for s in services), "swarm rm")


def _label(service: str) -> str:
    return quote(json.dumps({"label": [f"com.docker.swarm.service.name={service}"]}))


@contextlib.contextmanager
def swarm(base: Path, rootfs: Path) -> Iterator[Swarm]:
    """A single-node swarm in a network namespace of its own; everything removed afterwards."""
    if not (Path(DOCKERD).exists() and Path(DOCKER).exists()):
        raise RuntimeError("Docker Swarm needs Debian's docker.io: `make bench` installs it")
    s = Swarm(base)
    netns = ["ip", "-n", NETNS]
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    dockerd: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([*netns, "link", "set", "lo", "up"], check=True)
        # No dummy driver on every kernel: a veth pair, both ends inside, carries the address.
        subprocess.run([*netns, "link", "add", "sw0", "type", "veth", "peer", "name", "sw1"], check=True)
        subprocess.run([*netns, "addr", "add", f"{ADDRESS}/24", "dev", "sw0"], check=True)
        for link in ("sw0", "sw1"):
            subprocess.run([*netns, "link", "set", link, "up"], check=True)
        # nsenter, not `ip netns exec`: that remounts /sys and hides the cgroup mounts.
        argv = ["nsenter", f"--net=/run/netns/{NETNS}", "unshare", "--mount", "--propagation", "private",
                DOCKERD, "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
                "--pidfile", str(base / "docker.pid"), "-H", f"unix://{s.sock}", "--iptables=false",
                "--ip6tables=false", "--bridge=none", f"--cgroup-parent={CGROUP_PARENT}"]  # fmt: skip
        with open(base / "dockerd.log", "wb") as log:
            env = {**os.environ, "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}
            dockerd = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: Path(s.sock).exists() and _pings(s), "dockerd")
        run = {"env": s.env, "capture_output": True, "check": True}
        subprocess.run(s.docker("swarm", "init", "--advertise-addr", ADDRESS), **run)  # type: ignore[call-overload]
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(base / "rootfs.tar"), "."], check=True)
        subprocess.run(s.docker("import", str(base / "rootfs.tar"), "orchbench/busybox:1"), **run)  # type: ignore[call-overload]
        yield s
    finally:
        if dockerd is not None:
            subprocess.run(s.docker("swarm", "leave", "--force"), env=s.env, capture_output=True, check=False)
            stop(dockerd, timeout=60)  # it stops its containers and its containerd
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
        _remove_cgroups(CGROUP_PARENT)


def _pings(s: Swarm) -> bool:
    try:
        conn = UnixHTTP(s.sock)
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _remove_cgroups(name: str) -> None:
    """dockerd leaves its (empty) cgroup parents behind, in every hierarchy."""
    root = Path("/sys/fs/cgroup")
    found = [p for p in root.rglob(name) if p.is_dir()] if root.exists() else []
    for top in found:
        for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


# -- the run -------------------------------------------------------------------------------


def one_round(system: Orch | Swarm, k: int) -> list[float]:
    a, b = f"conv{k}-a", f"conv{k}-b"
    times = [system.apply(a, 10), system.apply(b, 50), system.scale(b, 100), system.kill(b, 100)]
    system.delete(a, b)
    return times


def print_table(results: dict[str, list[list[float]]]) -> None:
    runs = len(results["orch"])
    print(f"Convergence, {runs} runs each, orch and Swarm alternating; p50 (min-max) in seconds\n")
    print("| case | orch | Docker Swarm | orch / Swarm |")
    print("|---|---|---|---|")
    for c, case in enumerate(CASES):
        o = [r[c] for r in results["orch"]]
        s = [r[c] for r in results["swarm"]]
        ratio = statistics.median(o) / statistics.median(s)
        print(f"| {case} | {_spread(o)} | {_spread(s)} | {ratio:.2f}x |")


def print_phases(phases: list[dict[str, float]]) -> None:
    """Where orch's time went, per case: p50 over the runs, in ms, from the records' timestamps
    (created_at, started_at, last_termination.finished_at, updated_at) against the spawn or kill."""
    print("\nWhere orch's time goes, p50 over the runs, ms\n")
    print("| case | step | ms |")
    print("|---|---|---|")
    cases = len(CASES)
    for c, case in enumerate(CASES):
        runs = phases[c::cases]
        for step in runs[0]:
            print(f"| {case} | {step} | {statistics.median(r[step] for r in runs) * 1000:.0f} |")


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--orch-only", action="store_true", help="no Swarm: only orch's times and where they go")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (real containers, dockerd)", file=sys.stderr)
        return 1
    results: dict[str, list[list[float]]] = {"orch": [], "swarm": []}
    with tempfile.TemporaryDirectory(prefix="orch-bench-converge-") as tmp:
        base = Path(tmp)
        rootfs = build_busybox_rootfs(base / "rootfs")
        (base / "swarm").mkdir()
        (base / "manifests").mkdir()
        with orch_up(base) as info, contextlib.ExitStack() as peers:
            o = Orch(info, rootfs, base / "manifests")
            systems: list[tuple[str, Orch | Swarm]] = [("orch", o)]
            if not args.orch_only:
                systems.append(("swarm", peers.enter_context(swarm(base / "swarm", rootfs))))
            try:
                for k in range(args.runs):
                    for name, system in systems:
                        results[name].append(one_round(system, k))
                        print(f"run {k + 1} {name}: " + ", ".join(f"{t:.2f}" for t in results[name][-1]),
                              file=sys.stderr, flush=True)  # fmt: skip
            finally:
                o.close()
    if not args.orch_only:
        print_table(results)
    print_phases(o.phases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
