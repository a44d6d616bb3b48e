"""Events: short-lived records of decisions, attached to a rotating TTL lease
so etcd expires them without a cleanup job, and capped per object so one
crash-looping instance cannot fill etcd within the hour."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence

from orch.v1 import types_pb2 as pb
from scheduler.errors import StoreUnavailable
from scheduler.store import Delete, Put, Store, Write
from scheduler.timeutil import seconds

EVENT_TTL = 3600  # seconds an event stays
ROTATE_AFTER = 300.0  # a new lease every 5 minutes, so events live 55-60 minutes
PER_OBJECT = 50  # events kept per object (kind, name); older ones are deleted as new ones come
OBJECTS = 20_000  # objects whose recent keys are remembered; beyond, the least recent is forgotten
log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, store: Store, ttl: int = EVENT_TTL) -> None:
        self._store = store
        self._ttl = ttl
        self._lease = 0
        self._granted_at = 0.0
        self._lock = threading.Lock()
        # Key suffixes this scheduler wrote, per object name, oldest first. Bounded both ways;
        # what it forgets (other schedulers' events, a restart) still expires with its lease.
        self._recent: OrderedDict[str, deque[str]] = OrderedDict()

    def _lease_id(self) -> int:
        with self._lock:
            if not self._lease or time.monotonic() - self._granted_at > ROTATE_AFTER:
                self._lease, _ = self._store.grant_lease(self._ttl)
                self._granted_at = time.monotonic()
            return self._lease

    def writes(self, events: Sequence[pb.Event]) -> list[Write]:
        """Puts of the events (each twice: in the timeline and under its object), and deletes of
        what they push over an object's cap."""
        if not events:
            return []
        lease = self._lease_id()
        keys = self._store.keys
        out: list[Write] = []
        for e in events:
            suffix = f"{e.time.ToNanoseconds():020d}-{secrets.token_hex(3)}"
            out += [Put(keys.event(suffix), e, None, lease), Put(keys.event_of(e.object, suffix), e, None, lease)]
            for old in self._remember(e.object, suffix):
                out += [Delete(keys.event(old), None), Delete(keys.event_of(e.object, old), None)]
        return out

    def _remember(self, obj: str, suffix: str) -> list[str]:
        """Notes suffix as obj's newest event; returns those over the cap."""
        with self._lock:
            suffixes = self._recent.pop(obj, None) or deque()
            self._recent[obj] = suffixes  # now the most recent object
            suffixes.append(suffix)
            over = [suffixes.popleft() for _ in range(len(suffixes) - PER_OBJECT)]
            while len(self._recent) > OBJECTS:
                self._recent.popitem(last=False)
            return over

    def record(self, events: Sequence[pb.Event]) -> None:
        """Best effort: the change they describe has already landed."""
        if not events:
            return
        try:
            self._store.commit(self.writes(events))
        except StoreUnavailable as e:
            log.warning("could not record %d events: %s", len(events), e)

    def _read(self, prefix: str, limit: int) -> list[pb.Event]:
        found = self._store.last(pb.Event, prefix, limit) if limit > 0 else self._store.list_prefix(pb.Event, prefix)
        return [v.value for v in found]

    def list(self, limit: int = 0, of: str = "", with_instances: bool = False) -> list[pb.Event]:
        """The newest `limit` events (all with 0), oldest first: everyone's, or those of the
        object named `of` (with_instances: and of the objects named `of-...`, an app's instances).
        Keys start with the time, so the newest are read from the end of a range: the timeline's,
        or the object's own, never the whole hour's to pick one object's out."""
        keys = self._store.keys
        if not of:
            events = self._read(keys.event(""), limit)
        else:
            events = [e for e in self._read(keys.events_of(of), limit) if e.object == of]
            if with_instances:  # every one: that range is in name order, then time
                events += [e for e in self._read(keys.events_of(of, True), 0) if e.object.startswith(of + "-")]
        events.sort(key=lambda e: seconds(e.time))
        return events[-limit:] if limit > 0 else events
