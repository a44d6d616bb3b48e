"""Keeps node leases alive in batches over one etcd stream.

A heartbeat only marks its lease as wanted; every tick the keeper refreshes
each marked lease once. So a dead agent (no heartbeats) stops being
refreshed within one tick, and a busy scheduler sends at most one
keep-alive per lease per tick, however fast agents beat.
"""

from __future__ import annotations

import asyncio
import logging
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

    def mark(self, lease_id: int, on_expired: Callable[[], None]) -> None:
        """A heartbeat for this lease arrived; on_expired runs (on the loop) if etcd says it is gone."""
        self._due.add(lease_id)
        self._on_expired[lease_id] = on_expired

    def forget(self, lease_id: int) -> None:
        self._due.discard(lease_id)
        self._on_expired.pop(lease_id, None)

    def _response(self, lease_id: int, ttl: int) -> None:  # etcd stream thread
        if ttl <= 0 and self._loop is not None:
            self._loop.call_soon_threadsafe(self._expired, lease_id)

    def _expired(self, lease_id: int) -> None:
        callback = self._on_expired.pop(lease_id, None)
        if callback is not None:
            callback()

    def _error(self, err: Exception) -> None:  # etcd stream thread
        log.warning("lease keep-alive stream broke: %s", err)
        self._broken = True

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(self.interval)
                if self._stream is None or self._broken:
                    self._broken = False
                    if self._stream is not None:
                        self._stream.close()
                        self._stream = None
                    try:
                        self._stream = await asyncio.to_thread(
                            self._store.keep_alive_stream, self._response, self._error
                        )
                    except StoreUnavailable as e:  # etcd away: keep the marks, try again next tick
                        log.warning("lease keep-alive stream: %s", e)
                        continue
                due, self._due = self._due, set()
                for lease_id in due:
                    self._stream.send(lease_id)
        finally:
            if self._stream is not None:
                self._stream.close()
