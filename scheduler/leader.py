"""Leader election through an etcd lease: whoever creates the `leader` key
(attached to its own lease) runs the reconciler until the lease is lost.
Followers retry; a dead leader's key expires with its lease (one TTL).

`is_leader()` is this process's belief; `fence()` turns it into a compare
etcd checks in every reconciler transaction, so a pass that outlives the
lease (a long pause, a partition) commits nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from orch.v1 import types_pb2 as pb
from scheduler.errors import Conflict, StoreUnavailable
from scheduler.store import Fence, Put, Store

log = logging.getLogger(__name__)


class LeaderElection:
    def __init__(self, store: Store, identity: str, ttl: int = 2) -> None:
        self._store = store
        self.identity = identity
        self._ttl = ttl
        self._lease = 0
        self._fence: Fence | None = None
        self._valid_until = 0.0
        self.changed = asyncio.Event()
        # Its own thread: a leader whose refresh waits behind busy work loses the lease.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leader")

    def is_leader(self) -> bool:
        # Leadership is only trusted until the lease could have expired.
        return bool(self._lease) and time.monotonic() < self._valid_until

    def fence(self) -> Fence | None:
        """The leader key as we created it, while we believe we lead."""
        return self._fence if self.is_leader() else None

    def _campaign(self) -> bool:
        # While another scheduler leads: one read, nothing written. Granting a lease, losing the
        # put and revoking the lease were three etcd proposals (three WAL syncs) a second for each
        # follower, most of an idle cluster's etcd work, and on a starved machine CPU the agents
        # needed to start. The put below still decides a race between two campaigns.
        key = self._store.keys.leader()
        if self._store.get(pb.Node, key) is not None:
            return False
        lease, _ = self._store.grant_lease(self._ttl)
        marker = pb.Node(name=self.identity)  # the value only names the holder
        try:
            revision = self._store.commit([Put(key, marker, 0, lease)])
        except Conflict:
            self._store.revoke_lease(lease)
            return False
        self._fence = Fence(key, revision, self.identity)  # created by this transaction
        self._lease = lease
        return True

    def _check(self) -> str:
        """Refresh our lease; why we no longer lead, or "" while we do."""
        if self._store.refresh_lease(self._lease) <= 0:
            return "lease expired"
        current = self._store.get(pb.Node, self._store.keys.leader())
        # Nobody updates the leader key: while it is ours, its mod_revision is its create_revision.
        if self._fence is None or current is None or current.mod_revision != self._fence.create_revision:
            return "the leader key was deleted or re-created"
        return ""

    async def run(self) -> None:
        interval = self._ttl / 3
        loop = asyncio.get_running_loop()
        while True:
            started = time.monotonic()
            try:
                if self._lease:
                    lost = await loop.run_in_executor(self._executor, self._check)
                    if lost:
                        log.warning("%s: lost leadership (%s)", self.identity, lost)
                        self._lease = 0
                        self._fence = None
                        self.changed.set()
                elif await loop.run_in_executor(self._executor, self._campaign):
                    log.info("%s: became leader", self.identity)
                    self.changed.set()
                if self._lease:
                    self._valid_until = started + self._ttl
            except StoreUnavailable as e:
                log.warning("leader election: %s", e)
            await asyncio.sleep(interval)
