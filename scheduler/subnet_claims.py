"""Node subnets in etcd: the claims under <prefix>subnets/ that make an assignment unique.

A claim is written in the same transaction as the node record that carries the subnet,
create-only (expected revision 0): two schedulers that pick one subnet for two nodes at
once cannot both commit, and the loser re-reads and picks again. Deleting a node deletes
its claim with it, which frees the subnet (scheduler/subnets.py decides who gets what).
"""

from __future__ import annotations

import random

from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.errors import Refused
from scheduler.store import Delete, Put, Store, Write
from scheduler.subnets import HostNetwork, Refusal, SubnetPool, assign


class SubnetClaims:
    def __init__(self, store: Store, pool: SubnetPool) -> None:
        self._store = store
        self.pool = pool

    def claim(self, reg: apb.Register, recorded: str, attempt: int = 0) -> tuple[str, list[Write]]:
        """The registering node's subnet and the writes that claim it (none if it holds it
        already); Refused if it gets none. attempt: how many races for a claim this registration
        lost (then it picks among the lowest few free subnets, so that nodes joining together
        stop colliding). Blocking."""
        claims = self._store.list_prefix(pb.Node, self._store.keys.subnets())
        nets = [HostNetwork(n.cidr, n.source) for n in reg.host_networks]
        pick = random.randrange(attempt + 1)
        held = {c.value.subnet: c.value.name for c in claims}
        got = assign(self.pool, reg.node, held, recorded, reg.subnet, nets, pick)
        if isinstance(got, Refusal):
            raise Refused(got.reason, got.message)
        writes: list[Write] = []
        mine = [c for c in claims if c.value.name == reg.node]
        if not any(c.value.subnet == got for c in mine):
            writes.append(Put(self._store.keys.subnet(got), pb.Node(name=reg.node, subnet=got), 0))
        writes += [
            Delete(self._store.keys.subnet(c.value.subnet), c.mod_revision) for c in mine if c.value.subnet != got
        ]
        return got, writes

    def release(self, node: str) -> list[Write]:
        """The writes that free every subnet node holds. Blocking."""
        claims = self._store.list_prefix(pb.Node, self._store.keys.subnets())
        return [Delete(self._store.keys.subnet(c.value.subnet), c.mod_revision) for c in claims if c.value.name == node]
