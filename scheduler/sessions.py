"""The agents' side of the scheduler: one bidirectional stream per node.

On `register` the node record and its lease key are written (the lease is
reused when the agent reconnects within its TTL, so moving to another
scheduler never looks like a death). Every heartbeat refreshes the lease.
Whenever the node's instances change, the whole desired set is sent again,
numbered with the etcd revision of the cache it came from. An agent ignores a
set older than one it applied (from a scheduler that was ahead of us); its
heartbeats then say so, and the set is sent again once this cache caught up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from orch.tls import node_identity, peer_identity
from orch.v1 import agent_pb2 as apb
from orch.v1 import agent_pb2_grpc
from orch.v1 import types_pb2 as pb
from scheduler.cache import ClusterCache
from scheduler.errors import Conflict, StoreUnavailable
from scheduler.leases import LeaseKeeper
from scheduler.metrics import SchedulerMetrics
from scheduler.status import StatusWriter
from scheduler.store import Put, Store
from scheduler.timeutil import ts

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Generations:
    sent: int = 0  # of the last desired set this session sent
    observed: int = 0  # of the last one the agent applied (its heartbeats)

    def agent_ahead(self) -> bool:
        """The agent ignored our last set: it had applied a newer one (from another scheduler)."""
        return self.observed > self.sent


def desired_message(instances: list[pb.Instance], generation: int, cluster_id: int = 0) -> apb.DesiredSet:
    out = apb.DesiredSet(generation=generation, cluster_id=cluster_id)
    for inst in instances:
        item = out.instances.add()
        item.CopyFrom(inst)
        item.ClearField("status")  # the agent owns status; resending it on every report is noise
        item.ClearField("updated_at")
    return out


class NodeRegistry:
    """Node records and their leases in etcd (blocking calls)."""

    def __init__(self, store: Store, lease_ttl: int) -> None:
        self._store = store
        self.lease_ttl = lease_ttl

    def register(self, reg: apb.Register) -> int:
        key = self._store.keys.node(reg.node)
        # Only this node's own last lease may be reused: any other live lease (another node's,
        # the leader's) kept alive by this session would keep a dead node Ready or a dead
        # leader leading.
        recorded = self._store.get(pb.Node, key)
        own = reg.lease_id if recorded is not None and reg.lease_id == recorded.value.lease_id else 0
        lease_id = self._reuse_or_grant(own)
        for _ in range(5):
            existing = self._store.get(pb.Node, key)
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
            node.lease_id = lease_id
            node.registered_at.CopyFrom(ts(time.time()))
            lease_key = self._store.keys.node_lease(reg.node)
            try:
                self._store.commit(
                    [
                        Put(key, node, existing.mod_revision if existing else 0),
                        Put(lease_key, pb.Node(name=reg.node), None, lease_id),
                    ]
                )
                return lease_id
            except Conflict:
                continue
        raise Conflict(f"node {reg.node}")

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
        self._store.commit([Put(self._store.keys.node_lease(node), pb.Node(name=node), None, new_id)])
        log.info("node %s: lease had expired; new lease %x", node, new_id)
        return new_id


class AgentSessionService(agent_pb2_grpc.AgentSessionServicer):
    def __init__(
        self,
        registry: NodeRegistry,
        cache: ClusterCache,
        status: StatusWriter,
        metrics: SchedulerMetrics,
        keeper: LeaseKeeper,
    ) -> None:
        self._keeper = keeper
        self._registry = registry
        self._cache = cache
        self._status = status
        self._metrics = metrics

    async def Session(
        self,
        request_iterator: AsyncIterator[apb.AgentMessage],
        context: grpc.aio.ServicerContext[apb.AgentMessage, apb.SchedulerMessage],
    ) -> AsyncIterator[apb.SchedulerMessage]:
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
            lease_id = await asyncio.to_thread(self._registry.register, reg)
        except (StoreUnavailable, Conflict) as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot register node {reg.node}: {e}")
            return
        log.info("node %s registered (lease %x)", reg.node, lease_id)
        # Three beats per TTL: one lost or late beat never lets a live node's lease lapse.
        interval_ms = max(100, self._registry.lease_ttl * 1000 // 3)
        yield apb.SchedulerMessage(
            registered=apb.Registered(
                lease_id=lease_id,
                lease_ttl_seconds=self._registry.lease_ttl,
                heartbeat_interval_ms=interval_ms,
            )
        )
        dirty = asyncio.Event()
        dirty.set()
        unsubscribe = self._cache.subscribe(lambda nodes: dirty.set() if reg.node in nodes else None)
        gens = Generations()
        reader = asyncio.create_task(self._read(reg.node, lease_id, request_iterator, dirty, gens))
        self._metrics.sessions.inc()
        try:
            last: bytes | None = None
            while not reader.done():
                waiter = asyncio.create_task(dirty.wait())
                try:
                    await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()  # also when the stream is torn down mid-wait
                dirty.clear()
                msg = desired_message(self._cache.desired_for(reg.node), self._cache.revision, self._cache.cluster_id)
                body = b"".join(i.SerializeToString(deterministic=True) for i in msg.instances)
                # Same body but the agent ignored it as stale: resend once it no longer is.
                resend = gens.agent_ahead() and msg.generation >= gens.observed
                if body != last or resend:
                    last = body
                    gens.sent = msg.generation
                    yield apb.SchedulerMessage(desired=msg)
        finally:
            unsubscribe()
            reader.cancel()
            self._metrics.sessions.dec()
            log.info("node %s: session closed", reg.node)

    async def _read(
        self,
        node: str,
        lease_id: int,
        requests: AsyncIterator[apb.AgentMessage],
        dirty: asyncio.Event,
        gens: Generations,
    ) -> None:
        expired = asyncio.Event()
        try:
            async for msg in requests:
                kind = msg.WhichOneof("msg")
                if kind == "heartbeat":
                    if expired.is_set():
                        expired.clear()
                        lease_id = await self._renew(node, lease_id)
                    self._keeper.mark(lease_id, expired.set)
                    gens.observed = msg.heartbeat.observed_generation
                    if gens.agent_ahead():
                        dirty.set()  # look again at each beat until our cache caught up
                elif kind == "status":
                    self._status.report(node, list(msg.status.instances))
                    if msg.status.full:
                        self._status.stopped_elsewhere(node, {r.name for r in msg.status.instances})
                        dirty.set()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            self._keeper.forget(lease_id)

    async def _renew(self, node: str, lease_id: int) -> int:
        try:
            return await asyncio.to_thread(self._registry.renew, node)
        except (StoreUnavailable, Conflict) as e:
            log.warning("node %s: lease renewal failed: %s", node, e)
            return lease_id
