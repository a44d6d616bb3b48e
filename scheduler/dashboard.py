"""A read-only web dashboard: one static page (web/dashboard.html and .js, no build step) that polls one
JSON document, `/api/overview`, every second. `orch scheduler --dashboard-listen ADDR`.

What it shows is what `orch get` shows to a viewer, minus anything an app might hold secrets
in (env values, commands, args): names, states, placement, usage, rollout progress and
events. It has no login: bind it to loopback (the default of `orch up`) and reach it over an
SSH tunnel, or put it behind a proxy that authenticates. Requests whose Host is not the
listener's loopback name are refused on a loopback listener (DNS rebinding), only GET and
HEAD are served, and the page may load nothing but itself (Content-Security-Policy)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from orch.states import state_name
from orch.v1 import types_pb2 as pb
from scheduler.api import app_info, node_infos
from scheduler.cache import ClusterCache
from scheduler.errors import SchedulerError
from scheduler.events import EventLog
from scheduler.rollout import DEADLINE_EXCEEDED, is_stuck
from scheduler.snapshot import ClusterSnapshot, HydrationMemo, wants_to_run
from scheduler.store import Store

log = logging.getLogger(__name__)

REFRESH = 1.0  # s an overview is reused: many open pages cost one snapshot a second
CACHE_WAIT = 5.0  # s for the cache's read on the scheduler's loop before reading etcd instead
EVENTS = 50
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
}
NODE_STATES = {1: "Ready", 2: "NotReady", 3: "Restarting"}


def overview(snap: ClusterSnapshot, events: list[pb.Event], now: float) -> dict[str, Any]:
    """The page's data: plain names and numbers, no spec contents."""
    nodes = [
        {
            "name": n.node.name,
            "state": NODE_STATES.get(n.state, "NotReady"),
            "schedulable": not (n.node.unschedulable or n.node.draining),
            "instances": n.instances,
            "cpu": [n.allocated.cpu_millis, n.node.allocatable.cpu_millis],
            "memory": [n.allocated.memory_bytes, n.node.allocatable.memory_bytes],
        }
        for n in node_infos(snap, now)
    ]
    apps = []
    for name in sorted(snap.apps):
        app = snap.apps[name].value
        info = app_info(snap, app)
        live = [v.value for v in snap.instances_of(name) if wants_to_run(v.value)]
        current = sum(i.app_generation == app.generation for i in live)
        rollout = f"rolling out: {current}/{len(live)} on generation {app.generation}"
        rollout = "stable" if current == len(live) else rollout
        if is_stuck(app):  # the page colours it by its first word
            rollout = f"{DEADLINE_EXCEEDED}: {current}/{len(live)} on generation {app.generation}"
        apps.append(
            {
                "name": name,
                "replicas": app.spec.replicas,
                "ready": info.ready,
                "running": info.running,
                "pending": info.pending,
                "generation": app.generation,
                "rollout": rollout,
            }
        )
    instances = [
        {
            "name": i.name,
            "app": i.app,
            "node": i.node,
            "state": state_name(i.status.state),
            "reason": i.status.reason,
            "ready": i.status.ready,
            "restarts": i.status.restarts,
        }
        for i in sorted((v.value for v in snap.instances.values()), key=lambda i: (i.app, i.name))
    ]
    recent = [
        {"time": e.time.ToJsonString(), "type": e.type, "object": f"{e.kind}/{e.object}", "reason": e.reason}
        | {"message": e.message}
        for e in reversed(events)
    ]
    return {"time": now, "nodes": nodes, "apps": apps, "instances": instances, "events": recent}


def cached_reader(
    store: Store, cache: ClusterCache | None, loop: asyncio.AbstractEventLoop
) -> Callable[[], ClusterSnapshot]:
    """The dashboard's read, from its own thread: the cache's consistent read (ClusterCache.current,
    on the scheduler's loop) hydrated with the copies of the refresh before kept for the records
    that did not change, else etcd's. At 10,000 instances a read of etcd took 107-159 ms of the
    scheduler's CPU (most of it hydrating every record), the cache's with the kept copies 8 ms."""
    memo: HydrationMemo = {}

    def read() -> ClusterSnapshot:
        cached = None
        if cache is not None:
            try:
                cached = asyncio.run_coroutine_threadsafe(cache.current(), loop).result(timeout=CACHE_WAIT)
            except (concurrent.futures.TimeoutError, SchedulerError):
                cached = None
        return cached.hydrated(memo) if cached is not None else store.snapshot()

    return read


class Overview:
    """The JSON, built at most once per REFRESH whatever the number of pages polling."""

    def __init__(
        self, read: Callable[[], ClusterSnapshot], events: EventLog, clock: Callable[[], float] = time.time
    ) -> None:
        self._read, self._events, self._clock = read, events, clock
        self._lock = threading.Lock()
        self._body, self._at = b"", 0.0

    def body(self) -> bytes:
        with self._lock:  # one refresh at a time: the reader's memo is not shared
            if time.monotonic() - self._at >= REFRESH:
                doc = overview(self._read(), self._events.list(limit=EVENTS), self._clock())
                self._body, self._at = json.dumps(doc).encode(), time.monotonic()
            return self._body


def allowed_host(host_header: str, bound: str, port: int) -> bool:
    """On a loopback listener only loopback names are accepted: a page of another site whose
    name was made to resolve to 127.0.0.1 (DNS rebinding) sends its own name."""
    if not (bound == "localhost" or _is_loopback(bound)):
        return True
    if host_header.startswith("["):  # [::1]:port
        name, _, rest = host_header[1:].partition("]")
        given = rest.removeprefix(":")
    else:
        name, _, given = host_header.partition(":")
    if given and given != str(port):
        return False
    return name == "localhost" or _is_loopback(name)


def _is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def serve(listen: str, read: Callable[[], ClusterSnapshot], events: EventLog) -> ThreadingHTTPServer:
    """Start the dashboard on listen (host:port) in a thread of its own; returns the server.
    read: the cluster now (cached_reader)."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    data = Overview(read, events)
    web = resources.files("scheduler").joinpath("web")
    files = {
        "/": (web.joinpath("dashboard.html").read_bytes(), "text/html; charset=utf-8"),
        "/dashboard.js": (web.joinpath("dashboard.js").read_bytes(), "text/javascript; charset=utf-8"),
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "orch-dashboard"

        def do_GET(self) -> None:
            if not allowed_host(self.headers.get("Host", ""), host, bound_port):
                self._send(421, b"misdirected request\n", "text/plain")
            elif self.path in files:
                self._send(200, *files[self.path])
            elif self.path == "/api/overview":
                try:
                    self._send(200, data.body(), "application/json")
                except Exception as e:  # the store is away: the page says so and retries
                    self._send(503, json.dumps({"error": str(e)}).encode(), "application/json")
            else:
                self._send(404, b"not found\n", "text/plain")

        def do_HEAD(self) -> None:
            self.do_GET()

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            for k, v in {**HEADERS, "Content-Type": kind, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard: " + format, *args)

    server = ThreadingHTTPServer((host, int(port_text)), Handler)
    bound_port = int(server.server_address[1])
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    log.info("dashboard on http://%s:%d/", host, bound_port)
    return server
