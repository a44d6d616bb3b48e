"""Probes (readiness, liveness, startup: one shape), run by the agent against a running container.

tcp and http go to the container's own address (the host reaches it over
the node bridge, so the probe really crosses the container's network
namespace); exec runs the command through the runtime's exec path
(Runtime.exec, as `runc exec` does): the container's namespaces, cgroup,
user, capabilities and no_new_privs, never host root. A probe is one
blocking call; node/probe_loop.py runs them on the agent's probe pool, each for at most MAX_TIMEOUT.

A probe's detail ends up in the instance's status and in events, which operators read in a
terminal: what comes from the container (an exec probe's output) is cut short and its control
and format characters escaped, so a container cannot write escape sequences to their screens.
"""

from __future__ import annotations

import http.client
import os
import selectors
import socket
import time
import unicodedata
from dataclasses import dataclass

from node.runtime import ContainerError, Runtime
from orch.v1 import types_pb2 as pb

DEFAULT_TIMEOUT = 1.0
# A probe holds one of the agent's few probe threads while it runs: whatever the app says, at
# most this long (Kubernetes' timeoutSeconds has no bound; its default is 1 s, like ours).
MAX_TIMEOUT = 10.0
OUTPUT_READ = 4096  # bytes of an exec probe's output kept (the rest is read and dropped)
OUTPUT_SHOWN = 200  # characters of it in the detail


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str


def probe(r: pb.Readiness, ip: str, runtime: Runtime, id: str) -> ProbeResult:
    """r: any of the app's probes; id: the container; exec probes run in it."""
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
        # The error may quote the container's answer (BadStatusLine has the whole status line).
        return ProbeResult(False, one_line(f"http {host}:{port}{path}: {e}".encode()))
    finally:
        conn.close()
    return ProbeResult(200 <= status < 400, f"http {host}:{port}{path}: {status}")


def probe_exec(runtime: Runtime, id: str, command: list[str], timeout: float) -> ProbeResult:
    """The timeout counts from the command's start (the exec helper's own start, ~0.1 s, is not
    charged to it); at the timeout the command and everything it started are killed. The detail
    has the start of what it printed (stdout, then stderr), as Kubernetes' events do."""
    try:
        proc = runtime.exec(id, command, output=True)
    except ContainerError as e:
        return ProbeResult(False, f"exec: {e}")
    try:
        deadline = time.monotonic() + timeout
        output = read_output([fd for fd in (proc.stdout, proc.stderr) if fd is not None], deadline)
        code = proc.wait(max(deadline - time.monotonic(), 0.0))
    finally:
        proc.close()  # kills what is left, waits for the helper's sweep
    said = f": {one_line(output)}" if output.strip() else ""
    if code is None:
        return ProbeResult(False, f"exec {command[0]}: timed out after {timeout:.1f}s{said}")
    return ProbeResult(code == 0, f"exec {command[0]}: exit {code}{said}")


def read_output(fds: list[int], deadline: float) -> bytes:
    """What the pipes carry until all are at EOF or the deadline: the first OUTPUT_READ bytes
    of each, one after the other (a command that prints without end is read and dropped)."""
    kept = {fd: b"" for fd in fds}
    with selectors.DefaultSelector() as sel:
        for fd in fds:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                fd = int(key.fd)
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                kept[fd] += chunk[: max(OUTPUT_READ - len(kept[fd]), 0)]
    return b"".join(kept.values())


def one_line(data: bytes) -> str:
    """Text from a container, safe to print: one line, control and format characters (escape
    sequences, bidi overrides) escaped, at most OUTPUT_SHOWN characters."""
    text = data.decode(errors="replace").strip()
    out = "".join(
        c if unicodedata.category(c) not in ("Cc", "Cf") else c.encode("unicode_escape").decode() for c in text
    )
    return out if len(out) <= OUTPUT_SHOWN else out[:OUTPUT_SHOWN] + "..."
