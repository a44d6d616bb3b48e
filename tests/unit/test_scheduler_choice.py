"""Which scheduler an agent's session goes to first: picked by its node's name, so a cluster's
nodes spread over its schedulers (node/session.py first_scheduler)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from node.session import Session, first_scheduler
from orch.v1 import agent_pb2 as apb


@pytest.mark.parametrize("schedulers", [2, 3, 5])
def test_a_fleet_spreads_evenly_over_the_schedulers(schedulers):
    counts = Counter(first_scheduler(f"node-{i}", schedulers) for i in range(3000))
    assert set(counts) == set(range(schedulers))
    assert all(abs(n - 3000 / schedulers) < 0.1 * 3000 / schedulers for n in counts.values())


def test_an_agent_starts_where_its_name_points_then_tries_the_others_in_turn():
    """The same node always starts at the same scheduler (after a restart too), and one that
    does not answer sends it to the next in its list."""
    name = "web-7"
    order = ["s0", "s1", "s2"]
    tried: list[str] = []

    async def down(target: str) -> None:
        tried.append(target)
        if len(tried) == 4:
            raise asyncio.CancelledError
        raise ConnectionError("connection refused")

    async def nothing(_: apb.DesiredSet) -> None:
        return None

    session = Session(order, lambda _: apb.Register(node=name), apb.StatusReport, nothing)
    session._session = down  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(session.run())
    start = first_scheduler(name, 3)
    assert start != 0  # this name does not point at the list's first: the test sees the choice
    assert tried == [order[(start + k) % 3] for k in range(4)]
    assert first_scheduler(name, 3) == start


@pytest.mark.parametrize("schedulers", [1, 2, 3])
def test_orch_up_turns_each_agents_list_so_a_few_nodes_spread_round_robin(schedulers):
    """node-0 to node-5 all hash to the first of two schedulers: orch up gives each agent its
    list turned so that the session of node i starts at scheduler i mod n."""
    from cli.up import scheduler_list

    addresses = [f"s{k}:7070" for k in range(schedulers)]
    if schedulers == 2:
        assert {first_scheduler(f"node-{i}", 2) for i in range(6)} == {0}  # why: the hash alone
    for i in range(6):
        turned = scheduler_list(addresses, f"node-{i}", i)
        assert sorted(turned) == addresses  # every scheduler still there, to fail over to
        assert turned[first_scheduler(f"node-{i}", schedulers)] == addresses[i % schedulers]
