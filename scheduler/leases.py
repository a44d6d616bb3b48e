"""Keeps node leases alive in batches over one etcd stream.

A heartbeat only marks its lease as wanted; every tick the keeper refreshes
each marked lease once. So a dead agent (no heartbeats) stops being
refreshed within one tick, and a busy scheduler sends at most one
keep-alive per lease per tick, however fast agents beat.

A heartbeat may also ask to hear when its lease was renewed (`on_renewed`):
the callback runs once etcd answered a keep-alive that this keeper *sent
after* the mark, so the renewal happened after the agent sent its heartbeat.
etcd answers a stream's keep-alives in order, so the n-th answer for a lease
belongs to the n-th keep-alive sent for it on that stream; callbacks waiting
on a stream that is replaced are dropped (never a false renewal: the agent
then only fences sooner, node/fencing.py).

The keeper is also where this scheduler notices that leases may lapse
through no fault of the agents, and tells `Contact`: keep-alives unanswered
for longer than `contact.stall` (etcd stopped or cut off), or a tick that came
that late (this process stalled).

A stream whose keep-alives go unanswered is given up for another member after
`patience()`: the stall, or longer where etcd has been answering slowly (as
TCP's retransmission timeout follows the round trip, RFC 6298: SRTT + 4
RTTVAR), at most a lease TTL (two stalls). On a starved machine etcd answering
in 0.6 s still renews 1 s leases; giving that stream up at 0.5 s dropped the
answers in flight and left every lease unrenewed until another member, as
starved, answered: all members in turn, and every node NotReady.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable

from scheduler.errors import StoreUnavailable
from scheduler.etcd_failover import KeepAliveStream
from scheduler.store import Store

log = logging.getLogger(__name__)
Renewed = Callable[[int], None]  # called with the TTL etcd renewed the lease for


class LeaseKeeper:
    def __init__(self, store: Store, interval: float) -> None:
        self._store = store
        self.interval = interval
        self._due: set[int] = set()
        self._on_expired: dict[int, Callable[[], None]] = {}
        self._renewal_waiters: dict[int, list[Renewed]] = {}  # marked since the last send
        # Per lease, one batch of waiters per keep-alive sent on the current stream, oldest first.
        self._sent: dict[int, deque[list[Renewed]]] = {}
        self._stream: KeepAliveStream | None = None
        self._stream_no = 0  # answers of an abandoned stream renew no waiter
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken = False
        self._unanswered_since: float | None = None  # monotonic: first keep-alive sent since the last answer
        self._srtt: float | None = None  # smoothed time to the first answer after a send (s)
        self._rttvar = 0.0  # its smoothed deviation

    def mark(self, lease_id: int, on_expired: Callable[[], None], on_renewed: Renewed | None = None) -> None:
        """A heartbeat for this lease arrived; on_expired runs (on the loop) if etcd says it is gone,
        on_renewed(ttl) once etcd renewed it with a keep-alive sent from now on."""
        self._due.add(lease_id)
        self._on_expired[lease_id] = on_expired
        if on_renewed is not None:
            self._renewal_waiters.setdefault(lease_id, []).append(on_renewed)

    def forget(self, lease_id: int) -> None:
        self._due.discard(lease_id)
        self._on_expired.pop(lease_id, None)
        self._renewal_waiters.pop(lease_id, None)
        for batch in self._sent.get(lease_id, ()):  # kept: the answers still in flight stay in step
            batch.clear()

    def _response(self, stream_no: int, lease_id: int, ttl: int) -> None:  # etcd stream thread
        self._store.contact.ok()
        since = self._unanswered_since
        if stream_no == self._stream_no and since is not None:  # a given-up stream's late answer times nothing
            self._unanswered_since = None
            self._sample(time.monotonic() - since)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._answered, stream_no, lease_id, ttl)

    def _answered(self, stream_no: int, lease_id: int, ttl: int) -> None:
        # A late answer of a stream we gave up renews no waiter: its batches were dropped.
        waiters = self._oldest_batch(lease_id) if stream_no == self._stream_no else []
        if ttl <= 0:
            self._expired(lease_id)
            return
        for renewed in waiters:
            renewed(ttl)

    def _oldest_batch(self, lease_id: int) -> list[Renewed]:
        batches = self._sent.get(lease_id)
        if not batches:
            return []
        waiters = batches.popleft()
        if not batches:
            del self._sent[lease_id]
        return waiters

    def _expired(self, lease_id: int) -> None:
        callback = self._on_expired.pop(lease_id, None)
        if callback is not None:
            callback()

    def _error(self, err: Exception) -> None:  # etcd stream thread
        log.warning("lease keep-alive stream broke: %s", err)
        self._broken = True

    def _sample(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt

    def patience(self) -> float:
        """How long keep-alives may go unanswered before the stream is given up (module doc)."""
        stall = self._store.contact.stall
        if self._srtt is None:
            return stall
        return min(2 * stall, max(stall, self._srtt + 4 * self._rttvar))

    def _check_answers(self, now: float) -> None:
        """Keep-alives unanswered for longer than a stall: etcd is away or slow, or the stream's
        member hangs (stopped, cut off) without an error. Say so; past `patience()`, open the
        next stream elsewhere."""
        since = self._unanswered_since
        if since is None or now - since < self._store.contact.stall:
            return
        self._store.contact.failed(ago=now - since)
        if now - since < self.patience():
            return
        if self._stream is not None and not self._broken:
            # Once per outage at warning level: etcd stopped for 30 s would otherwise say it 60 times.
            level = logging.DEBUG if self._store.contact.down_for() > 2 * self.patience() else logging.WARNING
            log.log(level, "lease keep-alives unanswered for %.1fs on %s; re-opening", now - since, self._stream.member)
            self._store.abandon(self._stream)
            self._stream = None
            self._sent.clear()
            self._unanswered_since = None  # the next stream gets a stall of its own

    async def _open(self) -> bool:
        if self._stream is not None and not self._broken:
            return True
        self._broken = False
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._sent.clear()
        self._stream_no += 1
        on_response = functools.partial(self._response, self._stream_no)
        try:
            self._stream = await asyncio.to_thread(self._store.keep_alive_stream, on_response, self._error)
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
                    self._sent.setdefault(lease_id, deque()).append(self._renewal_waiters.pop(lease_id, []))
                    self._stream.send(lease_id)
                if due and self._unanswered_since is None:
                    self._unanswered_since = now
        finally:
            if self._stream is not None:
                self._stream.close()
