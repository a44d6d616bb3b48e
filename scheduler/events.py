"""Events: short-lived records of decisions, attached to a rotating TTL lease
so etcd expires them without a cleanup job, and capped per object so one
crash-looping instance cannot fill etcd within the hour."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

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
        # Keys this scheduler wrote, per object, oldest first. Bounded both ways; what it forgets
        # (other schedulers' events, a restart) still expires with its lease.
        self._recent: OrderedDict[tuple[str, str], deque[str]] = OrderedDict()

    def _lease_id(self) -> int:
        with self._lock:
            if not self._lease or time.monotonic() - self._granted_at > ROTATE_AFTER:
                self._lease, _ = self._store.grant_lease(self._ttl)
                self._granted_at = time.monotonic()
            return self._lease

    def writes(self, events: Sequence[pb.Event]) -> list[Write]:
        """Puts of the events, and deletes of what they push over an object's cap."""
        if not events:
            return []
        lease = self._lease_id()
        out: list[Write] = []
        for e in events:
            key = self._store.keys.event(f"{e.time.ToNanoseconds():020d}-{secrets.token_hex(3)}")
            out.append(Put(key, e, None, lease))
            out.extend(Delete(old, None) for old in self._remember((e.kind, e.object), key))
        return out

    def _remember(self, obj: tuple[str, str], key: str) -> list[str]:
        """Notes key as obj's newest; returns the keys over the cap."""
        with self._lock:
            keys = self._recent.pop(obj, None) or deque()
            self._recent[obj] = keys  # now the most recent object
            keys.append(key)
            over = [keys.popleft() for _ in range(len(keys) - PER_OBJECT)]
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

    def list(self, limit: int = 0, about: Callable[[pb.Event], bool] | None = None) -> list[pb.Event]:
        """The newest `limit` events (all with 0) that are `about` what is asked, oldest first.
        Keys start with the time, so without a filter the newest are read from the end of the
        range, not all of them."""
        prefix = self._store.keys.event("")
        if limit > 0 and about is None:
            events = [v.value for v in self._store.last(pb.Event, prefix, limit)]
        elif limit > 0 and about is not None:
            events = [v.value for v in self._store.newest(pb.Event, prefix, limit, about)]
        else:
            events = [v.value for v in self._store.list_prefix(pb.Event, prefix) if about is None or about(v.value)]
        events.sort(key=lambda e: seconds(e.time))
        return events[-limit:] if limit > 0 else events
