"""The cluster's address ranges, fixed in etcd by its first scheduler.

Every scheduler carves node subnets out of --cluster-cidr and virtual IPs out of --service-cidr
by itself; two started with different ranges would hand out overlapping or foreign addresses
with no error anywhere. So the first scheduler of a cluster stores its ranges at
<prefix>config/network (create-only), and every later one compares its own flags with them and
refuses to start on a difference, naming both values. Changing a range of a running cluster is
not supported (Kubernetes' --service-cluster-ip-range is as fixed in practice).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from orch.v1 import types_pb2 as pb
from scheduler.errors import Conflict, SchedulerError, StoreUnavailable
from scheduler.store import Put, Store

log = logging.getLogger(__name__)

_FLAGS = (
    ("--cluster-cidr", "cluster_cidr"),
    ("--node-subnet-size", "node_subnet_size"),
    ("--service-cidr", "service_cidr"),
)


class NetworkMismatch(SchedulerError):
    def __init__(self, key: str, differences: list[str]) -> None:
        super().__init__(
            f"{'; '.join(differences)}: every scheduler of a cluster must use its ranges "
            f"(stored at {key} by its first scheduler); start this one with the cluster's values"
        )
        self.differences = differences


def differences(stored: pb.ClusterNetwork, wanted: pb.ClusterNetwork) -> list[str]:
    """Each flag whose value differs from the cluster's, as 'FLAG OURS (the cluster's is THEIRS)'."""
    out = []
    for flag, field in _FLAGS:
        theirs, ours = getattr(stored, field), getattr(wanted, field)
        if theirs != ours:
            out.append(f"{flag} {ours} differs from the cluster's {theirs}")
    return out


def settle(
    store: Store, wanted: pb.ClusterNetwork, retry_every: float = 2.0, sleep: Callable[[float], None] = time.sleep
) -> pb.ClusterNetwork:
    """The cluster's ranges: wanted, stored now if the cluster has none yet. NetworkMismatch if
    they differ from wanted. While etcd cannot be reached, says so in the log and waits (a
    scheduler may start before its etcd, as under systemd). Blocking."""
    key = store.keys.network()
    while True:
        try:
            got = store.get(pb.ClusterNetwork, key)
            if got is None:
                try:
                    store.commit([Put(key, wanted, 0)])
                    return wanted
                except Conflict:
                    continue  # another scheduler stored its own first: compare with those
            if found := differences(got.value, wanted):
                raise NetworkMismatch(key, found)
            return got.value
        except StoreUnavailable as e:
            log.warning("cannot reach etcd yet, retrying in %.0f s: %s", retry_every, e)
            sleep(retry_every)
