"""Keeps node leases alive in batches over one etcd stream.

A heartbeat only marks its lease as wanted; every tick the keeper refreshes
each marked lease once. So a dead agent (no heartbeats) stops being
refreshed within one tick, and a busy scheduler sends at most one
keep-alive per lease per tick, however fast agents beat.

The keeper is also where this scheduler notices that leases may lapse
through no fault of the agents, and tells `Contact`: keep-alives unanswered
for longer than `contact.stall` (etcd stopped or cut off; the stream is then
re-opened on another member), or a tick that came that late (this process
stalled).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from scheduler.errors import StoreUnavailable
from scheduler.etcd_failover import KeepAliveStream
from scheduler.store import Store

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, store: Store, interval: float) -> None:
        self._store = store
        self.interval = interval
        self._due: set[int] = set()
        self._on_expired: dict[int, Callable[[], None]] = {}
        self._stream: KeepAliveStream | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken = False
        self._unanswered_since: float | None = None  # monotonic: first keep-alive sent since the last answer

    def mark(self, lease_id: int, on_expired: Callable[[], None]) -> None:
        """A heartbeat for this lease arrived; on_expired runs (on the loop) if etcd says it is gone."""
        self._due.add(lease_id)
        self._on_expired[lease_id] = on_expired

    def forget(self, lease_id: int) -> None:
        self._due.discard(lease_id)
        self._on_expired.pop(lease_id, None)

    def _response(self, lease_id: int, ttl: int) -> None:  # etcd stream thread
        self._unanswered_since = None
        self._store.contact.ok()
        if ttl <= 0 and self._loop is not None:
            self._loop.call_soon_threadsafe(self._expired, lease_id)

    def _expired(self, lease_id: int) -> None:
        callback = self._on_expired.pop(lease_id, None)
        if callback is not None:
            callback()

    def _error(self, err: Exception) -> None:  # etcd stream thread
        log.warning("lease keep-alive stream broke: %s", err)
        self._broken = True

    def _check_answers(self, now: float) -> None:
        """Keep-alives unanswered for longer than a stall: etcd is away, or the stream's member
        hangs (stopped, cut off) without an error. Say so, and open the next stream elsewhere."""
        since = self._unanswered_since
        if since is None or now - since < self._store.contact.stall:
            return
        self._store.contact.failed(ago=now - since)
        if self._stream is not None and not self._broken:
            # Once per outage at warning level: etcd stopped for 30 s would otherwise say it 60 times.
            level = logging.DEBUG if self._store.contact.down_for() > 2 * self._store.contact.stall else logging.WARNING
            log.log(level, "lease keep-alives unanswered for %.1fs on %s; re-opening", now - since, self._stream.member)
            self._store.abandon(self._stream)
            self._stream = None
            self._unanswered_since = None  # the next stream gets a stall of its own

    async def _open(self) -> bool:
        if self._stream is not None and not self._broken:
            return True
        self._broken = False
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        try:
            self._stream = await asyncio.to_thread(self._store.keep_alive_stream, self._response, self._error)
        except StoreUnavailable as e:  # etcd away: keep the marks, try again next tick
            log.warning("lease keep-alive stream: %s", e)
            return False
        return True

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        expected = time.monotonic() + self.interval
        try:
            while True:
                await asyncio.sleep(max(0.0, expected - time.monotonic()))
                now = time.monotonic()
                if now - expected >= self._store.contact.stall:  # this process stalled: leases may have lapsed
                    self._store.contact.failed(ago=now - expected)
                expected = now + self.interval
                self._check_answers(now)
                if not await self._open():
                    continue
                assert self._stream is not None
                due, self._due = self._due, set()
                for lease_id in due:
                    self._stream.send(lease_id)
                if due and self._unanswered_since is None:
                    self._unanswered_since = now
        finally:
            if self._stream is not None:
                self._stream.close()
