"""Events: short-lived records of decisions, attached to a rotating TTL lease
so etcd expires them without a cleanup job."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence

from orch.v1 import types_pb2 as pb
from scheduler.errors import StoreUnavailable
from scheduler.store import Put, Store
from scheduler.timeutil import seconds

EVENT_TTL = 3600  # seconds an event stays
ROTATE_AFTER = 300.0  # a new lease every 5 minutes, so events live 55-60 minutes
log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, store: Store, ttl: int = EVENT_TTL) -> None:
        self._store = store
        self._ttl = ttl
        self._lease = 0
        self._granted_at = 0.0
        self._lock = threading.Lock()

    def _lease_id(self) -> int:
        with self._lock:
            if not self._lease or time.monotonic() - self._granted_at > ROTATE_AFTER:
                self._lease, _ = self._store.grant_lease(self._ttl)
                self._granted_at = time.monotonic()
            return self._lease

    def writes(self, events: Sequence[pb.Event]) -> list[Put]:
        if not events:
            return []
        lease = self._lease_id()
        return [
            Put(
                self._store.keys.event(f"{e.time.ToNanoseconds():020d}-{secrets.token_hex(3)}"),
                e,
                None,
                lease,
            )
            for e in events
        ]

    def record(self, events: Sequence[pb.Event]) -> None:
        """Best effort: the change they describe has already landed."""
        if not events:
            return
        try:
            self._store.commit(self.writes(events))
        except StoreUnavailable as e:
            log.warning("could not record %d events: %s", len(events), e)

    def list(self, limit: int = 0) -> list[pb.Event]:
        events = [v.value for v in self._store.list_prefix(pb.Event, self._store.keys.event(""))]
        events.sort(key=lambda e: seconds(e.time))
        return events[-limit:] if limit > 0 else events
