"""Readiness probes, run by the agent against a running container.

tcp and http go to the container's own address (the host reaches it over
the node bridge, so the probe really crosses the container's network
namespace); exec runs the command through the runtime's exec path
(Runtime.exec, as `runc exec` does): the container's namespaces, cgroup,
user, capabilities and no_new_privs, never host root. A probe is one
blocking call; the worker runs them on the agent's probe pool, each for at most MAX_TIMEOUT.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass

from node.runtime import ContainerError, Runtime
from orch.v1 import types_pb2 as pb

DEFAULT_PERIOD = 2.0
DEFAULT_TIMEOUT = 1.0
# A probe holds one of the agent's few probe threads while it runs: whatever the app says, at
# most this long (Kubernetes' timeoutSeconds has no bound; its default is 1 s, like ours).
MAX_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str


def period_of(r: pb.Readiness) -> float:
    return r.period_ms / 1000 if r.period_ms else DEFAULT_PERIOD


def probe(r: pb.Readiness, ip: str, runtime: Runtime, id: str) -> ProbeResult:
    """id: the container; exec probes run in it."""
    timeout = min(r.timeout_ms / 1000 if r.timeout_ms else DEFAULT_TIMEOUT, MAX_TIMEOUT)
    kind = r.WhichOneof("probe")
    host = ip or "127.0.0.1"
    if kind == "tcp":
        return probe_tcp(host, r.tcp, timeout)
    if kind == "http":
        return probe_http(host, r.http.port, r.http.path or "/", timeout)
    if kind == "exec":
        return probe_exec(runtime, id, list(r.exec.command), timeout)
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


def probe_exec(runtime: Runtime, id: str, command: list[str], timeout: float) -> ProbeResult:
    """The timeout counts from the command's start (the exec helper's own start, ~0.1 s, is not
    charged to it); at the timeout the command and everything it started are killed."""
    try:
        proc = runtime.exec(id, command, output=False)
    except ContainerError as e:
        return ProbeResult(False, f"exec: {e}")
    try:
        code = proc.wait(timeout)
    finally:
        proc.close()  # kills what is left, waits for the helper's sweep
    if code is None:
        return ProbeResult(False, f"exec {command[0]}: timed out after {timeout:.1f}s")
    return ProbeResult(code == 0, f"exec {command[0]}: exit {code}")
