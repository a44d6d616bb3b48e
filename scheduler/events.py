"""Events: short-lived records of decisions, attached to a rotating TTL lease
so etcd expires them without a cleanup job, and capped per object so one
crash-looping instance cannot fill etcd within the hour."""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence

from orch.v1 import types_pb2 as pb
from scheduler.errors import StoreUnavailable
from scheduler.store import Delete, Put, Store, Write

EVENT_TTL = 3600  # seconds an event stays
ROTATE_AFTER = 300.0  # a new lease every 5 minutes, so events live 55-60 minutes
PER_OBJECT = 50  # events kept per object name; older ones are deleted as new ones come
PER_APP = 100  # an app's, with its instances', kept in its own range (describe app reads those)
OBJECTS = 20_000  # objects whose recent keys are remembered; beyond, the least recent is forgotten
log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, store: Store, ttl: int = EVENT_TTL) -> None:
        self._store = store
        self._ttl = ttl
        self._lease = 0
        self._granted_at = 0.0
        self._lock = threading.Lock()
        # Key suffixes: the event's time, then this log's own random id and a count. A pass tells
        # hundreds of events of one instant; 3 random bytes alone collided (one event lost).
        self._origin = secrets.token_hex(4)
        self._sequence = itertools.count()
        # Key suffixes this scheduler wrote, per range (an object's, an app's), oldest first.
        # Bounded both ways; what it forgets (other schedulers' events, a restart) still expires
        # with its lease.
        self._recent: OrderedDict[tuple[str, str], deque[str]] = OrderedDict()

    def _lease_id(self) -> int:
        with self._lock:
            if not self._lease or time.monotonic() - self._granted_at > ROTATE_AFTER:
                self._lease, _ = self._store.grant_lease(self._ttl)
                self._granted_at = time.monotonic()
            return self._lease

    def writes(self, events: Sequence[pb.Event]) -> list[Write]:
        """Puts of the events, each in the timeline, under its object and under its app (an app's
        or an instance's), and deletes of what they push over an object's or an app's cap."""
        if not events:
            return []
        lease = self._lease_id()
        keys = self._store.keys
        # By key: an event pushed over a cap by later ones of the same batch is not written at
        # all (etcd refuses a transaction that names a key twice).
        out: dict[str, Write] = {}

        def put(key: str, e: pb.Event) -> None:
            out[key] = Put(key, e, None, lease)

        def delete(key: str) -> None:
            if out.pop(key, None) is None:
                out[key] = Delete(key, None)

        for e in events:
            suffix = f"{e.time.ToNanoseconds():020d}-{self._origin}{next(self._sequence):x}"
            put(keys.event(suffix), e)
            put(keys.event_of(e.object, suffix), e)
            for old in self._remember(("object", e.object), suffix, PER_OBJECT):
                delete(keys.event(old))
                delete(keys.event_of(e.object, old))
            if app := e.app:
                put(keys.app_event(app, suffix), e)
                for old in self._remember(("app", app), suffix, PER_APP):
                    delete(keys.app_event(app, old))
        return list(out.values())

    def _remember(self, of: tuple[str, str], suffix: str, cap: int) -> list[str]:
        """Notes suffix as the newest event of a range; returns those over its cap."""
        with self._lock:
            suffixes = self._recent.pop(of, None) or deque()
            self._recent[of] = suffixes  # now the most recent range
            suffixes.append(suffix)
            over = [suffixes.popleft() for _ in range(len(suffixes) - cap)]
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
        object named `of` (with_instances: of the app `of` and its instances). Keys start with
        the time, so a range is in time order and its newest are at its end: the timeline's, the
        object's or the app's; never the whole hour's read to pick one object's out."""
        keys = self._store.keys
        if not of:
            return self._read(keys.event(""), limit)
        if with_instances:
            return self._read(keys.app_events(of), limit)
        return [e for e in self._read(keys.events_of(of), limit) if e.object == of]
