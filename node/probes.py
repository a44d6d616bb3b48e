"""Readiness probes, run by the agent against a running container.

tcp and http go to the container's own address (the host reaches it over
the node bridge, so the probe really crosses the container's network
namespace); exec runs the command inside the container's namespaces with
nsenter. A probe is one blocking call; the worker runs them in a thread.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
from dataclasses import dataclass

from orch.v1 import types_pb2 as pb

DEFAULT_PERIOD = 2.0
DEFAULT_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str


def period_of(r: pb.Readiness) -> float:
    return r.period_ms / 1000 if r.period_ms else DEFAULT_PERIOD


def probe(r: pb.Readiness, ip: str, pid: int) -> ProbeResult:
    timeout = r.timeout_ms / 1000 if r.timeout_ms else DEFAULT_TIMEOUT
    kind = r.WhichOneof("probe")
    host = ip or "127.0.0.1"
    if kind == "tcp":
        return probe_tcp(host, r.tcp, timeout)
    if kind == "http":
        return probe_http(host, r.http.port, r.http.path or "/", timeout)
    if kind == "exec":
        return probe_exec(pid, list(r.exec.command), timeout)
    return ProbeResult(True, "no probe")


def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ProbeResult(True, f"tcp {host}:{port} open")
    except OSError as e:
        return ProbeResult(False, f"tcp {host}:{port}: {e.strerror or e}")


def probe_http(host: str, port: int, path: str, timeout: float) -> ProbeResult:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        return ProbeResult(False, f"http {host}:{port}{path}: {e}")
    finally:
        conn.close()
    return ProbeResult(200 <= status < 400, f"http {host}:{port}{path}: {status}")


def probe_exec(pid: int, command: list[str], timeout: float) -> ProbeResult:
    # nsenter joins every namespace of the container's PID 1, its root included, and
    # its user namespace if it has one (then the probe runs as container root, not host root).
    userns = ["-U"] if _own_user_namespace(pid) else []
    argv = ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", *userns, "--", *command]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"exec {command[0]}: timed out after {timeout:.1f}s")
    except OSError as e:
        return ProbeResult(False, f"exec: {e}")
    return ProbeResult(done.returncode == 0, f"exec {command[0]}: exit {done.returncode}")


def _own_user_namespace(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
    except OSError:
        return False
