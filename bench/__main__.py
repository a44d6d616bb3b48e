"""Run orch's benchmarks and print markdown tables (see docs/benchmarks.md).

    python -m bench                          all of them, in sequence, with modest defaults
    python -m bench runtime|footprint|hollow|recovery|etcd_failover|lab|partition|converge|discovery [ARGS...]

ARGS go to that benchmark after its defaults, so an option given there wins
(e.g. `python -m bench hollow --nodes 100`). Each benchmark runs in its own
process with the same interpreter (sys.executable). Root is needed for
runtime, footprint, recovery, lab, partition and discovery (real containers).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (module, default arguments, what it measures)
BENCHES: dict[str, tuple[str, list[str], str]] = {
    "runtime": ("bench.runtime_start", ["--runs", "100"], "container start-to-exit: orch Runtime vs crun and runc"),
    "footprint": (
        "bench.node_footprint",
        ["--containers", "10", "--agent-containers", "100"],
        "PSS per container beside its workload; the agent's RSS with 100 containers",
    ),
    "hollow": (
        "bench.hollow",
        ["--nodes", "100", "1000", "5000", "--instances", "10000"],
        "placement throughput on hollow nodes",
    ),
    "recovery": ("bench.recovery", ["--runs", "5"], "node-failure recovery on a real 3-node `orch up`"),
    "etcd_failover": ("bench.etcd_failover", ["--runs", "5"], "the etcd client's stall when one of 3 members dies"),
    "lab": ("bench.lab", ["--runs", "3"], "`orch up --hosts 3` ready, and 6 replicas Running, on a lab of hosts"),
    "partition": ("bench.partition", ["--runs", "5"], "a host cut off on the lab: failover, self-fencing, fencing"),
    "converge": ("bench.converge", ["--runs", "3"], "apply, scale and restart against Docker Swarm, side by side"),
    "discovery": (
        "bench.discovery",
        ["--queries", "2000", "--rounds", "20"],
        "DNS latency from a container; readiness change to resolvable and to VIP rules",
    ),
}


def compile_sources() -> None:
    """Byte-compile orch's own modules first, as pip does when it installs a wheel. The checkout is
    an editable install, and where PYTHONDONTWRITEBYTECODE is set (CI, many containers, this
    project's build machines) nothing ever writes their bytecode: every CLI a benchmark spawns then
    compiled cli/ and orch/ from source, ~60 ms of CPU that no installed user pays (as make setup)."""
    import compileall

    for package in ("cli", "node", "scheduler", "proto/orch", "bench"):
        compileall.compile_dir(ROOT / package, quiet=1)


def run(name: str, extra: list[str]) -> int:
    module, defaults, what = BENCHES[name]
    compile_sources()
    print(f"\n## {name}: {what}\n", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "proto"), env.get("PYTHONPATH")) if p)
    started = time.monotonic()
    code = subprocess.run([sys.executable, "-m", module, *defaults, *extra], cwd=ROOT, env=env, check=False).returncode
    print(f"\n({name}: {time.monotonic() - started:.0f} s wall, exit {code})", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args and not args[0].startswith("-"):
        if args[0] not in BENCHES:
            print(f"unknown benchmark {args[0]!r}; choose from {', '.join(BENCHES)}", file=sys.stderr)
            return 2
        return run(args[0], args[1:])
    if args:
        print(
            "options go after a benchmark's name: python -m bench runtime|hollow|recovery|lab [ARGS...]",
            file=sys.stderr,
        )
        return 2
    failed = [name for name in BENCHES if run(name, []) != 0]
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
