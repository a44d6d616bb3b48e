"""How long the scheduler's etcd client stalls when one of three members dies.

    python -m bench.etcd_failover [--runs 5]     (prints a markdown table)

A 3-member etcd on loopback with `orch up`'s timing (heartbeat 50 ms,
election 500 ms). A writer thread commits one revision-checked key after
another through scheduler.store.Store (the retries and member failover of
scheduler/etcd_failover.py). Each run kill -9s the member the client uses,
made the etcd leader or a follower first (etcdctl move-leader), and
measures the stall: from the kill to the end of the first commit that
succeeds after it (every commit in between is retried, none fails). The
member is then restarted on its data and the cluster waits to be healthy.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass, field

from orch.v1 import types_pb2 as pb
from scheduler.errors import SchedulerError
from scheduler.store import Put, Store
from tests.fixtures.etcd import EtcdCluster, Member, start_etcd_cluster


@dataclass
class Writer:
    store: Store
    done: list[float] = field(default_factory=list)  # monotonic end of each successful commit
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        key = self.store.keys.app("bench")
        current = self.store.get(pb.App, key)  # left by an earlier run
        rev = current.mod_revision if current else 0
        while not self.stop.is_set():
            try:
                rev = self.store.commit([Put(key, pb.App(generation=len(self.done)), rev)])
                self.done.append(time.monotonic())
            except SchedulerError as e:  # Conflict after an ambiguous retry would show here too
                self.failures.append(str(e))
                current = self.store.get(pb.App, key)
                rev = current.mod_revision if current else 0


def one_run(cluster: EtcdCluster, role: str) -> tuple[float, int]:
    store = Store(cluster.endpoints, prefix="/bench/")
    writer = Writer(store)
    thread = threading.Thread(target=writer.run, daemon=True)
    try:
        store.get(pb.App, store.keys.app("bench"))  # connects: the client picks a member
        member = next(m for m in cluster.members if m.endpoint == store._failover.member_in_use())
        if role == "leader":
            cluster.move_leader(member)
        elif cluster.leader() is member:
            cluster.move_leader(next(m for m in cluster.members if m is not member))
        thread.start()
        time.sleep(0.5)
        killed = time.monotonic()
        member.kill()
        deadline = killed + 30
        while not [t for t in writer.done if t > killed] and time.monotonic() < deadline:
            time.sleep(0.01)
        stall = min(t for t in writer.done if t > killed) - killed
        writer.stop.set()
        thread.join()
        return stall, len(writer.failures)
    finally:
        writer.stop.set()
        store.close()
        restart(cluster, member)


def restart(cluster: EtcdCluster, member: Member) -> None:
    if member.proc is not None and member.proc.poll() is not None:
        member.start()
    cluster.wait_healthy()
    cluster.leader()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cluster = start_etcd_cluster()
    rows = []
    try:
        for role in ("leader", "follower"):
            samples = [one_run(cluster, role) for _ in range(args.runs)]
            stalls = [s for s, _ in samples]
            rows.append(
                f"| {role} | {args.runs} | {statistics.median(stalls):.2f} | {min(stalls):.2f} | {max(stalls):.2f} "
                f"| {sum(f for _, f in samples)} |"
            )
    finally:
        cluster.stop()
    print("| member killed (the client's) | runs | stall p50 (s) | min | max | failed commits |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
