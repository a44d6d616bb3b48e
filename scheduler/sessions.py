"""The agents' side of the scheduler: one bidirectional stream per node.

On `register` the node record and its lease key are written (the lease is
reused when the agent reconnects within its TTL, so moving to another
scheduler never looks like a death). Every heartbeat refreshes the lease.
Whenever the node's instances change, the whole desired set is sent again,
numbered with the etcd revision of the cache it came from. An agent ignores a
set older than one it applied (from a scheduler that was ahead of us); its
heartbeats then say so, and the set is sent again once this cache caught up.

An agent that exits for a restart (SIGTERM) says goodbye first: the node is
held (`Node.restarting_until`, state Restarting) for the restart grace and
its lease revoked; the new agent's registration ends the hold. `Heartbeats`
tells the reconciler which nodes beat here now and which have gone quiet
(liveness.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from orch.templates import template_key
from orch.tls import node_identity, peer_identity
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.cache import ROUTES, ClusterCache
from scheduler.endpoints import EndpointsFeed
from scheduler.errors import Conflict, Refused, StoreUnavailable
from scheduler.events import EventLog
from scheduler.hydrate import missing
from scheduler.leases import LeaseKeeper
from scheduler.liveness import restarting_until
from scheduler.metrics import SchedulerMetrics
from scheduler.reconcile import event
from scheduler.secrets import Opener
from scheduler.status import StatusWriter
from scheduler.store import Put, Store, Write
from scheduler.subnet_claims import SubnetClaims
from scheduler.subnets import DEFAULT_CLUSTER_CIDR, SubnetPool
from scheduler.timeutil import ts

log = logging.getLogger(__name__)

SERVICE = "orch.v1.AgentSession"
REFUSAL_EVENT_EVERY = 60.0  # s between two Warning events for one node's refused registrations
# A lost compare (another scheduler wrote the record, or claimed the subnet we picked: nodes
# joining at once) re-reads and tries again.
REGISTER_ATTEMPTS = 10
RESTART_GRACE = 30.0  # s a node whose agent said goodbye for a restart is held (orch scheduler --restart-grace)


@dataclass(slots=True)
class Generations:
    sent: int = 0  # of the last desired set this session sent
    observed: int = 0  # of the last one the agent applied (its heartbeats)

    def agent_ahead(self) -> bool:
        """The agent ignored our last set: it had applied a newer one (from another scheduler)."""
        return self.observed > self.sent


def desired_message(
    instances: list[pb.Instance],
    generation: int,
    cluster_id: int,
    template_of: Callable[[pb.Instance], pb.AppSpec | None],
    inline: bool = False,
) -> apb.DesiredSet:
    """The instances without their specs, and each distinct template they run once (keyed
    app/generation); inline: each instance with its template as its spec instead (an agent
    older than the templates map). An instance whose template is not stored is left out (and
    logged): the reconciler stops and replaces it (TemplateMissing)."""
    out = apb.DesiredSet(generation=generation, cluster_id=cluster_id)
    for inst in instances:
        key = template_key(inst.app, inst.app_generation)
        if key not in out.templates:
            template = template_of(inst)
            if template is None:
                log.error("left out of node %s's desired set: %s", inst.node, missing(inst))
                continue
            out.templates[key].CopyFrom(template)
        item = out.instances.add()
        item.CopyFrom(inst)
        item.ClearField("spec")
        if inline:
            item.spec.CopyFrom(out.templates[key])
        item.ClearField("status")  # the agent owns status; resending it on every report is noise
        item.ClearField("updated_at")
    if inline:
        out.ClearField("templates")
    return out


class Heartbeats:
    """When each node's agent last beat on this scheduler (monotonic seconds)."""

    def __init__(self, overdue: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.overdue = overdue
        self._clock = clock
        self._last: dict[str, tuple[object, float]] = {}  # node -> (session, time)

    def beat(self, node: str, session: object) -> None:
        self._last[node] = (session, self._clock())

    def closed(self, node: str, session: object) -> None:
        """The session ended; a newer one of the same node stays."""
        if node in self._last and self._last[node][0] is session:
            del self._last[node]

    def split(self) -> tuple[frozenset[str], frozenset[str]]:
        """(beating, silent): nodes with a session here that beat recently, and those that went quiet."""
        now = self._clock()
        beating = frozenset(n for n, (_, t) in self._last.items() if now - t < self.overdue)
        return beating, frozenset(self._last) - beating


class NodeRegistry:
    """Node records and their leases in etcd (blocking calls)."""

    def __init__(
        self,
        store: Store,
        lease_ttl: int,
        restart_grace: float = RESTART_GRACE,
        pool: SubnetPool | None = None,
        identity: str = "",  # this scheduler's: named on the lease keys it keeps alive
    ) -> None:
        self.identity = identity
        self._store = store
        self.lease_ttl = lease_ttl
        self.restart_grace = restart_grace
        self.subnets = SubnetClaims(store, pool or SubnetPool.parse(DEFAULT_CLUSTER_CIDR))

    def register(self, reg: apb.Register) -> tuple[int, float, pb.Node]:
        """Returns (lease id, the end of the restart hold this registration ended or 0, the node
        record written). Refused if the node asks for container networking and gets no subnet."""
        key = self._store.keys.node(reg.node)
        # Only this node's own last lease may be reused: any other live lease (another node's,
        # the leader's) kept alive by this session would keep a dead node Ready or a dead
        # leader leading.
        recorded = self._store.get(pb.Node, key)
        own = reg.lease_id if recorded is not None and reg.lease_id == recorded.value.lease_id else 0
        lease_id = self._reuse_or_grant(own)
        for attempt in range(REGISTER_ATTEMPTS):
            existing = recorded if attempt == 0 else self._store.get(pb.Node, key)  # a conflict: read again
            node = pb.Node()
            if existing is not None:
                node.CopyFrom(existing.value)  # keeps cordon/drain flags across restarts
            node.name = reg.node
            node.address = reg.address
            node.metrics_address = reg.metrics_address
            node.capacity.CopyFrom(reg.capacity)
            node.allocatable.CopyFrom(reg.allocatable if reg.HasField("allocatable") else reg.capacity)
            node.labels.clear()
            node.labels.update(reg.labels)
            node.version = reg.version
            node.host_port_min, node.host_port_max = reg.host_port_min, reg.host_port_max
            node.allowed_host_paths[:] = reg.allowed_host_paths
            node.lease_id = lease_id
            now = time.time()
            node.registered_at.CopyFrom(ts(now))
            held = restarting_until(node)
            node.ClearField("restarting_until")  # back: a hold for its restart ends here
            lease_key = self._store.keys.node_lease(reg.node)
            try:
                claim = self._network(reg, node, attempt)
                self._store.commit(
                    [
                        Put(key, node, existing.mod_revision if existing else 0),
                        Put(lease_key, self._lease_value(reg.node), None, lease_id),
                        *claim,
                    ]
                )
                return lease_id, held if held > now else 0.0, node
            except Conflict:
                continue
        raise Conflict(f"node {reg.node}")

    def _network(self, reg: apb.Register, node: pb.Node, attempt: int) -> list[Write]:
        """Sets the node's subnet and node_ip; returns the writes that claim the subnet (or free
        it: a node without container networking holds none)."""
        if not reg.container_network:
            had = bool(node.subnet)  # most such nodes never had one: no read for them
            node.ClearField("subnet")
            node.ClearField("node_ip")
            return self.subnets.release(reg.node) if had else []
        node.subnet, writes = self.subnets.claim(reg, node.subnet, attempt)
        node.node_ip = reg.node_ip
        return writes

    def hold(self, node: str, lease_id: int) -> float:
        """Its agent said goodbye for a restart: hold the node until the returned time, and let
        its lease go now (it is Restarting, not Ready, at once)."""
        until = time.time() + self.restart_grace

        def mark(n: pb.Node) -> None:
            n.restarting_until.CopyFrom(ts(until))

        if self._store.update(pb.Node, self._store.keys.node(node), mark) is None:
            raise Conflict(f"node {node} (its record is gone)")
        self._store.revoke_lease(lease_id)
        return until

    def _lease_value(self, node: str) -> pb.Node:
        return pb.Node(name=node, scheduler=self.identity)

    def _reuse_or_grant(self, previous: int) -> int:
        if previous and self._store.refresh_lease(previous) > 0:
            return previous
        lease_id, granted = self._store.grant_lease(self.lease_ttl)
        if granted != self.lease_ttl:
            log.warning("etcd granted a %ds lease instead of %ds (see --election-timeout)", granted, self.lease_ttl)
        return lease_id

    def renew(self, node: str) -> int:
        """The node's lease expired while its agent still beats: attach the lease key to a new one."""
        new_id, _ = self._store.grant_lease(self.lease_ttl)
        self._store.commit([Put(self._store.keys.node_lease(node), self._lease_value(node), None, new_id)])
        log.info("node %s: lease had expired; new lease %x", node, new_id)
        return new_id


@dataclass(slots=True)
class SessionState:
    """What one session's reader and writer share."""

    node: str
    lease_id: int
    dirty: asyncio.Event = field(default_factory=asyncio.Event)  # the writer looks again
    gens: Generations = field(default_factory=Generations)
    replies: list[apb.SchedulerMessage] = field(default_factory=list)  # besides desired sets
    leaving: bool = False  # said goodbye: its heartbeats no longer keep the lease
    routes: bool = False  # the agent runs container networking: send it Routes
    templates: bool = False  # the agent takes DesiredSet.templates; an older one gets specs inline
    endpoint_updates: bool = False  # the agent applies Endpoints updates; an older one gets the whole view
    routes_sent: int = -1  # the cache's routes_version last sent
    recompute: bool = True  # the desired set may have changed (a reply alone does not)

    def look_again(self) -> None:
        self.recompute = True
        self.dirty.set()

    def reply(self, msg: apb.SchedulerMessage) -> None:
        self.replies.append(msg)
        self.dirty.set()


def _renewal_reply(state: SessionState, seq: int) -> Callable[[int], None]:
    """Tells the agent when etcd renewed its lease after this heartbeat (node/fencing.py)."""

    def renewed(ttl: int) -> None:
        if not state.leaving:
            state.reply(apb.SchedulerMessage(lease_renewed=apb.LeaseRenewed(seq=seq, ttl_seconds=ttl)))

    return renewed


def serialize(msg: apb.SchedulerMessage | bytes) -> bytes:
    """The session stream's serializer: a message, or one already serialized (the endpoints,
    which every session sends alike: EndpointsFeed.wire_since)."""
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def add_to_server(service: AgentSessionService, server: grpc.aio.Server) -> None:
    """As the generated add_AgentSessionServicer_to_server, with serialize() for the responses."""
    handlers = {
        "Session": grpc.stream_stream_rpc_method_handler(
            service.Session, request_deserializer=apb.AgentMessage.FromString, response_serializer=serialize
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class AgentSessionService:
    def __init__(
        self,
        registry: NodeRegistry,
        cache: ClusterCache,
        status: StatusWriter,
        metrics: SchedulerMetrics,
        keeper: LeaseKeeper,
        events: EventLog | None = None,
        endpoints: EndpointsFeed | None = None,  # the cluster's service endpoints, for every agent
        secrets: Opener | None = None,  # opens the secrets a node's instances need
    ) -> None:
        self._secrets = secrets or Opener(None)
        self._endpoints = endpoints
        self._keeper = keeper
        self._registry = registry
        self._cache = cache
        self._status = status
        self._metrics = metrics
        self._events = events
        # Half a lease without a beat: with beats every third of one, at least one is late.
        self.heartbeats = Heartbeats(overdue=registry.lease_ttl / 2)
        self._refusals: dict[tuple[str, str], float] = {}  # (node, reason) -> when last recorded
        # The open sessions by node (a reconnecting agent may briefly have two). One cache
        # listener wakes only the sessions of the nodes a change touched: with a listener per
        # session, each watch batch cost a call per session (5,000 per batch at 5,000 nodes).
        self._open: dict[str, list[SessionState]] = {}
        cache.subscribe(self._changed)

    def _changed(self, nodes: set[str]) -> None:
        for node in nodes:
            for state in self._open.get(node, ()):
                state.look_again()  # its desired set may differ
        if ROUTES in nodes:  # only the routes: sent whatever the desired set
            for states in self._open.values():
                for state in states:
                    if state.routes:
                        state.dirty.set()

    async def Session(
        self,
        request_iterator: AsyncIterator[apb.AgentMessage],
        context: grpc.aio.ServicerContext[apb.AgentMessage, apb.SchedulerMessage],
    ) -> AsyncIterator[apb.SchedulerMessage | bytes]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("msg") != "register" or not first.register.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be register with a node name")
            return
        reg = first.register
        identity = peer_identity(context)  # None without TLS
        if identity is not None and identity != node_identity(reg.node):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f'certificate "{identity}" may not register node "{reg.node}"'
            )
            return
        try:
            lease_id, held_until, record = await asyncio.to_thread(self._registry.register, reg)
        except (StoreUnavailable, Conflict) as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot register node {reg.node}: {e}")
            return
        except Refused as e:
            await self._refused(reg.node, e)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot register node {reg.node}: {e}")
            return
        log.info("node %s registered (lease %x)", reg.node, lease_id)
        if held_until:
            left = held_until - time.time()
            await self._record(reg.node, "NodeRestarted", f"agent back, {left:.0f}s before its restart hold ended")
        # Three beats per TTL: one lost or late beat never lets a live node's lease lapse.
        interval_ms = max(100, self._registry.lease_ttl * 1000 // 3)
        yield apb.SchedulerMessage(
            registered=apb.Registered(
                lease_id=lease_id,
                lease_ttl_seconds=self._registry.lease_ttl,
                heartbeat_interval_ms=interval_ms,
                subnet=record.subnet,
                cluster_cidr=str(self._registry.subnets.pool.cidr) if record.subnet else "",
            )
        )
        state = SessionState(
            reg.node,
            lease_id,
            routes=reg.container_network,
            templates=reg.accepts_templates,
            endpoint_updates=reg.accepts_endpoint_updates,
        )
        state.look_again()
        self.heartbeats.beat(reg.node, state)

        self._open.setdefault(reg.node, []).append(state)
        unsubscribe_endpoints = self._endpoints.subscribe(state.dirty.set) if self._endpoints else lambda: None
        reader = asyncio.create_task(self._read(state, request_iterator))
        self._metrics.sessions.inc()
        try:
            async for msg in self._write(state, reader):
                yield msg
        finally:
            if (states := self._open.get(reg.node)) is not None:
                states.remove(state)
                if not states:
                    del self._open[reg.node]
            unsubscribe_endpoints()
            reader.cancel()
            self.heartbeats.closed(reg.node, state)
            self._metrics.sessions.dec()
            log.info("node %s: session closed", reg.node)

    async def _write(
        self, state: SessionState, reader: asyncio.Task[None]
    ) -> AsyncIterator[apb.SchedulerMessage | bytes]:
        """Replies, and the node's desired set whenever it changed, until the reader ends."""
        last: bytes | None = None
        endpoints_sent = -1  # the feed's version last sent
        gens = state.gens
        # The reader's end wakes the writer too: one Event to wait on, no task per wake (at 5,000
        # agents, a waiter task and asyncio.wait() per wake were a tenth of the scheduler's CPU).
        reader.add_done_callback(lambda _: state.dirty.set())
        while not reader.done():
            await state.dirty.wait()
            state.dirty.clear()
            while state.replies:
                yield state.replies.pop(0)
            # Endpoints first: the agent's DNS knows the cluster before its first containers start.
            feed = self._endpoints
            if feed is not None and feed.version != endpoints_sent:
                update = feed.wire_since(endpoints_sent if state.endpoint_updates else -1)
                endpoints_sent = feed.version
                yield update
            if state.routes and state.routes_sent != self._cache.routes_version:
                state.routes_sent = self._cache.routes_version
                yield apb.SchedulerMessage(routes=self._cache.routes())
            if not state.recompute:
                continue
            state.recompute = False
            cache = self._cache
            insts = cache.desired_for(state.node)
            msg = desired_message(insts, cache.revision, cache.cluster_id, cache.template_of, not state.templates)
            specs = msg.templates.values() if state.templates else [i.spec for i in msg.instances]
            opened = self._secrets.needed(specs, cache.secrets)
            for name, (_, data) in opened.items():
                msg.secrets[name].CopyFrom(data)
            body = b"".join(i.SerializeToString(deterministic=True) for i in msg.instances)
            body += b"".join(msg.templates[k].SerializeToString(deterministic=True) for k in sorted(msg.templates))
            body += repr(sorted((n, rev) for n, (rev, _) in opened.items())).encode()  # a changed secret too
            # Same body but the agent ignored it as stale: resend once it no longer is.
            resend = gens.agent_ahead() and msg.generation >= gens.observed
            if body != last or resend:
                last = body
                gens.sent = msg.generation
                yield apb.SchedulerMessage(desired=msg)

    async def _read(self, state: SessionState, requests: AsyncIterator[apb.AgentMessage]) -> None:
        expired = asyncio.Event()
        try:
            async for msg in requests:
                kind = msg.WhichOneof("msg")
                if kind == "heartbeat" and not state.leaving:
                    self.heartbeats.beat(state.node, state)
                    if expired.is_set():
                        expired.clear()
                        state.lease_id = await self._renew(state.node, state.lease_id)
                    self._keeper.mark(state.lease_id, expired.set, _renewal_reply(state, msg.heartbeat.seq))
                    state.gens.observed = msg.heartbeat.observed_generation
                    if state.gens.agent_ahead():
                        state.look_again()  # at each beat until our cache caught up
                elif kind == "status":
                    self._status.report(state.node, list(msg.status.instances))
                    if msg.status.full:
                        self._status.stopped_elsewhere(state.node, {r.name for r in msg.status.instances})
                        state.look_again()
                elif kind == "goodbye":
                    await self._goodbye(state, msg.goodbye)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            self._keeper.forget(state.lease_id)

    async def _goodbye(self, state: SessionState, goodbye: apb.Goodbye) -> None:
        """The agent exits; for a restart, hold its node. The ack tells it the hold is recorded."""
        state.leaving = True
        self._keeper.forget(state.lease_id)
        self.heartbeats.closed(state.node, state)
        ack = apb.GoodbyeAck()
        if goodbye.restarting:
            try:
                until = await asyncio.to_thread(self._registry.hold, state.node, state.lease_id)
            except (StoreUnavailable, Conflict) as e:
                log.warning("node %s: could not hold it for its restart: %s", state.node, e)
            else:
                ack.held_until.CopyFrom(ts(until))
                ack.hold_ms = int(self._registry.restart_grace * 1000)
                grace = self._registry.restart_grace
                log.info("node %s: agent restarting; holding its instances for %.0fs", state.node, grace)
                await self._record(
                    state.node, "NodeRestarting", f"agent restarting; its instances are kept for {grace:.0f}s"
                )
        state.reply(apb.SchedulerMessage(goodbye_ack=ack))

    async def _refused(self, node: str, refusal: Refused) -> None:
        """A Warning event, once a minute per node and reason: the agent retries every few seconds."""
        now = time.monotonic()
        if now - self._refusals.get((node, refusal.reason), -REFUSAL_EVENT_EVERY) < REFUSAL_EVENT_EVERY:
            return
        self._refusals[(node, refusal.reason)] = now
        log.warning("node %s: registration refused: %s", node, refusal)
        if self._events is not None:
            record = event(time.time(), "Node", node, refusal.reason, str(refusal), warning=True)
            await asyncio.to_thread(self._events.record, [record])

    async def _record(self, node: str, reason: str, message: str) -> None:
        if self._events is not None:
            await asyncio.to_thread(self._events.record, [event(time.time(), "Node", node, reason, message)])

    async def _renew(self, node: str, lease_id: int) -> int:
        try:
            return await asyncio.to_thread(self._registry.renew, node)
        except (StoreUnavailable, Conflict) as e:
            log.warning("node %s: lease renewal failed: %s", node, e)
            return lease_id
