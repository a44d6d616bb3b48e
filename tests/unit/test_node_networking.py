"""The node's side of the cluster network without root: NAT rules (masquerade.py), what the
host reports for the overlap check (hostnets.py), the recorded subnet (cluster.py), the node
IP, and the scheduler's routes table (cache.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from node.network.cluster import ClusterNetwork, ClusterNetworkConfig, Recorded
from node.network.errors import ConfigError, NetworkError
from node.network.hostnets import PODMAN_DEFAULT, HostNet, host_routes, podman_networks
from node.network.masquerade import Masquerade, chain_names, rules
from node.network.routes import ORCH_PROTO
from node.networking import Networking, node_ip_for
from node.session import RegistrationFailed
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.cache import ROUTES, ClusterCache
from scheduler.store import WatchEvent


def test_the_nat_rules_masquerade_only_what_leaves_the_cluster_and_hairpins() -> None:
    text = rules("orch0", "10.88.1.0/24", "10.88.0.0/16")
    assert text.splitlines() == [
        "*nat",
        ":ORCH-MASQ-orch0 - [0:0]",
        '-A ORCH-MASQ-orch0 -s 10.88.1.0/24 -d 10.88.1.0/24 -m conntrack --ctstate DNAT -m comment --comment "hairpin"'
        " -j MASQUERADE",
        "-A ORCH-MASQ-orch0 -s 10.88.1.0/24 -d 10.88.0.0/16 -j RETURN",
        "-A ORCH-MASQ-orch0 -s 10.88.1.0/24 -d 224.0.0.0/4 -j RETURN",
        '-A ORCH-MASQ-orch0 -s 10.88.1.0/24 -m comment --comment "leaving the cluster" -j MASQUERADE',
        "COMMIT",
        "*filter",
        ":ORCH-FWD-orch0 - [0:0]",
        "-A ORCH-FWD-orch0 -i orch0 -j ACCEPT",
        "-A ORCH-FWD-orch0 -o orch0 -j ACCEPT",
        "COMMIT",
    ]
    assert all(len(c) <= 28 for c in chain_names("a-15-char-name!"))  # iptables' limit


class FakeIptables:
    """Jumps and chains as iptables keeps them; records every call."""

    def __init__(self) -> None:
        self.jumps: list[tuple[str, tuple[str, ...]]] = []
        self.chains: set[tuple[str, str]] = set()
        self.calls: list[str] = []

    def __call__(self, argv: Sequence[str], stdin: str) -> None:
        self.calls.append(" ".join(argv))
        if argv[0] == "iptables-restore":
            table = ""
            for line in stdin.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith(":"):
                    self.chains.add((table, line[1:].split()[0]))
            return
        table, op, rest = argv[3], argv[4], tuple(argv[5:])
        if op == "-C" and (table, rest) not in self.jumps:
            raise NetworkError("no such rule")
        if op == "-A":
            self.jumps.append((table, rest))
        if op == "-D":
            self.jumps.remove((table, rest))
        if op == "-S" and (table, rest[0]) not in self.chains:
            raise NetworkError("no chain")
        if op == "-X":
            self.chains.discard((table, rest[0]))


def test_nat_is_ensured_idempotently_and_torn_down_whole() -> None:
    ipt = FakeIptables()
    masq = Masquerade("orch0", run=ipt)
    masq.ensure("10.88.1.0/24", "10.88.0.0/16")
    masq.ensure("10.88.1.0/24", "10.88.0.0/16")  # an agent start: heals, adds no second jump
    jumps = [("nat", ("POSTROUTING", "-j", "ORCH-MASQ-orch0")), ("filter", ("FORWARD", "-j", "ORCH-FWD-orch0"))]
    assert ipt.jumps == jumps
    assert ipt.chains == {("nat", "ORCH-MASQ-orch0"), ("filter", "ORCH-FWD-orch0")}
    ipt.jumps.append(ipt.jumps[0])  # a copy someone added
    masq.teardown()
    assert ipt.jumps == [] and ipt.chains == set()
    masq.teardown()  # gone already: fine


class FakeIpr:
    def __init__(self, routes: list[tuple[str, int, int, str]]) -> None:
        self.routes = routes  # (dst, dst_len, proto, dev)

    def get_links(self) -> list[Any]:
        return [Msg({"index": i}, {"IFLA_IFNAME": d}) for i, d in enumerate(["lo", "eth0", "orch0", "podman0"])]

    def route(self, op: str, **kw: Any) -> list[Any]:
        devs = ["lo", "eth0", "orch0", "podman0"]
        return [
            Msg({"dst_len": n, "proto": p}, {"RTA_DST": d if n else None, "RTA_OIF": devs.index(dev)})
            for d, n, p, dev in self.routes
        ]


class Msg:
    def __init__(self, fields: dict[str, Any], attrs: dict[str, Any]) -> None:
        self.fields, self.attrs = fields, attrs

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get_attr(self, name: str) -> Any:
        return self.attrs.get(name)


def test_the_host_reports_its_routes_but_orchs_own() -> None:
    ipr = FakeIpr(
        [
            ("0.0.0.0", 0, 3, "eth0"),  # default: never a conflict
            ("192.0.2.0", 24, 2, "eth0"),
            ("10.88.0.0", 16, 2, "podman0"),
            ("10.88.1.0", 24, 2, "orch0"),  # this node's bridge
            ("10.88.2.0", 24, ORCH_PROTO, "eth0"),  # a host-gw route of ours
        ]
    )
    assert host_routes(ipr, "orch0") == [
        HostNet("192.0.2.0/24", "route dev eth0"),
        HostNet("10.88.0.0/16", "route dev podman0"),
    ]


def test_podmans_networks_count_where_podman_is_installed(tmp_path: Path) -> None:
    assert podman_networks(which=lambda _: None, config=tmp_path) == []
    installed = podman_networks(which=lambda _: "/usr/bin/podman", config=tmp_path / "none")
    assert installed == [HostNet(PODMAN_DEFAULT, "Podman network podman")]
    (tmp_path / "web.json").write_text(json.dumps({"name": "web", "subnets": [{"subnet": "10.89.0.0/24"}]}))
    (tmp_path / "v6.json").write_text(json.dumps({"name": "v6", "subnets": [{"subnet": "fd00::/64"}]}))
    (tmp_path / "broken.json").write_text("{")
    assert podman_networks(which=lambda _: "/usr/bin/podman", config=tmp_path) == [
        HostNet("10.89.0.0/24", "Podman network web"),
        HostNet(PODMAN_DEFAULT, "Podman network podman"),
    ]


def test_a_recorded_subnet_is_asked_for_again_and_a_contradicting_one_refused(tmp_path: Path) -> None:
    podnet = ClusterNetwork(ClusterNetworkConfig("orch0", tmp_path))
    assert podnet.requested_subnet() == ""  # a new node: the scheduler picks
    (tmp_path / "network.json").write_text(json.dumps({"subnet": "10.88.4.0/24", "clusterCidr": "10.88.0.0/16"}))
    assert podnet.requested_subnet() == "10.88.4.0/24"  # its containers use it
    same = ClusterNetwork(ClusterNetworkConfig("orch0", tmp_path, subnet="10.88.4.0/24"))
    assert same.requested_subnet() == "10.88.4.0/24"
    other = ClusterNetwork(ClusterNetworkConfig("orch0", tmp_path, subnet="10.88.9.0/24"))
    with pytest.raises(ConfigError, match=r"--subnet 10.88.9.0/24: this node's containers use 10.88.4.0/24.*--cleanup"):
        other.requested_subnet()


@pytest.mark.parametrize(
    ("explicit", "listen", "want"),
    [
        ("192.0.2.50", "192.0.2.11:7071", "192.0.2.50"),
        ("", "192.0.2.11:7071", "192.0.2.11"),
        ("", "127.0.0.1:40000", "127.0.0.1"),  # orch up --nodes: local, and so never routed to
        ("", "0.0.0.0:7071", "127.0.0.1"),  # the address towards the scheduler (on loopback here)
    ],
)
def test_the_node_ip(explicit: str, listen: str, want: str) -> None:
    assert node_ip_for(explicit, listen, "127.0.0.1:7070") == want


def node_event(name: str, node: pb.Node | None, rev: int) -> WatchEvent:
    return WatchEvent(f"nodes/{name}", node.SerializeToString() if node else None, rev)


def test_the_routes_table_changes_only_with_a_subnet_or_node_ip() -> None:
    cache = ClusterCache(store=None)  # type: ignore[arg-type]
    heard: list[set[str]] = []
    cache.subscribe(heard.append)
    cache._apply([node_event("m1", pb.Node(name="m1", subnet="10.88.0.0/24", node_ip="192.0.2.11"), 5)], 5)
    assert cache.routes_version == 1 and ROUTES in heard[-1]
    assert [(r.node, r.subnet, r.node_ip) for r in cache.routes().nodes] == [("m1", "10.88.0.0/24", "192.0.2.11")]
    first = cache.routes()
    cordoned = pb.Node(name="m1", subnet="10.88.0.0/24", node_ip="192.0.2.11", unschedulable=True)
    cache._apply([node_event("m1", cordoned, 6), node_event("m2", pb.Node(name="m2"), 6)], 6)  # m2: no network
    assert cache.routes_version == 1 and ROUTES not in heard[-1] and cache.routes() is first
    cache._apply([node_event("m2", pb.Node(name="m2", subnet="10.88.1.0/24", node_ip="192.0.2.12"), 7)], 7)
    cache._apply([node_event("m1", None, 8)], 8)  # m1 deleted
    assert cache.routes_version == 3 and ROUTES in heard[-1]
    assert [r.node for r in cache.routes().nodes] == ["m2"]


class FakePodnet:
    """ClusterNetwork's surface as node/networking.py uses it, recording the calls."""

    def __init__(self, recorded: Recorded | None = None) -> None:
        self._recorded = recorded
        self.calls: list[tuple[str, object]] = []
        self.masquerade = self

    def requested_subnet(self) -> str:
        return self._recorded.subnet if self._recorded else ""

    def recorded(self) -> Recorded | None:
        return self._recorded

    def host_networks(self) -> list[HostNet]:
        return [HostNet("192.0.2.0/24", "route dev eth0")]

    def configure(self, subnet: str, cidr: str) -> Any:
        self.calls.append(("configure", subnet))
        self._recorded = Recorded(subnet, cidr)
        bridge = {"ensure_bridge": lambda _: self.calls.append(("bridge and hostports", subnet))}
        return type("Net", (), {"config": type("Cfg", (), {"subnet": subnet})(), **bridge})()

    def ensure(self, subnet: str, cidr: str) -> None:
        self.calls.append(("nat", subnet))

    def sync_routes(self, nodes: list[Any]) -> list[str]:
        self.calls.append(("routes", tuple(n.node for n in nodes)))
        return []


def test_the_agent_sets_its_network_up_from_registered_before_routes_and_heals_at_start() -> None:
    async def scenario() -> None:
        handed: list[Any] = []
        podnet = FakePodnet()
        net = Networking(podnet, lambda: "192.0.2.12", handed.append)  # type: ignore[arg-type]
        await net.start()
        assert podnet.calls == [] and not net.ready.is_set()  # a new node: nothing until the scheduler answers
        reg = net.register_fields()
        assert (reg.container_network, reg.subnet, reg.node_ip) == (True, "", "192.0.2.12")
        assert [(n.cidr, n.source) for n in reg.host_networks] == [("192.0.2.0/24", "route dev eth0")]
        runner = asyncio.create_task(net.run())
        await net.on_registered(apb.Registered(subnet="10.88.1.0/24", cluster_cidr="10.88.0.0/16"))
        assert net.ready.is_set() and len(handed) == 1 and handed[0].config.subnet == "10.88.1.0/24"
        net.on_routes(apb.Routes(nodes=[apb.NodeRoute(node="m1", subnet="10.88.0.0/24", node_ip="192.0.2.11")]))
        await asyncio.sleep(0.05)
        assert podnet.calls == [("configure", "10.88.1.0/24"), ("routes", ("m1",))]
        runner.cancel()
        # The agent again: its recorded network comes back at once, and it asks for that subnet.
        again = FakePodnet(Recorded("10.88.1.0/24", "10.88.0.0/16"))
        net2 = Networking(again, lambda: "192.0.2.12", handed.append)  # type: ignore[arg-type]
        await net2.start()
        assert again.calls == [("configure", "10.88.1.0/24")] and net2.ready.is_set()
        assert net2.register_fields().subnet == "10.88.1.0/24"
        # The scheduler confirms it: set up already, so the desired set is not kept waiting for a second set-up.
        await net2.on_registered(apb.Registered(subnet="10.88.1.0/24", cluster_cidr="10.88.0.0/16"))
        assert again.calls == [("configure", "10.88.1.0/24")]
        await net2.on_registered(apb.Registered(subnet="10.88.1.0/24", cluster_cidr="10.88.0.0/15"))  # the CIDR grew
        assert again.calls == [("configure", "10.88.1.0/24")] * 2
        # Every RESYNC: the NAT, then the bridge and the hostPort rules as recorded (a chain
        # flushed or a bridge deleted by hand comes back without a set-up at registration).
        await net2._sync(periodic=True)
        assert again.calls[2:] == [("nat", "10.88.1.0/24"), ("bridge and hostports", "10.88.1.0/24")]

    asyncio.run(scenario())


class FailingPodnet(FakePodnet):
    """configure fails `failures` times (the bridge could not be made, iptables refused), then works."""

    def __init__(self, failures: int, recorded: Recorded | None = None) -> None:
        super().__init__(recorded)
        self.failures = failures

    def configure(self, subnet: str, cidr: str) -> Any:
        if self.failures:
            self.failures -= 1
            self.calls.append(("configure failed", subnet))
            raise NetworkError(f"bridge orch0: {subnet}: Device or resource busy")
        return super().configure(subnet, cidr)


def test_a_network_that_cannot_be_set_up_fails_the_registration_not_the_agent() -> None:
    """At start (the recorded network) and at a registration alike: the agent says why and the
    next registration tries again; no desired set is taken meanwhile (the session ends)."""

    async def scenario() -> None:
        handed: list[Any] = []
        podnet = FailingPodnet(failures=2, recorded=Recorded("10.88.1.0/24", "10.88.0.0/16"))
        net = Networking(podnet, lambda: "192.0.2.12", handed.append)  # type: ignore[arg-type]
        await net.start()  # logged, not raised: the agent goes on to register
        assert not net.ready.is_set() and handed == []
        registered = apb.Registered(subnet="10.88.1.0/24", cluster_cidr="10.88.0.0/16")
        with pytest.raises(RegistrationFailed, match=r"10\.88\.1\.0/24 cannot be set up: bridge orch0"):
            await net.on_registered(registered)
        assert not net.ready.is_set() and handed == []
        await net.on_registered(registered)  # the next registration: set up now
        assert net.ready.is_set() and [h.config.subnet for h in handed] == ["10.88.1.0/24"]
        assert [c[0] for c in podnet.calls] == ["configure failed", "configure failed", "configure"]

    asyncio.run(scenario())


def test_orch_up_refuses_a_cidr_this_machine_uses_before_starting_anything(tmp_path: Path, monkeypatch) -> None:
    from cli import up
    from cli.client import CliError

    cluster = up.Cluster(tmp_path, 2, [0], 1, "10.88.0.0/16")
    monkeypatch.setattr(up, "machine_networks", lambda: [HostNet("10.88.0.0/16", "Podman network podman")])
    with pytest.raises(CliError, match=r"--cidr 10.88.0.0/16 overlaps 10.88.0.0/16 \(Podman network podman\)"):
        cluster.check_cidr()
    own = [HostNet("10.88.0.0/24", f"route dev {cluster.bridge(0)}"), HostNet("192.0.2.0/24", "route dev eth0")]
    monkeypatch.setattr(up, "machine_networks", lambda: own)
    cluster.check_cidr()  # its own bridge, left from an earlier run, is reused: fine
    lab = up.Cluster(tmp_path / "lab", 3, [0], 1, "10.88.0.0/16", hosts=3)
    assert str(lab.cluster_cidr) == "10.88.0.0/17" and str(lab.lab.network) == "10.88.255.0/24"  # type: ignore[union-attr]
