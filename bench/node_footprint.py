"""What a node keeps resident: per container beside its workload, and the agent with 100 containers.

    python -m bench.node_footprint [--containers 10] [--agent-containers 100]      (root)

Per container (Runtime in this process, busybox `sleep 1000` containers, as runtime_start's
PSS measure): the PSS (/proc/PID/smaps_rollup) of every process that stays resident beside the
workload: the supervisor (start.json's shim_pid: orch-shim) and, with `init: true`, PID 1
(orch-init). The workload itself (`sleep`) is shown for scale, not counted. Per node, once:
the zygote and its spare shim with its pre-staged PID 1 (they live as long as the agent).

Agent: `orch up --nodes 1` (real etcd, scheduler, one agent), an app of N `sleep` replicas; once
all are Running, the agent's VmRSS, VmHWM and PSS, and its thread count. PSS splits shared
pages between the processes that map them, so a sum over processes is what they really cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.recovery import orch_up, wait_for
from bench.runtime_start import make_rootfs, pss_kib
from node.runtime import ContainerConfig, Runtime
from orch.tls import SCHEDULER, TlsFiles, channel
from orch.v1 import api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb

APP = "bench-footprint"


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def per_container(rt: Runtime, rootfs: Path, logs: Path, count: int, init: bool) -> dict[str, float]:
    """Mean PSS in MiB of the supervisor, PID 1 (init only) and the workload, over `count` containers."""
    ids = [f"fp-{'init' if init else 'cmd'}-{i}" for i in range(count)]
    shims, inits, workloads = [], [], []
    try:
        for id in ids:
            config = ContainerConfig(
                id=id, rootfs=rootfs, argv=("sleep", "1000"), env={}, log_path=logs / id, init=init
            )
            rt.start(config)
        time.sleep(0.5)  # settled: the shims have exec'd orch-shim
        for id in ids:
            start = json.loads((rt.state_dir / id / "start.json").read_text())
            shims.append(pss_kib(start["shim_pid"]))
            if init:
                inits.append(pss_kib(start["pid"]))
                workloads.append(sum(pss_kib(c) for c in children(start["pid"])))
            else:
                workloads.append(pss_kib(start["pid"]))
    finally:
        for id in ids:
            rt.stop(id, 0)
            rt.remove(id)
    mib = {"shim": statistics.mean(shims) / 1024, "init": statistics.mean(inits) / 1024 if inits else 0.0}
    return mib | {"workload": statistics.mean(workloads) / 1024}


def per_node(rt: Runtime) -> dict[str, float]:
    """PSS in MiB of the zygote, and of its spare shim with the spare's pre-staged PID 1."""
    zygote = rt._zygote.pid() if rt._zygote is not None else None
    if zygote is None:
        return {}
    spares = [c for c in children(zygote) if Path(f"/proc/{c}/cmdline").read_bytes().startswith(b"orch-shim (spare)")]
    spare = sum(pss_kib(s) + sum(pss_kib(c) for c in children(s)) for s in spares)
    return {"zygote": pss_kib(zygote) / 1024, "spare shim + its PID 1": spare / 1024}


def rss_by_mapping(pid: int, top: int = 8) -> list[tuple[str, float]]:
    """The largest holders of pid's RSS, MiB: files by name, anonymous memory as one entry."""
    sizes: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            name = fields[5] if len(fields) > 5 and not fields[5].startswith("[stack") else "[anon]"
            name = "[anon]" if name == "[heap]" else name
        elif fields and fields[0] == "Rss:":
            sizes[name] = sizes.get(name, 0) + int(fields[1])
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])[:top]
    return [(Path(n).name if n.startswith("/") else n, kib / 1024) for n, kib in ranked]


def agent_footprint(rootfs: Path, base: Path, replicas: int) -> dict[str, float]:
    with orch_up(base, 1, Path(tempfile.gettempdir()) / "orch-bench-footprint-logs") as info:
        tls = TlsFiles.in_dir(Path(info["tlsDir"]), "admin").load() if info.get("tlsDir") else None
        stub = api_pb2_grpc.OrchStub(channel(info["schedulers"][0], tls, peer=SCHEDULER))
        spec = pb.AppSpec(name=APP, replicas=replicas, image=f"rootfs:{rootfs}", command=["sleep", "100000"])
        spec.stop_grace_period_ms = 1000
        stub.Apply(api_pb2.ApplyRequest(apps=[spec]), timeout=10)

        def running() -> bool:
            insts = stub.ListInstances(api_pb2.ListInstancesRequest(app=APP), timeout=10).instances
            return sum(i.status.state == pb.INSTANCE_STATE_RUNNING for i in insts) == replicas

        wait_for(running, 300, f"{replicas} Running")
        time.sleep(5)  # a few heartbeats and probes' worth of steady state
        agent = next(p["pid"] for p in info["processes"] if p["role"] == "agent")
        status = dict(line.split(":", 1) for line in Path(f"/proc/{agent}/status").read_text().splitlines())
        kib = {key: int(status[key].split()[0]) for key in ("VmRSS", "VmHWM")}
        print("agent RSS by mapping, MiB: " + ", ".join(f"{n} {m:.1f}" for n, m in rss_by_mapping(agent)))
        return {
            "VmRSS": kib["VmRSS"] / 1024,
            "VmHWM": kib["VmHWM"] / 1024,
            "PSS": pss_kib(agent) / 1024,
            "threads": float(status["Threads"].strip()),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--containers", type=int, default=10, help="idle containers per PSS measure")
    ap.add_argument("--agent-containers", type=int, default=100, help="replicas for the agent's RSS; 0: skip")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (real containers)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="orch-bench-footprint-") as tmp:
        base = Path(tmp)
        rootfs = make_rootfs(base / "rootfs")
        (base / "logs").mkdir()
        rt = Runtime(base / "state", f"orch-bench-{os.getpid()}/node")
        try:
            plain = per_container(rt, rootfs, base / "logs", args.containers, init=False)
            reaped = per_container(rt, rootfs, base / "logs", args.containers, init=True)
            node = per_node(rt)
        finally:
            rt.cleanup_all()
        agent = agent_footprint(rootfs, base, args.agent_containers) if args.agent_containers else {}
    print_tables(args.containers, plain, reaped, node, args.agent_containers, agent)
    return 0


def print_tables(
    n: int,
    plain: dict[str, float],
    reaped: dict[str, float],
    node: dict[str, float],
    replicas: int,
    agent: dict[str, float],
) -> None:
    print(f"PSS per container beside its workload, MiB (mean of {n} idle `sleep` containers)\n")
    print("| PID 1 | supervisor (orch-shim) | PID 1 (orch-init) | resident beside the workload | workload (sleep) |")
    print("|---|---|---|---|---|")
    for name, m in (("the command (default)", plain), ("orch-init (`init: true`)", reaped)):
        print(f"| {name} | {m['shim']:.2f} | {m['init']:.2f} | **{m['shim'] + m['init']:.2f}** | {m['workload']:.2f} |")
    if node:
        print("\nPer node, once (as long as the agent runs): " + ", ".join(f"{k} {v:.2f} MiB" for k, v in node.items()))
    if agent:
        print(f"\nAgent with {replicas} Running containers (`orch up --nodes 1`), MiB\n")
        print("| VmRSS | VmHWM (peak) | PSS | threads |")
        print("|---|---|---|---|")
        print(f"| {agent['VmRSS']:.1f} | {agent['VmHWM']:.1f} | {agent['PSS']:.1f} | {agent['threads']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
