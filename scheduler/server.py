"""Wires the scheduler together and serves it: `orch scheduler ...`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from orch import malloc, sdnotify
from orch.tls import Credentials, add_port
from orch.v1 import api_pb2_grpc
from orch.v1 import types_pb2 as pb
from scheduler import dashboard, network_config, secret_api
from scheduler.api import OrchService
from scheduler.authz import Authorizer
from scheduler.cache import ClusterCache
from scheduler.compaction import Compactor
from scheduler.contact import Contact
from scheduler.endpoints import EndpointsFeed
from scheduler.events import EventLog
from scheduler.leader import LeaderElection
from scheduler.leases import LeaseKeeper
from scheduler.metrics import ClusterCollector, SchedulerMetrics
from scheduler.network_config import NetworkMismatch
from scheduler.presence import Presence
from scheduler.reconciler_loop import Reconciler
from scheduler.secrets import KeyRing, Opener, SecretKeyError
from scheduler.services import DEFAULT_SERVICE_CIDR, parse_service_cidr
from scheduler.sessions import RESTART_GRACE, AgentSessionService, NodeRegistry
from scheduler.sessions import add_to_server as add_sessions_to_server
from scheduler.status import StatusWriter
from scheduler.store import PAGE, Store
from scheduler.subnets import DEFAULT_CLUSTER_CIDR, DEFAULT_NODE_PREFIX, PoolError, SubnetPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    listen: str = "127.0.0.1:7070"
    etcd: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = "/orch/"
    lease_ttl: int = 1
    leader_ttl: int = 3
    metrics_listen: str = ""  # host:port; empty = no metrics endpoint
    dashboard_listen: str = ""  # host:port; empty = no dashboard (scheduler/dashboard.py)
    identity: str = ""
    tls: Credentials | None = None  # mutual TLS for the API, agent sessions and calls to agents
    etcd_tls: Credentials | None = None  # client certificate for etcd (https endpoints)
    restart_grace: float = RESTART_GRACE  # s a node whose agent said goodbye for a restart is held
    etcd_page: int = PAGE  # keys per etcd range read
    service_cidr: str = DEFAULT_SERVICE_CIDR  # apps' virtual IPs (services.py); checked by the CLI
    cluster_cidr: str = DEFAULT_CLUSTER_CIDR  # container addresses; each node gets a subnet of it
    node_subnet_size: int = DEFAULT_NODE_PREFIX  # prefix length of each node's subnet
    secret_key_file: str = ""  # keys that seal secrets (secrets.py); "": secrets are disabled


SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    # Agents ping every 2 s to find a hung scheduler (node/session.py): not "too many pings".
    ("grpc.http2.min_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
    # Calls not yet taken by the event loop: gRPC refuses them past 1,000 (some) and 3,000 (all),
    # and 5,000 agents whose scheduler restarted all open their sessions at once.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
]


async def serve(config: SchedulerConfig) -> None:
    # etcd calls are blocking and run in threads; the default pool (cpus + 4)
    # starves under a few hundred agents.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="etcd"))
    identity = config.identity or f"{socket.gethostname()}-{os.getpid()}"
    # Half a lease without answers from etcd and node leases may lapse: the reconciler then waits.
    contact = Contact(stall=config.lease_ttl / 2)
    store = Store(config.etcd, prefix=config.prefix, tls=config.etcd_tls, contact=contact, page=config.etcd_page)
    metrics = SchedulerMetrics()
    events = EventLog(store)
    cache = ClusterCache(store)
    metrics.registry.register(ClusterCollector(cache))
    election = LeaderElection(store, identity, ttl=config.leader_ttl)
    status = StatusWriter(store, cache, events)
    keeper = LeaseKeeper(store, interval=config.lease_ttl / 4)
    try:
        pool = SubnetPool.parse(config.cluster_cidr, config.node_subnet_size)
    except PoolError as e:
        raise SystemExit(f"orch scheduler: {e}") from None
    service_network = parse_service_cidr(config.service_cidr)
    ranges = pb.ClusterNetwork(
        cluster_cidr=str(pool.cidr), node_subnet_size=pool.prefix, service_cidr=str(service_network)
    )
    try:
        await asyncio.to_thread(network_config.settle, store, ranges)
    except NetworkMismatch as e:
        raise SystemExit(f"orch scheduler: {e}") from None
    try:
        secret_keys = KeyRing.load(Path(config.secret_key_file)) if config.secret_key_file else None
    except SecretKeyError as e:
        raise SystemExit(f"orch scheduler: {e}") from None
    # After a key rotation: seal what other keys sealed under the new first one.
    resealed = await asyncio.to_thread(secret_api.reseal_all, store, secret_keys) if secret_keys else 0
    if resealed:
        log.info("resealed %d secrets under key %s", resealed, secret_keys.primary if secret_keys else "")
    registry = NodeRegistry(store, config.lease_ttl, config.restart_grace, pool, identity)
    presence = Presence(store, keeper, identity, config.lease_ttl)
    endpoints = EndpointsFeed(cache, config.service_cidr)
    sessions = AgentSessionService(registry, cache, status, metrics, keeper, events, endpoints, Opener(secret_keys))
    reconciler = Reconciler(
        store,
        events,
        metrics=metrics,
        heartbeats=sessions.heartbeats.split,
        lease_ttl=config.lease_ttl,
        compactor=Compactor(store),
        identity=identity,
        cache=cache,
    )
    cache.on_any_change(reconciler.trigger.set)

    # Every call is authorized by the caller's certificate (scheduler/authz.py); without TLS, nothing is.
    authorizer = Authorizer(insecure=config.tls is None)
    server = grpc.aio.server(interceptors=[authorizer], options=SERVER_OPTIONS)
    # The API calls on_change from worker threads; an asyncio.Event must be set on its loop.
    loop = asyncio.get_running_loop()

    def on_change() -> None:
        loop.call_soon_threadsafe(reconciler.trigger.set)

    orch_api = OrchService(
        store,
        events,
        on_change,
        agent_tls=config.tls,
        cache=cache,
        service_network=service_network,
        subnets=registry.subnets,
        secret_keys=secret_keys,
    )
    api_pb2_grpc.add_OrchServicer_to_server(orch_api, server)
    add_sessions_to_server(sessions, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if add_port(server, config.listen, config.tls) == 0:
        raise SystemExit(f"orch scheduler: cannot listen on {config.listen}")
    if config.metrics_listen:
        host, _, port = config.metrics_listen.rpartition(":")
        start_http_server(int(port), addr=host or "127.0.0.1", registry=metrics.registry)
    if config.dashboard_listen:
        dashboard.serve(config.dashboard_listen, dashboard.cached_reader(store, cache, loop), events)

    tasks = [asyncio.create_task(cache.run(), name="cache")]
    # Serve agents only once the cache holds the cluster, or their first
    # desired set would be empty and they would stop everything.
    while cache.revision == 0:
        await asyncio.sleep(0.02)
    tasks += [
        asyncio.create_task(election.run(), name="leader"),
        asyncio.create_task(reconciler.run(election.fence), name="reconciler"),
        asyncio.create_task(status.run(), name="status"),
        asyncio.create_task(keeper.run(), name="leases"),
        asyncio.create_task(presence.run(), name="presence"),
        asyncio.create_task(_watch_leadership(election, reconciler, metrics), name="leadership"),
    ]
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("scheduler %s serving on %s (etcd %s)", identity, config.listen, ",".join(config.etcd))
    sdnotify.ready(f"serving on {config.listen}")  # Type=notify: `systemctl start` returns now

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    done = asyncio.create_task(stop.wait())
    await asyncio.wait([done, *tasks], return_when=asyncio.FIRST_COMPLETED)
    sdnotify.stopping()
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception():
            log.error("task %s failed", t.get_name(), exc_info=t.exception())
    await server.stop(grace=1)
    for t in tasks:
        t.cancel()
    await asyncio.to_thread(presence.withdraw)
    with contextlib.suppress(BaseException):
        await asyncio.gather(*tasks, return_exceptions=True)
    store.close()


async def _watch_leadership(election: LeaderElection, reconciler: Reconciler, metrics: SchedulerMetrics) -> None:
    while True:
        await election.changed.wait()
        election.changed.clear()
        metrics.is_leader.set(1 if election.is_leader() else 0)
        reconciler.trigger.set()  # a new leader reconciles at once


# The scheduler's heap is mostly long-lived (the cache's records, the sessions), and CPython's
# full collections, triggered as it grows, traverse all of it with the GIL held: with 5,000
# agents and 10,000 instances, 14 of them in one hollow bench run, 0.1-0.6 s each (4.3 s in
# all, nothing collected), each one a pause of every session. Frozen imports and rarer
# collections: 1 full collection in the same run (docs/benchmarks.md).
GC_THRESHOLDS = (50_000, 20, 100)


def main(config: SchedulerConfig) -> None:
    malloc.limit_arenas()  # before grpc's and the etcd pool's threads (orch/malloc.py)
    gc.freeze()  # what is alive after start-up (modules, classes) is never traversed again
    gc.set_threshold(*GC_THRESHOLDS)
    asyncio.run(serve(config))
