"""Whether this scheduler can talk to etcd, and when it could again after an outage.

Node leases lapse when the scheduler cannot refresh them, whatever the agents
do: after etcd was stopped, unreachable or slow for longer than `stall` (half
a lease), the leases may be gone through no fault of the nodes. The
reconciler then gives agents a grace to re-register before it evicts
anything (liveness.py). Fed by the store's retry loop (every attempt) and the
lease keeper (keep-alives answered or not); read by the reconciler loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Contact:
    def __init__(self, stall: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self.stall = stall
        self._clock = clock
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self.back_at = 0.0  # when etcd answered again after an outage (unix seconds); 0: none yet
        self.outage = 0.0  # how long the last one lasted

    def failed(self, ago: float = 0.0) -> None:
        """A call failed, or a request has been unanswered for `ago` seconds."""
        with self._lock:
            since = self._clock() - ago
            if self._failing_since is None or since < self._failing_since:
                self._failing_since = since

    def ok(self) -> None:
        """etcd answered."""
        if self._failing_since is None:  # the common case, without the lock
            return
        with self._lock:
            if self._failing_since is None:
                return
            now = self._clock()
            if now - self._failing_since >= self.stall:
                self.back_at = now
                self.outage = now - self._failing_since
            self._failing_since = None

    def down_for(self) -> float:
        """How long etcd has not been answering (0 while it does)."""
        since = self._failing_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    def in_outage(self) -> bool:
        return self.down_for() >= self.stall
