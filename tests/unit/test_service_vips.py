"""Service VIPs: allocation by the scheduler (pure), the rules each agent renders (pure) and
how it applies them (a recording runner), and the endpoints the scheduler sends."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import pytest

from node.discovery import virtual_services
from node.dns.resolvconf import HostResolver, container_resolv_conf, parse_resolv_conf
from node.network.errors import ConfigError, NetworkError
from node.network.services import ServiceChains, ServiceProxy, VirtualService, route_metric, service_rules
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.endpoints import endpoints_of
from scheduler.services import (
    ServiceCidrError,
    allocate,
    parse_service_cidr,
    release_writes,
    service_ip_writes,
)
from scheduler.store import Delete, Keys, Put
from tests.factories import make_app, make_instance, make_spec

NET = ipaddress.IPv4Network("10.96.0.0/29")  # .1 - .6 usable
KEYS = Keys("/orch/")

# -- allocation ------------------------------------------------------------------------------


def test_allocate_takes_the_lowest_free_host_address():
    assert allocate(NET, []) == "10.96.0.1"
    assert allocate(NET, ["10.96.0.1", "10.96.0.3"]) == "10.96.0.2"
    assert allocate(NET, [f"10.96.0.{i}" for i in range(1, 7)]) is None  # never .0 or .7


def with_service(name: str = "web", port: int = 80) -> pb.App:
    return make_app(make_spec(name, service=pb.ServicePort(port=port, target_port=8080, protocol="tcp")))


def test_a_new_service_gets_an_address_reserved_in_the_same_transaction():
    app = with_service()
    writes = service_ip_writes(KEYS, None, app, NET, used={"10.96.0.1"})
    assert app.service_ip == "10.96.0.2"
    assert writes == [Put("/orch/serviceips/10.96.0.2", pb.ServiceIp(app="web", ip="10.96.0.2"), 0)]  # must not exist


def test_reapplying_or_changing_the_port_keeps_the_address():
    before = with_service()
    before.service_ip = "10.96.0.5"
    after = with_service(port=81)
    assert service_ip_writes(KEYS, before, after, NET, used={"10.96.0.5"}) == []
    assert after.service_ip == "10.96.0.5"


def test_dropping_the_service_frees_the_address_and_deleting_the_app_too():
    before = with_service()
    before.service_ip = "10.96.0.5"
    after = make_app(make_spec("web"))
    after.service_ip = "10.96.0.5"  # copied from the stored app
    assert service_ip_writes(KEYS, before, after, NET, used=set()) == [Delete("/orch/serviceips/10.96.0.5", None)]
    assert after.service_ip == ""
    assert release_writes(KEYS, before) == [Delete("/orch/serviceips/10.96.0.5", None)]
    assert release_writes(KEYS, make_app(make_spec("plain"))) == []


def test_an_address_outside_a_changed_cidr_moves():
    before = with_service()
    before.service_ip = "10.97.0.1"
    after = with_service()
    writes = service_ip_writes(KEYS, before, after, NET, used=set())
    assert after.service_ip == "10.96.0.1"
    assert Delete("/orch/serviceips/10.97.0.1", None) in writes


def test_a_full_cidr_is_an_error_naming_the_app():
    with pytest.raises(ServiceCidrError, match=r"full.*app web"):
        service_ip_writes(KEYS, None, with_service(), NET, used={f"10.96.0.{i}" for i in range(1, 7)})


@pytest.mark.parametrize(
    ("text", "avoid", "why"),
    [
        ("10.96.0.0/33", [], "10.96.0.0/33"),
        ("10.96.0.1/16", [], "host bits"),
        ("10.96.0.0/30", [], "too small"),
        ("127.0.0.0/16", [], "special"),
        ("10.88.0.0/15", ["10.88.0.0/16"], "overlaps 10.88.0.0/16"),
    ],
)
def test_bad_service_cidrs_are_refused(text, avoid, why):
    with pytest.raises(ServiceCidrError, match=why):
        parse_service_cidr(text, avoid)
    assert parse_service_cidr("10.96.0.0/16", ["10.88.0.0/16"]).num_addresses == 65536


# -- endpoints (scheduler) -------------------------------------------------------------------


def running(app: pb.App, name: str, node: str, ip: str, ready: bool = True) -> pb.Instance:
    inst = make_instance(app, name, node=node, ready=ready)
    inst.status.ip = ip
    return inst


def test_endpoints_list_every_app_with_its_running_instances_on_any_node():
    web, db = with_service(), make_app(make_spec("db", readiness=pb.Readiness(tcp=5432)))
    web.service_ip = "10.96.0.1"
    stopping = running(web, "web-c", "n2", "10.88.2.2")
    stopping.desired = pb.DESIRED_STATE_STOP  # told to stop: out before its container is gone
    starting = running(db, "db-b", "n1", "10.88.1.3")
    starting.status.state = pb.INSTANCE_STATE_STARTING
    unready = running(db, "db-a", "n0", "10.88.0.3", ready=False)  # has a readiness probe, fails it
    orphan = running(make_app(make_spec("gone")), "gone-a", "n0", "10.88.0.9")
    instances = [
        running(web, "web-b", "n1", "10.88.1.2"),
        running(web, "web-a", "n0", "10.88.0.2"),
        stopping,
        starting,
        unready,
        orphan,
    ]
    out = endpoints_of({"web": web, "db": db}, instances, "10.96.0.0/16")
    assert out.service_cidr == "10.96.0.0/16"
    assert [a.app for a in out.apps] == ["db", "web"]
    db_ep, web_ep = out.apps
    assert [(e.instance, e.ready) for e in db_ep.endpoints] == [("db-a", False)]
    assert db_ep.service_ip == "" and not db_ep.HasField("service")
    assert [(e.instance, e.ip, e.node) for e in web_ep.endpoints] == [
        ("web-a", "10.88.0.2", "n0"),
        ("web-b", "10.88.1.2", "n1"),
    ]
    assert web_ep.service_ip == "10.96.0.1" and web_ep.service.target_port == 8080


def test_virtual_services_take_the_ready_endpoints_of_apps_with_an_address():
    msg = apb.Endpoints(
        apps=[
            apb.AppEndpoints(app="db", endpoints=[apb.Endpoint(ip="10.88.0.3", ready=True)]),  # no service
            apb.AppEndpoints(
                app="web",
                service_ip="10.96.0.1",
                service=pb.ServicePort(port=80, target_port=8080, protocol="udp"),
                endpoints=[apb.Endpoint(ip="10.88.0.2", ready=True), apb.Endpoint(ip="10.88.1.2", ready=False)],
            ),
        ]
    )
    assert virtual_services(msg) == [VirtualService("web", "10.96.0.1", 80, 8080, "udp", ("10.88.0.2",))]


# -- rules (agent) ---------------------------------------------------------------------------

CHAINS = ServiceChains.of("orch1")
WEB = VirtualService("web", "10.96.0.1", 80, 8080, "tcp", ("10.88.2.5", "10.88.0.5", "10.88.10.5"))


def test_rules_spread_new_connections_evenly_over_every_endpoint_as_kube_proxy():
    text = service_rules(CHAINS, [WEB], "10.88.0.0/24", "10.96.0.0/16")
    match = '-A ORCH-SVC-orch1 -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -m comment --comment "web"'
    assert text.splitlines() == [
        "*nat",
        ":ORCH-SVC-orch1 - [0:0]",  # with --noflush these lines empty our chains first
        ":ORCH-SVCMASQ-orch1 - [0:0]",
        f"{match} -m statistic --mode random --probability 0.3333333333 -j DNAT --to-destination 10.88.0.5:8080",
        f"{match} -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.88.2.5:8080",
        f"{match} -j DNAT --to-destination 10.88.10.5:8080",  # endpoints on other nodes, by address
        "-A ORCH-SVCMASQ-orch1 -s 10.88.0.0/24 -d 10.88.0.0/24 -m conntrack --ctstate DNAT"
        " --ctorigdst 10.96.0.0/16 -j MASQUERADE",
        "COMMIT",
        "*filter",
        ":ORCH-SVCREJ-orch1 - [0:0]",
        "COMMIT",
    ]


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_each_endpoint_gets_one_nth(n):
    # The i-th rule sees what the rules before it left and takes 1/(n-i) of it.
    left, shares = Fraction(1), []
    for i in range(n):
        p = Fraction(1, n - i)
        shares.append(left * p)
        left -= left * p
    assert shares == [Fraction(1, n)] * n and left == 0
    endpoints = tuple(f"10.88.0.{i + 2}" for i in range(n))
    lines = service_rules(CHAINS, [WEB.__class__("web", "10.96.0.1", 80, 80, "tcp", endpoints)], "10.88.0.0/24", "x")
    dnat = [line for line in lines.splitlines() if "DNAT --to" in line]
    assert len(dnat) == n and sum("statistic" in line for line in dnat) == n - 1


def test_a_service_without_ready_endpoints_is_refused_at_once():
    empty = VirtualService("api", "10.96.0.2", 53, 5353, "udp", ())
    text = service_rules(CHAINS, [empty], "10.88.0.0/24", "10.96.0.0/16")
    assert "DNAT" not in text.replace("ctstate DNAT", "")
    assert (
        '-A ORCH-SVCREJ-orch1 -d 10.96.0.2/32 -p udp -m udp --dport 53 -m comment --comment "api"'
        " -j REJECT --reject-with icmp-port-unreachable"
    ) in text.splitlines()


def test_chain_names_fit_iptables_and_each_bridge_has_its_own():
    longest = ServiceChains.of("orch1234n567890")  # 15 characters: the kernel's limit
    assert all(len(c) <= 28 for c in (longest.dnat, longest.masquerade, longest.reject))
    assert ServiceChains.of("orchan0") != ServiceChains.of("orchan1")
    assert route_metric("orchan0") != route_metric("orchan1")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []
        self.installed: set[tuple[str, ...]] = set()
        self.routes: list[tuple[str, str, bool]] = []

    def run(self, argv: Sequence[str], stdin: str) -> None:
        self.calls.append((list(argv), stdin))
        op, rest = argv[4:5], tuple(argv[3:4]) + tuple(argv[5:])  # iptables -w -t TABLE OP RULE
        if op == ["-A"]:
            self.installed.add(rest)
        elif op == ["-D"]:
            self.installed.discard(rest)
        elif op == ["-C"] and rest not in self.installed:
            raise NetworkError("no such rule")
        elif op == ["-S"] and not any(c[0][0] == "iptables-restore" for c in self.calls):
            raise NetworkError("no such chain")

    def route(self, cidr: str, bridge: str, present: bool) -> None:
        self.routes.append((cidr, bridge, present))

    def restores(self) -> list[str]:
        return [stdin for argv, stdin in self.calls if argv[0] == "iptables-restore"]


def test_proxy_installs_nothing_until_there_is_a_vip_then_keeps_the_rules_in_step(tmp_path: Path):
    rec = Recorder()
    (tmp_path / "net/ipv4/conf/orch1").mkdir(parents=True)
    (tmp_path / "net/ipv4/conf/orch1/forwarding").write_text("0")
    proxy = ServiceProxy("orch1", "10.88.0.0/24", run=rec.run, proc_sys=tmp_path, route=rec.route)
    proxy.sync([], "10.96.0.0/16")
    proxy.sync([], "10.96.0.0/16")
    assert [argv[4] for argv, _ in rec.calls] == ["-S"]  # looked once; the host's tables untouched
    # Containers reach instances of other bridges (found by name) without any VIP too.
    assert (tmp_path / "net/ipv4/conf/orch1/forwarding").read_text() == "1"
    proxy.sync([WEB], "10.96.0.0/16")
    assert len(rec.restores()) == 1 and "10.96.0.1/32" in rec.restores()[0]
    assert len(rec.installed) == 5  # PREROUTING, OUTPUT, POSTROUTING (nat); FORWARD, OUTPUT (filter)
    assert rec.routes == [("10.96.0.0/16", "orch1", True)]
    calls = len(rec.calls)
    proxy.sync([WEB], "10.96.0.0/16")
    assert len(rec.calls) == calls  # nothing changed: no fork at all
    proxy.sync([VirtualService("web", "10.96.0.1", 80, 8080, "tcp", ("10.88.0.5",))], "10.96.0.0/16")
    assert len(rec.restores()) == 2 and "10.88.2.5" not in rec.restores()[-1]  # one instance went unready
    proxy.sync([], "10.96.0.0/16")  # the last service deleted: empty chains, still hooked
    assert "DNAT --to" not in rec.restores()[-1]
    proxy.teardown()
    assert not rec.installed
    flushed = [argv[4:6] for argv, _ in rec.calls if argv[4:5] in (["-F"], ["-X"])]
    assert sorted(map(tuple, flushed)) == sorted(
        (op, chain) for op in ("-F", "-X") for chain in ("ORCH-SVC-orch1", "ORCH-SVCMASQ-orch1", "ORCH-SVCREJ-orch1")
    )


def test_proxy_heals_after_a_restart_and_refuses_a_cidr_over_its_containers(tmp_path: Path):
    rec = Recorder()
    ServiceProxy("orch1", "10.88.0.0/24", run=rec.run, proc_sys=tmp_path, route=rec.route).sync([WEB], "10.96.0.0/16")
    # A new agent: the same rules are restored once and the jumps are not added twice.
    again = ServiceProxy("orch1", "10.88.0.0/24", run=rec.run, proc_sys=tmp_path, route=rec.route)
    again.sync([WEB], "10.96.0.0/16")
    assert len(rec.restores()) == 2 and len(rec.installed) == 5
    with pytest.raises(ConfigError, match="overlaps this node's subnet"):
        again.sync([WEB], "10.88.0.0/16")


# -- containers' resolv.conf ---------------------------------------------------------------


def test_container_resolv_conf_points_at_the_gateway_and_searches_the_app_first():
    host = parse_resolv_conf("# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2 ; x\nsearch corp.example. lab\n")
    assert host == HostResolver(("127.0.0.53", "10.0.0.2"), ("corp.example", "lab"))
    assert container_resolv_conf("10.88.1.1", "web", "orch", host) == (
        "search web.orch orch corp.example lab\nnameserver 10.88.1.1\noptions ndots:2\n"
    )
    assert parse_resolv_conf("domain a.example\nsearch b.example\n").search == ("b.example",)  # the last wins
