"""node/network/routes.py: host-gw routes to the other nodes' subnets, synced level-triggered
(pure parts, and the netlink calls against a fake routing table)."""

from __future__ import annotations

import errno
from typing import Any

from node.network import routes as rt
from node.network.pyroute import NetlinkError
from node.network.routes import ORCH_PROTO, NodeRoute

ME = "10.88.0.0/24"
LOCAL = {"127.0.0.1", "192.0.2.11", "10.88.0.1"}


def nodes(*names: str) -> list[NodeRoute]:
    table = {
        "m1": NodeRoute("m1", "10.88.0.0/24", "192.0.2.11"),
        "m2": NodeRoute("m2", "10.88.1.0/24", "192.0.2.12"),
        "m3": NodeRoute("m3", "10.88.2.0/24", "192.0.2.13"),
        "m4": NodeRoute("m4", "10.88.3.0/24", "192.0.2.14"),
    }
    return [table[n] for n in names]


class FakeRoutes:
    """The kernel's main table, as far as orch's routes go; other routes are someone else's."""

    def __init__(self, others: dict[str, str] | None = None, unreachable: set[str] | None = None) -> None:
        self.table: dict[str, tuple[str, int]] = {dst: (gw, 4) for dst, gw in (others or {}).items()}
        self.unreachable = unreachable or set()
        self.calls: list[tuple[str, str]] = []

    def route(self, op: str, **kw: Any) -> list[Any]:
        if op == "dump":
            assert kw["proto"] == ORCH_PROTO and kw["table"] == 254
            return [FakeMsg(dst, gw) for dst, (gw, proto) in self.table.items() if proto == kw["proto"]]
        self.calls.append((op, kw["dst"]))
        assert kw["proto"] == ORCH_PROTO  # orch only ever writes and deletes its own
        if op in ("add", "replace"):
            if kw["gateway"] in self.unreachable:
                raise NetlinkError(errno.ENETUNREACH, "Network is unreachable")
            if op == "add" and kw["dst"] in self.table:
                raise NetlinkError(errno.EEXIST, "File exists")
            self.table[kw["dst"]] = (kw["gateway"], kw["proto"])
        elif op == "del":
            if self.table.get(kw["dst"], ("", 0))[1] != kw["proto"]:
                raise NetlinkError(errno.ESRCH, "No such process")
            del self.table[kw["dst"]]
        return []

    def ours(self) -> dict[str, str]:
        return {dst: gw for dst, (gw, proto) in self.table.items() if proto == ORCH_PROTO}


class FakeMsg:
    def __init__(self, dst: str, gw: str) -> None:
        self.dst, self.gw = dst.split("/")[0], gw
        self.len = int(dst.split("/")[1])

    def __getitem__(self, key: str) -> int:
        assert key == "dst_len"
        return self.len

    def get_attr(self, name: str) -> str:
        return {"RTA_DST": self.dst, "RTA_GATEWAY": self.gw}[name]


def sync(ipr: FakeRoutes, table: list[NodeRoute]) -> list[str]:
    want, _ = rt.desired(table, ME, LOCAL)
    return rt.apply(ipr, rt.plan(want, rt.actual(ipr)))


def test_routes_follow_the_nodes_as_they_come_and_go() -> None:
    ipr = FakeRoutes()
    assert sync(ipr, nodes("m1", "m2")) == []
    assert ipr.ours() == {"10.88.1.0/24": "192.0.2.12"}  # not to itself
    sync(ipr, nodes("m1", "m2", "m3", "m4"))
    assert ipr.ours() == {"10.88.1.0/24": "192.0.2.12", "10.88.2.0/24": "192.0.2.13", "10.88.3.0/24": "192.0.2.14"}
    ipr.calls.clear()
    sync(ipr, nodes("m1", "m2", "m4"))  # m3 was deleted
    assert ipr.ours() == {"10.88.1.0/24": "192.0.2.12", "10.88.3.0/24": "192.0.2.14"}
    assert ipr.calls == [("del", "10.88.2.0/24")]  # nothing else touched
    ipr.calls.clear()
    assert sync(ipr, nodes("m1", "m2", "m4")) == [] and ipr.calls == []  # converged: no writes


def test_a_node_that_moved_gets_its_route_replaced() -> None:
    ipr = FakeRoutes()
    sync(ipr, nodes("m2"))
    sync(ipr, [NodeRoute("m2", "10.88.1.0/24", "192.0.2.99")])
    assert ipr.ours() == {"10.88.1.0/24": "192.0.2.99"}
    assert ipr.calls == [("add", "10.88.1.0/24"), ("replace", "10.88.1.0/24")]


def test_a_route_orch_did_not_make_is_left_alone_and_reported() -> None:
    ipr = FakeRoutes(others={"10.88.1.0/24": "192.0.2.1"})  # an admin's static route to m2's subnet
    problems = sync(ipr, nodes("m2", "m3"))
    assert ipr.table["10.88.1.0/24"] == ("192.0.2.1", 4) and ipr.ours() == {"10.88.2.0/24": "192.0.2.13"}
    assert len(problems) == 1 and "a route there that orch did not make" in problems[0]


def test_a_route_deleted_by_hand_comes_back_and_others_routes_are_never_touched() -> None:
    ipr = FakeRoutes(others={"10.88.7.0/24": "192.0.2.1", "198.51.100.0/24": "192.0.2.1"})
    sync(ipr, nodes("m2", "m3"))
    del ipr.table["10.88.2.0/24"]  # ip route del by someone
    sync(ipr, nodes("m2", "m3"))
    assert ipr.ours() == {"10.88.1.0/24": "192.0.2.12", "10.88.2.0/24": "192.0.2.13"}
    sync(ipr, [])  # every node gone
    assert ipr.ours() == {}
    assert ipr.table == {"10.88.7.0/24": ("192.0.2.1", 4), "198.51.100.0/24": ("192.0.2.1", 4)}


def test_an_unreachable_gateway_is_reported_and_the_rest_still_installed() -> None:
    ipr = FakeRoutes(unreachable={"192.0.2.13"})
    problems = sync(ipr, nodes("m2", "m3", "m4"))
    assert ipr.ours() == {"10.88.1.0/24": "192.0.2.12", "10.88.3.0/24": "192.0.2.14"}
    assert len(problems) == 1 and problems[0].startswith("route 10.88.2.0/24 via 192.0.2.13")
    assert "one L2 segment" in problems[0]


def test_nodes_in_this_network_namespace_and_unusable_addresses_are_skipped() -> None:
    table = [
        NodeRoute("node-1", "10.88.1.0/24", "127.0.0.1"),  # orch up --nodes: all in one namespace
        NodeRoute("odd", "10.88.5.0/24", "127.0.0.2"),  # loopback, but not ours: a misconfiguration
        NodeRoute("none", "10.88.6.0/24", ""),
        NodeRoute("m3", "10.88.2.0/24", "192.0.2.13"),
    ]
    want, skipped = rt.desired(table, ME, LOCAL)
    assert want == {"10.88.2.0/24": "192.0.2.13"}
    assert [(s.node, "--node-ip" in s.why or "not an IPv4 route" in s.why) for s in skipped] == [
        ("odd", True),
        ("none", True),
    ]


def test_plan_is_a_pure_diff() -> None:
    todo = rt.plan({"a": "1", "b": "2", "d": "5"}, {"b": "3", "c": "4", "d": "5"})
    assert (todo.add, todo.change, todo.delete) == ({"a": "1"}, {"b": "2"}, ["c"])
