"""The leader compacts etcd to the revision it read one interval before."""

from __future__ import annotations

from scheduler.compaction import Compactor
from scheduler.errors import StoreUnavailable


class Recorder:
    def __init__(self) -> None:
        self.compacted: list[int] = []
        self.fail = False

    def compact(self, revision: int) -> None:
        if self.fail:
            raise StoreUnavailable("compact", "etcd is away")
        self.compacted.append(revision)


def test_compacts_to_the_mark_of_the_interval_before() -> None:
    now = [0.0]
    store = Recorder()
    c = Compactor(store, every=300, clock=lambda: now[0])  # type: ignore[arg-type]
    assert not c.due() and c.after_pass(10) == 0
    now[0] = 300
    assert c.after_pass(100) == 0  # the first mark: nothing is older than an interval yet
    now[0] = 450
    assert c.after_pass(150) == 0 and not c.due()
    now[0] = 600
    assert c.after_pass(200) == 100  # what was read an interval ago; the last 300 s stay
    now[0] = 900
    assert c.after_pass(300) == 200
    assert store.compacted == [100, 200]


def test_a_failed_compaction_waits_for_the_next_interval() -> None:
    now = [300.0]
    store = Recorder()
    c = Compactor(store, every=300, clock=lambda: now[0])  # type: ignore[arg-type]
    c.after_pass(100)
    store.fail, now[0] = True, 600
    assert c.after_pass(200) == 0
    store.fail, now[0] = False, 900
    assert c.after_pass(300) == 200 and store.compacted == [200]
