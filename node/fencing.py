"""Self-fencing (`onNodeLost: Stop`): the agent kills such an app's instances
itself before its node's lease can have expired, so that the replacement the
scheduler places elsewhere never runs at the same time as the old instance.

Why it is safe (the ordering, each step on one machine's monotonic clock):

1. The scheduler replaces an instance of a cut-off node only after the node's
   lease key is gone from etcd (scheduler/liveness.py: NotReady is "no lease
   key"), and etcd deletes it only once the lease expired: at its last renewal
   plus its TTL, or later (etcd checks every 500 ms; a new etcd leader extends
   every lease). Then the scheduler still has to see it, mark the instance
   Lost, place a replacement and another agent start it.
2. The scheduler renews a node's lease only after a heartbeat, with a
   keep-alive it sends after that heartbeat arrived; once etcd answered it, it
   tells the agent which heartbeat that was (LeaseRenewed, scheduler/leases.py).
   Registering grants or refreshes the lease after the Register was sent.
3. So the lease cannot expire before `sent + ttl`, where `sent` is when the
   agent queued the latest acknowledged heartbeat (or its Register): the
   renewal came after it. Both are durations on the agent's monotonic clock
   and etcd's; clock *rates* differ by parts per million, their *offsets* do
   not matter (no wall clock is compared).
4. The agent kills at `sent + ttl - FENCE_MARGIN`: SIGKILL on the event loop,
   without a grace period. The margin covers the loop's lateness and the kill;
   the expiry tick and the scheduler's reaction in (1) come on top.

A lapse is latched: once the deadline passed, the instances are fenced even if
a renewal arrives a moment later (a new lease after the old one expired says
nothing about the old one). A fenced instance never runs again on this agent;
it is reported Failed/NodeLost and the scheduler places a replacement.

The price, with the default 1 s lease: a scheduler or etcd that stalls for more
than about 0.75 s fences these instances although nobody replaced them yet.
That is the trade an app makes for "at most one" (docs/architecture.md).

An agent restart (SIGTERM) keeps them: the scheduler holds the node for the
restart grace (hold_ms in GoodbyeAck); the bound is saved in the state dir,
with the names of the instances it protects, for the next agent process (the
monotonic clock is the same until the machine reboots, hence the boot id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from orch.files import write_json_atomic

log = logging.getLogger(__name__)

FENCE_MARGIN = 0.25  # s before the earliest possible expiry: the loop's lateness and the SIGKILL
# A restart hold ends on the leader's wall clock, which another scheduler set: allow for clocks
# that disagree by up to this much.
HOLD_MARGIN = 2.0
KEEP_SENT = 64  # heartbeats remembered while waiting for their renewal
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def must_fence(renewed_at: float | None, ttl: float, now: float, margin: float = FENCE_MARGIN) -> bool:
    """renewed_at: when the agent sent the latest heartbeat (or Register) whose renewal it heard
    of, None if none; ttl: the lease's TTL; all on the agent's monotonic clock."""
    return renewed_at is None or now >= renewed_at + ttl - margin


@dataclass(frozen=True, slots=True)
class Saved:
    """What one agent process leaves the next: the bound, and the instances it protects."""

    valid_until: float | None  # monotonic; None: unknown (another boot, no file)
    instances: frozenset[str]


class LeaseWatch:
    """What this agent knows of its node's lease: the latest time it surely runs until."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, valid_until: float | None = None) -> None:
        self._clock = clock
        self.valid_until = valid_until
        self._seq = 0
        self._sent: dict[int, float] = {}  # heartbeat seq -> when it was queued
        self.changed = asyncio.Event()
        self.on_lapse: Callable[[], None] = lambda: None  # fences; called at most once per lapse
        self.needed = False  # instances here would be fenced at a lapse (the session beats faster)
        self._lapse_seen = False

    def heartbeat(self) -> int:
        """A heartbeat is about to be queued: its sequence number."""
        self._seq += 1
        self._sent[self._seq] = self._clock()
        if len(self._sent) > KEEP_SENT:
            del self._sent[min(self._sent)]
        return self._seq

    def renewed(self, seq: int, ttl: float) -> None:
        sent = self._sent.get(seq)
        for old in [s for s in self._sent if s <= seq]:
            del self._sent[old]
        if sent is not None:
            self._extend(sent + ttl)

    def registered(self, sent_at: float, ttl: float) -> None:
        self._extend(sent_at + ttl)

    def held(self, sent_at: float, hold: float) -> None:
        """The scheduler holds the node for `hold` s from after `sent_at` (a restart)."""
        self._extend(sent_at + hold - HOLD_MARGIN)

    def lapsed(self, margin: float = FENCE_MARGIN) -> bool:
        if self.valid_until is None:
            return True
        return must_fence(self.valid_until, 0.0, self._clock(), margin)

    def check(self) -> None:
        """Fence if the bound has passed (before anything extends it)."""
        if self.lapsed():
            if not self._lapse_seen:
                self._lapse_seen = True
                self.on_lapse()
        else:
            self._lapse_seen = False

    def _extend(self, until: float) -> None:
        self.check()  # latched: a lapse that happened is fenced first
        if self.valid_until is None or until > self.valid_until:
            self.valid_until = until
        self.check()
        self.changed.set()

    async def run(self) -> None:
        """Fences at each lapse, on time."""
        while True:
            self.check()
            self.changed.clear()
            wait = math.inf if self.valid_until is None else self.valid_until - FENCE_MARGIN - self._clock()
            if wait <= 0:
                wait = math.inf  # lapsed: until something extends the bound
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), None if wait == math.inf else wait)


def boot_id(path: Path = BOOT_ID) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def save(path: Path, valid_until: float | None, instances: Iterable[str], boot: str | None = None) -> None:
    data = {
        "bootId": boot if boot is not None else boot_id(),
        "validUntil": valid_until,
        "instances": sorted(instances),
    }
    # No fsync: the bound means nothing after a host crash (another boot id) anyway.
    write_json_atomic(path, data, mode=0o600, fsync=False)


def load(path: Path, boot: str | None = None) -> Saved:
    """A bound from another boot is unknown (the monotonic clock started again)."""
    try:
        data = json.loads(path.read_text())
        names = frozenset(str(n) for n in data.get("instances", []))
        until = data.get("validUntil")
        same_boot = data.get("bootId") == (boot if boot is not None else boot_id())
    except (OSError, ValueError, AttributeError, TypeError) as e:
        if not isinstance(e, FileNotFoundError):
            log.warning("%s: %s; treating its instances as unprotected", path, e)
        return Saved(None, frozenset())
    return Saved(float(until) if same_boot and isinstance(until, (int, float)) else None, names)
