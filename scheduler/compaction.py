"""etcd keeps every revision of every key until it is compacted: with status
writes several times a second, history outgrows the data within hours. The
leader compacts, as kube-apiserver does, to the revision it read one interval
ago: a watcher (another scheduler's cache) that is less than an interval
behind can still resume, and history never grows beyond one interval."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from scheduler.errors import StoreUnavailable
from scheduler.store import Store

log = logging.getLogger(__name__)

COMPACT_EVERY = 300.0  # s, kube-apiserver's default --etcd-compaction-interval


class Compactor:
    def __init__(self, store: Store, every: float = COMPACT_EVERY, clock: Callable[[], float] = time.monotonic):
        self._store = store
        self._every = every
        self._clock = clock
        self._mark = 0  # the revision read at the start of this interval
        self._due = clock() + every

    def due(self) -> bool:
        return self._clock() >= self._due

    def after_pass(self, revision: int) -> int:
        """After a pass that read `revision`: at the end of an interval, compacts to the mark
        and takes `revision` as the next. Returns the revision compacted to, or 0. Blocking."""
        now = self._clock()
        if now < self._due:
            return 0
        mark, self._mark, self._due = self._mark, revision, now + self._every
        if not mark:
            return 0
        try:
            self._store.compact(mark)
        except StoreUnavailable as e:  # best effort: the next interval tries a later mark
            log.warning("could not compact etcd to revision %d: %s", mark, e)
            return 0
        log.info("compacted etcd's history to revision %d", mark)
        return mark
