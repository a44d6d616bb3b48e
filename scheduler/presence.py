"""This scheduler's presence key: `leases/schedulers/<identity>`, on a lease of
the node leases' TTL that the same LeaseKeeper refreshes on every tick.

So the key lapses when this scheduler stops keeping leases alive (killed,
hung, cut off from etcd), at the same moment as the leases of the nodes whose
sessions are here. The leader reads it (liveness.py): a node that lapsed while
its scheduler went away is not the node's fault, and its agent gets the time
to move to another scheduler before anything of it is replaced.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from orch.v1 import types_pb2 as pb
from scheduler.errors import StoreUnavailable
from scheduler.leases import LeaseKeeper
from scheduler.store import Put, Store

log = logging.getLogger(__name__)


class Presence:
    def __init__(self, store: Store, keeper: LeaseKeeper, identity: str, ttl: int) -> None:
        self._store = store
        self._keeper = keeper
        self.identity = identity
        self._ttl = ttl
        self._lease = 0
        self._failing = False

    def _announce(self) -> int:
        """Grant a lease and put the key on it (blocking)."""
        lease, _ = self._store.grant_lease(self._ttl)
        key = self._store.keys.scheduler_presence(self.identity)
        self._store.commit([Put(key, pb.Node(name=self.identity), None, lease)])
        return lease

    def _lapsed(self, lease: int) -> None:
        if lease == self._lease:
            log.warning(
                "presence of %s lapsed (etcd was away or this process stalled); announcing again", self.identity
            )
            self._lease = 0

    def withdraw(self) -> None:
        """On a planned stop: the leader then knows at once that this scheduler's agents are moving."""
        if self._lease:
            try:
                self._store.revoke_lease(self._lease)
            except StoreUnavailable as e:
                log.warning("cannot withdraw %s: %s", self.identity, e)
            self._lease = 0

    async def run(self) -> None:
        while True:
            if not self._lease:
                try:
                    self._lease = await asyncio.to_thread(self._announce)
                    self._failing = False
                except StoreUnavailable as e:  # once per outage: it is retried every tick
                    log.log(
                        logging.DEBUG if self._failing else logging.WARNING, "cannot announce %s: %s", self.identity, e
                    )
                    self._failing = True
            if lease := self._lease:
                self._keeper.mark(lease, functools.partial(self._lapsed, lease))
            await asyncio.sleep(self._keeper.interval)
