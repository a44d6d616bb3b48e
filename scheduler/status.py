"""Writes what agents report into the instances' status, in batches.

Reports are coalesced per instance (latest wins) and flushed in
revision-checked transactions, sent together; a write that lost a race is
retried after re-reading its instance. A report from a node the instance is
no longer assigned to is dropped: a stale node must not overwrite its
replacement's state.

A report whose restart count went up gets an event saying how the incarnation
before ended (the agent's last_termination: LivenessFailed, OOMKilled, Error...),
recorded once the status is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.cache import ClusterCache
from scheduler.errors import Conflict, StoreUnavailable
from scheduler.events import EventLog
from scheduler.reconcile import instance_event
from scheduler.snapshot import Versioned
from scheduler.store import Put, Store, Write
from scheduler.timeutil import ts

log = logging.getLogger(__name__)

FLUSH_EVERY = 0.02


def merged(current: pb.Instance, node: str, status: pb.InstanceStatus, now: float) -> pb.Instance | None:
    """The instance with the reported status, or None if nothing changes or the report is stale."""
    if current.node != node:
        return None
    new = pb.Instance()
    new.CopyFrom(current)
    new.status.CopyFrom(status)
    if current.desired == pb.DESIRED_STATE_STOP and status.state in (
        pb.INSTANCE_STATE_RUNNING,
        pb.INSTANCE_STATE_STARTING,
    ):
        new.status.state = pb.INSTANCE_STATE_TERMINATING  # it is being stopped; say so
    if new.status == current.status:
        return None
    new.updated_at.CopyFrom(ts(now))
    return new


def restart_events(before: pb.Instance, after: pb.Instance, now: float) -> list[pb.Event]:
    """An event when the agent restarted the instance (its count went up; an agent restart
    starts it again from 0), named after how the incarnation before ended."""
    status = after.status
    if status.restarts <= before.status.restarts or not status.HasField("last_termination"):
        return []
    last = status.last_termination
    what = last.message or f"exit code {last.exit_code}"
    warning = last.reason != "Completed"
    return [instance_event(now, after, last.reason or "Restarted", f"{what}; restart {status.restarts}", warning)]


class StatusWriter:
    def __init__(self, store: Store, cache: ClusterCache, events: EventLog | None = None) -> None:
        self._store = store
        self._cache = cache
        self._events = events
        # (node, instance) -> status: keyed by the reporting node too, so a node that reports
        # another node's instance name cannot overwrite that node's pending report.
        self._pending: dict[tuple[str, str], pb.InstanceStatus] = {}
        self._wake = asyncio.Event()

    def report(self, node: str, reports: list[apb.InstanceReport]) -> None:
        for r in reports:
            self._pending[(node, r.name)] = r.status
        self._wake.set()

    def stopped_elsewhere(self, node: str, present: set[str]) -> None:
        """After a full report: instances being stopped that the node no longer has are done."""
        for v in self._cache.on_node(node):
            inst = v.value
            gone = inst.desired == pb.DESIRED_STATE_STOP and inst.name not in present
            if gone and inst.status.state not in (pb.INSTANCE_STATE_STOPPED, pb.INSTANCE_STATE_SUCCEEDED):
                status = pb.InstanceStatus()
                status.CopyFrom(inst.status)
                status.state = pb.INSTANCE_STATE_STOPPED
                self._pending[(node, inst.name)] = status
        self._wake.set()

    async def run(self) -> None:
        flushed = float("-inf")  # monotonic time the last flush ended
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Reports that arrive together go together, FLUSH_EVERY apart at least; the first
            # after a quiet spell (a container just started) goes at once.
            await asyncio.sleep(max(0.0, flushed + FLUSH_EVERY - time.monotonic()))
            batch, self._pending = self._pending, {}
            try:
                await asyncio.to_thread(self._flush, batch)
            except StoreUnavailable as e:
                log.warning("could not record %d status reports: %s", len(batch), e)
                for key, item in batch.items():  # keep them for the next try
                    self._pending.setdefault(key, item)
                await asyncio.sleep(0.5)
                self._wake.set()
            flushed = time.monotonic()

    def _flush(self, batch: dict[tuple[str, str], pb.InstanceStatus]) -> None:
        now = time.time()
        writes: list[Put] = []
        nodes: dict[str, str] = {}  # instance -> the node whose report is written
        events: dict[str, list[pb.Event]] = {}  # instance -> its events, once its status is written
        for (node, name), status in batch.items():
            v = self._cache.instances.get(name)
            if v is None:
                continue
            new = merged(v.value, node, status, now)  # None for a node the instance is not on
            if new is not None:
                writes.append(Put(self._store.keys.instance(new.app, new.name), new, v.mod_revision))
                nodes[name] = node
                events[name] = restart_events(v.value, new, now)
        if not writes:
            return

        # Chunks in flight together (etcd syncs them to disk together); a chunk that lost a race
        # is retried write by write, and what is still refused is read again (_one_by_one).
        def tell(landed: Iterable[object]) -> None:
            self._record([e for w in landed if isinstance(w, Put) for e in events[w.key.rpartition("/")[2]]])

        try:
            _, refused = self._store.commit_partial(writes)
        except StoreUnavailable as e:  # run() tries the batch again; what landed is told now
            tell(e.landed)
            raise
        lost = {id(w) for w in refused}
        tell(w for w in writes if id(w) not in lost)
        if refused:
            self._one_by_one(refused, batch, nodes, now)

    def _record(self, events: list[pb.Event]) -> None:
        if events and self._events is not None:
            self._events.record(events)

    def _one_by_one(
        self, chunk: list[Write], batch: dict[tuple[str, str], pb.InstanceStatus], nodes: dict[str, str], now: float
    ) -> None:
        for w in chunk:
            assert isinstance(w, Put) and isinstance(w.value, pb.Instance)
            name = w.value.name
            for _ in range(3):
                fresh: Versioned[pb.Instance] | None = self._store.get(pb.Instance, w.key)
                if fresh is None:
                    break
                node = nodes[name]
                new = merged(fresh.value, node, batch[(node, name)], now)
                if new is None:
                    break
                try:
                    self._store.commit([Put(w.key, new, fresh.mod_revision)])
                    self._record(restart_events(fresh.value, new, now))
                    break
                except Conflict:
                    continue
