"""The agent's stream to a scheduler: register, heartbeat, report status,
receive desired sets. Reconnects with capped, jittered backoff and tries
the scheduler addresses in turn, from one picked by the node's name (so the
nodes of a cluster spread over its schedulers, which all serve sessions);
while no scheduler answers (or etcd is away behind it) nothing changes on
the node: containers keep running.

Before a planned exit the agent says goodbye (`goodbye()`): the scheduler
holds the node for a restart instead of replacing its instances when the
lease lapses.

What the scheduler says of the node's lease (Registered, LeaseRenewed, the
hold in GoodbyeAck) goes to a `LeaseWatch`, which self-fencing counts from
(node/fencing.py)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import grpc

from node.endpoints_view import EndpointsView
from node.fencing import LeaseWatch
from node.reconcile import Applied, is_stale, with_templates
from orch.templates import template_key
from orch.tls import SCHEDULER, Credentials, aio_channel
from orch.v1 import agent_pb2 as apb
from orch.v1 import agent_pb2_grpc
from orch.v1 import types_pb2 as pb

log = logging.getLogger(__name__)


class RegistrationFailed(Exception):
    """Raised by an `on_registered` hook that could not do what the registration needs (the
    node's network): the session ends and the agent registers again after the backoff, as after
    a lost connection. The agent lives on: a transient fault costs a reconnect, a lasting one
    lets the lease lapse (the node NotReady, its instances replaced) and says why at each try."""


BACKOFF_MIN = 0.1
BACKOFF_MAX = 3.0  # with the jitter below at most 4.5 s: scheduler/liveness.py AGENT_RECONNECT_BACKOFF
JITTER = (0.5, 1.5)
TEMPLATE_MISSING = "TemplateMissing"  # the scheduler's reason for the same fault (scheduler/hydrate.py)

# A scheduler that hangs, or whose host is cut off, resets nothing: without pings the stream
# would wait for TCP to give up (15 min) or for ever (a stopped process's kernel still ACKs).
# HTTP/2 pings find it within KEEPALIVE + its timeout, and the session moves to the next
# scheduler; the server allows pings this often (scheduler/server.py SERVER_OPTIONS).
KEEPALIVE_MS = 2000
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_MS),  # without it grpcio 1.85 waited for the ack for ever
    ("grpc.http2.max_pings_without_data", 0),  # the stream is busy anyway: never hold a ping back
]


def first_scheduler(node: str, schedulers: int) -> int:
    """Where in its --scheduler list a node's agent starts. Every scheduler serves sessions (only
    the leader reconciles), so the nodes spread over them, as Nomad's clients shuffle their
    servers: with one list on every machine, all agents on the first scheduler made it the only
    one working, and all of them moved at once when it went. The same node starts at the same
    one again after a restart."""
    digest = hashlib.sha256(node.encode()).digest()  # well mixed for names a character apart, unlike crc32
    return int.from_bytes(digest[:8], "big") % schedulers if schedulers else 0


class Session:
    def __init__(
        self,
        schedulers: Sequence[str],
        register: Callable[[int], apb.Register],
        full_report: Callable[[], apb.StatusReport],
        on_desired: Callable[[apb.DesiredSet], Awaitable[None]],
        tls: Credentials | None = None,
        on_endpoints: Callable[[apb.Endpoints], None] | None = None,  # the cluster's service endpoints
        lease: LeaseWatch | None = None,
        on_registered: Callable[[apb.Registered], Awaitable[None]] | None = None,
        on_routes: Callable[[apb.Routes], None] | None = None,
    ) -> None:
        self._on_endpoints = on_endpoints
        self._endpoints = EndpointsView()  # built from this session's whole view and its updates
        self._on_registered = on_registered  # awaited before any desired set: the network comes first
        self._on_routes = on_routes
        self._schedulers = list(schedulers)
        self.lease = lease or LeaseWatch()
        self._tls = tls
        self._register = register
        self._full_report = full_report
        self._on_desired = on_desired
        self._outbox: asyncio.Queue[apb.AgentMessage] | None = None
        self.lease_id = 0
        self.observed_generation = 0  # of the last desired set applied, for heartbeats
        self._applied: Applied | None = None
        self.connected = asyncio.Event()
        self.scheduler = ""  # the address of the scheduler this session is (or was last) connected to
        self._leaving = False  # said goodbye: no more heartbeats (they would renew the lease)
        self._goodbye_ack: asyncio.Future[float] | None = None
        self._goodbye_sent = 0.0  # monotonic

    def registration(self) -> apb.Register:
        register = self._register(self.lease_id)
        register.accepts_templates = True  # handle_desired puts them back (with_templates)
        register.accepts_endpoint_updates = True  # applied to self._endpoints
        return register

    def send_status(self, report: apb.StatusReport) -> None:
        """Queue a report; dropped while disconnected (a full report follows on reconnect)."""
        if self._outbox is not None:
            self._outbox.put_nowait(apb.AgentMessage(status=report))

    async def run(self) -> None:
        delay = BACKOFF_MIN
        attempt = first_scheduler(self._register(self.lease_id).node, len(self._schedulers))
        while True:
            target = self._schedulers[attempt % len(self._schedulers)]
            attempt += 1
            try:
                await self._session(target)
                delay = BACKOFF_MIN  # a session that worked resets the backoff
            except grpc.aio.AioRpcError as e:
                log.warning("scheduler %s: %s %s", target, e.code().name, e.details())
            except (OSError, ConnectionError) as e:
                log.warning("scheduler %s: %s", target, e)
            except RegistrationFailed as e:
                log.error("registered with scheduler %s, but %s; registering again", target, e)
            finally:
                self.connected.clear()
                self._outbox = None
            await asyncio.sleep(delay * random.uniform(*JITTER))
            delay = min(BACKOFF_MAX, delay * 2)

    async def _session(self, target: str) -> None:
        outbox: asyncio.Queue[apb.AgentMessage] = asyncio.Queue()
        register_sent = time.monotonic()  # before: the lease is granted or refreshed after it
        outbox.put_nowait(apb.AgentMessage(register=self.registration()))
        self._endpoints.reset()
        # Only a scheduler's certificate.
        async with aio_channel(target, self._tls, CHANNEL_OPTIONS, peer=SCHEDULER) as channel:
            stub = agent_pb2_grpc.AgentSessionStub(channel)
            call = stub.Session(_drain(outbox))
            heartbeat: asyncio.Task[None] | None = None
            try:
                async for msg in call:
                    kind = msg.WhichOneof("msg")
                    if kind == "registered":
                        self.lease_id = msg.registered.lease_id
                        self.lease.registered(register_sent, msg.registered.lease_ttl_seconds)
                        self._outbox = outbox
                        outbox.put_nowait(apb.AgentMessage(status=self._full_report()))
                        interval = msg.registered.heartbeat_interval_ms / 1000
                        heartbeat = asyncio.create_task(self._heartbeat(outbox, interval))
                        self.scheduler = target
                        self.connected.set()
                        log.info("connected to scheduler %s (lease %x)", target, self.lease_id)
                        if self._on_registered is not None:
                            await self._on_registered(msg.registered)
                    elif kind == "desired":
                        await self.handle_desired(msg.desired, target)
                    elif kind == "endpoints" and self._on_endpoints is not None:
                        self._on_endpoints(self._endpoints.apply(msg.endpoints))
                    elif kind == "lease_renewed":
                        self.lease.renewed(msg.lease_renewed.seq, msg.lease_renewed.ttl_seconds)
                    elif kind == "routes" and self._on_routes is not None:
                        self._on_routes(msg.routes)
                    elif kind == "goodbye_ack" and self._goodbye_ack is not None and not self._goodbye_ack.done():
                        ack = msg.goodbye_ack
                        held = ack.held_until.ToNanoseconds() / 1e9 if ack.HasField("held_until") else 0.0
                        if held and ack.hold_ms:
                            self.lease.held(self._goodbye_sent, ack.hold_ms / 1000)
                        self._goodbye_ack.set_result(held)
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()
                call.cancel()

    async def handle_desired(self, desired: apb.DesiredSet, source: str) -> None:
        if is_stale(desired, self._applied):
            # The heartbeat still carries the newer generation; the scheduler resends once it caught up.
            log.warning(
                "ignoring desired set %d from %s: older than %d, already applied",
                desired.generation,
                source,
                self.observed_generation,
            )
            return
        if lacking := with_templates(desired):
            self._refuse(desired, lacking, source)
            return
        self._applied = Applied(desired.cluster_id, desired.generation)
        self.observed_generation = desired.generation
        try:
            await self._on_desired(desired)
        except Exception:  # level-triggered: the next desired set tries again
            log.exception("applying desired set %d failed", desired.generation)

    def _refuse(self, desired: apb.DesiredSet, lacking: Sequence[pb.Instance], source: str) -> None:
        """A set that names a template it does not carry: nothing of it is applied (nothing stops
        either: the set applied before stays), and the instances not running here say why."""
        names = ", ".join(f"{i.name} ({template_key(i.app, i.app_generation)})" for i in lacking)
        log.error("refusing desired set %d from %s: no template for %s", desired.generation, source, names)
        running = {r.name for r in self._full_report().instances}
        message = f"desired set {desired.generation} from {source} lacks this instance's template: refused"
        status = pb.InstanceStatus(state=pb.INSTANCE_STATE_PENDING, reason=TEMPLATE_MISSING, message=message)
        reports = [apb.InstanceReport(name=i.name, app=i.app, status=status) for i in lacking if i.name not in running]
        if reports:
            self.send_status(apb.StatusReport(instances=reports))

    async def goodbye(self, timeout: float) -> float | None:
        """Tell the scheduler this agent exits for a restart. Returns the time (unix s) until
        which it holds the node, 0 if it could not, None if it did not answer."""
        self._leaving = True
        outbox = self._outbox
        if outbox is None:
            return None
        self._goodbye_ack = asyncio.get_running_loop().create_future()
        self._goodbye_sent = time.monotonic()
        outbox.put_nowait(apb.AgentMessage(goodbye=apb.Goodbye(restarting=True)))
        try:
            return await asyncio.wait_for(asyncio.shield(self._goodbye_ack), timeout)
        except TimeoutError:
            return None

    async def _heartbeat(self, outbox: asyncio.Queue[apb.AgentMessage], interval: float) -> None:
        while not self._leaving:
            beat = apb.Heartbeat(observed_generation=self.observed_generation, seq=self.lease.heartbeat())
            outbox.put_nowait(apb.AgentMessage(heartbeat=beat))
            # Self-fencing counts from the latest renewal heard of: beating twice as often keeps
            # it fresher (scheduler/leases.py renews at most once per keeper tick anyway).
            await asyncio.sleep(interval / 2 if self.lease.needed else interval)


async def _drain(outbox: asyncio.Queue[apb.AgentMessage]) -> AsyncIterator[apb.AgentMessage]:
    while True:
        yield await outbox.get()
