"""Start-to-exit latency of a /bin/true container: orch's Runtime vs `crun run` and `runc run`.

    python -m bench.runtime_start [--runs 200]      (root; prints a markdown table)

Every path runs the same busybox rootfs with the same limits (memory, cpu
quota + shares, pids) and new namespaces, in two modes: back-to-back, and
isolated (idle ~100 ms before each start, so a cgroup v1 attach pays its RCU
grace period, see RECIPES §8). orch is timed from Runtime.start() until
exit_fd() is readable, inside this one long-running process; crun and runc
from spawn to exit of `X run`. crun 1.8 refuses this hybrid cgroup host unless
/sys/fs/cgroup/unified/cgroup.controllers looks empty, so its loop runs in a
child inside a private mount namespace where an empty file is bound over it.
Also: PSS of the supervisor (orch-shim) and of orch-init for 10 idle `init: true` containers
(bench/node_footprint.py measures the default too, and the agent).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from node.runtime import ContainerConfig, Runtime

MEMORY = 64 << 20
CPU_MILLIS = 500
PIDS = 64
IDLE = 0.1  # s before each start in "isolated" mode


def make_rootfs(root: Path) -> Path:
    for sub in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for name in ("sh", "true", "sleep"):
        (root / "bin" / name).symlink_to("busybox")
    return root


def make_bundle(bundle: Path, rootfs: Path) -> Path:
    bundle.mkdir()
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["linux"]["resources"] = {
        "memory": {"limit": MEMORY, "swap": MEMORY},
        "cpu": {"quota": CPU_MILLIS * 100, "period": 100_000, "shares": CPU_MILLIS * 1024 // 1000},
        "pids": {"limit": PIDS},
    }
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p99 * 1000


def time_orch(rt: Runtime, rootfs: Path, logs: Path, runs: int, idle: float, init: bool = True) -> list[float]:
    samples = []
    for i in range(runs):
        if idle:
            time.sleep(idle)
        config = ContainerConfig(
            id=f"b-{i}",
            rootfs=rootfs,
            argv=("/bin/true",),
            env={},
            log_path=logs / f"b-{i}.log",
            cpu_millis=CPU_MILLIS,
            memory_bytes=MEMORY,
            pids=PIDS,
            init=init,
        )
        t0 = time.perf_counter()
        rt.start(config)
        fd = rt.exit_fd(config.id)
        select.select([fd], [], [])
        samples.append(time.perf_counter() - t0)
        os.close(fd)
        assert rt.state(config.id).exit_code == 0, rt.state(config.id)
        rt.remove(config.id)
    return samples


def time_peer(tool: str, bundle: Path, runs: int, idle: float) -> list[float]:
    samples = []
    for i in range(runs):
        if idle:
            time.sleep(idle)
        t0 = time.perf_counter()
        subprocess.run([tool, "run", "-b", str(bundle), f"bench-{os.getpid()}-{i}"], check=True)
        samples.append(time.perf_counter() - t0)
    return samples


def time_floor(rootfs: Path, runs: int, idle: float) -> list[float]:
    """Python's floor: fork + unshare + chroot + exec, no cgroup (RECIPES §8)."""
    from node.runtime import sys as sc

    calls = sc.LinuxSyscalls()
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET
    samples = []
    for _ in range(runs):
        if idle:
            time.sleep(idle)
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            try:
                calls.unshare(flags)
                os.chroot(rootfs)
                os.chdir("/")
                os.execv("/bin/true", ["/bin/true"])
            finally:
                os._exit(127)
        os.waitpid(pid, 0)
        samples.append(time.perf_counter() - t0)
    return samples


def peer_in_child(tool: str, bundle: Path, runs: int, idle: float, empty: Path) -> list[float]:
    cmd = [sys.executable, "-m", "bench.runtime_start", "--peer", tool, "--bundle", str(bundle)]
    cmd += ["--runs", str(runs), "--idle", str(idle)]
    if tool == "crun":  # the shadowing bind lives only in this private mount namespace
        controllers = "/sys/fs/cgroup/unified/cgroup.controllers"
        script = f'mount --bind {empty} {controllers} && exec "$@"'
        cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *cmd]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    return [float(x) for x in json.loads(out.stdout)]


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def measure_pss(rt: Runtime, rootfs: Path, logs: Path, count: int = 10) -> tuple[float, float]:
    ids = [f"idle-{i}" for i in range(count)]
    shims, inits = [], []
    try:
        for id in ids:
            config = ContainerConfig(
                id=id, rootfs=rootfs, argv=("sleep", "1000"), env={}, log_path=logs / id, init=True
            )
            rt.start(config)
        time.sleep(0.5)
        for id in ids:
            start = json.loads((rt.state_dir / id / "start.json").read_text())
            shims.append(pss_kib(start["shim_pid"]))
            inits.append(pss_kib(start["pid"]))
    finally:
        for id in ids:
            rt.stop(id, 0)
            rt.remove(id)
    return statistics.mean(shims) / 1024, statistics.mean(inits) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--idle", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer:  # child mode: time one peer, print the samples as JSON
        print(json.dumps(time_peer(args.peer, Path(args.bundle), args.runs, args.idle)))
        return 0
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        base = Path(tmp)
        rootfs = make_rootfs(base / "rootfs")
        bundle = make_bundle(base / "bundle", rootfs)
        (base / "empty").write_text("")
        (base / "logs").mkdir()
        rt = Runtime(base / "state", f"orch-bench-{os.getpid()}/node")
        slow = Runtime(base / "state-nozygote", f"orch-bench-{os.getpid()}/nozygote", use_zygote=False)

        def paths(idle: float) -> dict[str, Callable[[], list[float]]]:
            return {
                "orch Runtime (zygote)": lambda: time_orch(rt, rootfs, base / "logs", args.runs, idle),
                "orch Runtime (zygote, init=False)": lambda: time_orch(
                    rt, rootfs, base / "logs", args.runs, idle, init=False
                ),
                "orch Runtime (python -m shim)": lambda: time_orch(
                    slow, rootfs, base / "logs", max(10, args.runs // 10), idle
                ),
                "crun run": lambda: peer_in_child("crun", bundle, args.runs, idle, base / "empty"),
                "runc run": lambda: peer_in_child("runc", bundle, args.runs, idle, base / "empty"),
                "python floor: fork+unshare+chroot+exec, no cgroup": lambda: time_floor(rootfs, args.runs, idle),
            }

        results: dict[str, dict[str, tuple[float, float]]] = {}
        try:
            time_orch(rt, rootfs, base / "logs", 5, 0)  # warm-up: zygote start, page cache
            for mode, idle in (("back-to-back", 0.0), ("isolated", IDLE)):
                runs = paths(idle)
                for name, fn in runs.items():
                    results.setdefault(name, {})[mode] = percentiles(fn())
            shim_pss, init_pss = measure_pss(rt, rootfs, base / "logs")
        finally:
            rt.cleanup_all()
            slow.cleanup_all()
    print_table(results, args.runs, shim_pss, init_pss)
    return 0


def print_table(results: dict[str, dict[str, tuple[float, float]]], runs: int, shim: float, init: float) -> None:
    crun = results["crun run"]
    print(f"Start-to-exit of /bin/true, ms, p50 / p99 over {runs} runs (python -m shim: {max(10, runs // 10)} runs)\n")
    print("| path | back-to-back | isolated | p50 vs crun (b2b / iso) |")
    print("|---|---|---|---|")
    for name, modes in results.items():
        b, i = modes["back-to-back"], modes["isolated"]
        ratio = f"{b[0] / crun['back-to-back'][0]:.2f}x / {i[0] / crun['isolated'][0]:.2f}x"
        print(f"| {name} | {b[0]:.1f} / {b[1]:.1f} | {i[0]:.1f} / {i[1]:.1f} | {ratio} |")
    print(
        f"\nPSS per idle container (10 `sleep` containers, init: true): orch-shim {shim:.2f} MiB, "
        f"orch-init {init:.2f} MiB"
    )


if __name__ == "__main__":
    sys.exit(main())
