"""The agent's DNS: which names answer what (pure), and the server on loopback (UDP, TCP,
forwarding to an upstream we start, truncation, malformed input)."""

from __future__ import annotations

import asyncio

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from node.dns import TTL, DnsServer, DomainError, Forwarder, build_zone, check_domain, respond
from orch.v1 import agent_pb2 as apb

ORIGIN = dns.name.from_text("orch.")


def endpoints() -> apb.Endpoints:
    return apb.Endpoints(
        service_cidr="10.96.0.0/16",
        apps=[
            apb.AppEndpoints(
                app="db",
                endpoints=[
                    apb.Endpoint(instance="db-aaaaa", ip="10.88.0.5", node="n0", ready=True),
                    apb.Endpoint(instance="db-bbbbb", ip="10.88.1.5", node="n1", ready=True),
                    apb.Endpoint(instance="db-ccccc", ip="10.88.2.5", node="n2", ready=False),  # starting
                ],
            ),
            apb.AppEndpoints(
                app="web",
                service_ip="10.96.0.1",
                endpoints=[apb.Endpoint(instance="web-ddddd", ip="10.88.0.6", node="n0", ready=True)],
            ),
            apb.AppEndpoints(app="idle"),  # exists, nothing runs
        ],
    )


def ask(name: str, rdtype: str = "A", zone_endpoints: apb.Endpoints | None = None) -> dns.message.Message:
    zone = build_zone(zone_endpoints or endpoints(), "orch")
    reply = respond(zone, dns.message.make_query(name, rdtype), ORIGIN)
    assert reply is not None
    return reply


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(rd.address for rrset in reply.answer for rd in rrset)


def test_app_name_answers_its_ready_instances_on_every_node():
    reply = ask("db.orch.")
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert addresses(reply) == ["10.88.0.5", "10.88.1.5"]  # not the one still starting
    assert all(rrset.ttl == TTL <= 5 for rrset in reply.answer)


def test_app_with_a_service_answers_its_virtual_ip_only():
    assert addresses(ask("web.orch.")) == ["10.96.0.1"]


def test_instance_name_answers_that_instance_ready_or_not():
    assert addresses(ask("db-ccccc.db.orch.")) == ["10.88.2.5"]
    assert addresses(ask("web-ddddd.web.orch.")) == ["10.88.0.6"]


def test_names_are_case_insensitive():
    assert addresses(ask("DB.Orch.")) == ["10.88.0.5", "10.88.1.5"]


@pytest.mark.parametrize(
    "name", ["nope.orch.", "db-zzzzz.db.orch.", "db-aaaaa.web.orch.", "x.db-aaaaa.db.orch.", "web.web.orch."]
)
def test_unknown_names_in_the_domain_are_nxdomain_with_a_short_negative_ttl(name):
    reply = ask(name)
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.answer
    (soa,) = reply.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa[0].minimum == TTL and soa.ttl == TTL


@pytest.mark.parametrize(("name", "rdtype"), [("db.orch.", "AAAA"), ("idle.orch.", "A"), ("orch.", "A")])
def test_names_that_exist_without_such_data_are_nodata_not_nxdomain(name, rdtype):
    # NXDOMAIN would tell a resolver the name has no record of any type.
    reply = ask(name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer and reply.authority


def test_apex_soa():
    reply = ask("orch.", "SOA")
    assert reply.answer[0].rdtype == dns.rdatatype.SOA


def test_readiness_change_shows_in_the_next_zone():
    changed = endpoints()
    changed.apps[0].endpoints[0].ready = False  # db-aaaaa failed its probe
    changed.apps[0].endpoints[2].ready = True
    assert addresses(ask("db.orch.", zone_endpoints=changed)) == ["10.88.1.5", "10.88.2.5"]


def test_other_names_are_not_ours_and_an_unknown_zone_is_servfail():
    zone = build_zone(endpoints(), "orch")
    assert respond(zone, dns.message.make_query("example.com.", "A"), ORIGIN) is None
    assert respond(zone, dns.message.make_query("orchestra.", "A"), ORIGIN) is None
    before_endpoints = respond(None, dns.message.make_query("db.orch.", "A"), ORIGIN)
    assert before_endpoints is not None and before_endpoints.rcode() == dns.rcode.SERVFAIL


def test_configurable_domain():
    assert check_domain("Cluster.Local.") == "cluster.local"
    zone = build_zone(endpoints(), "cluster.local")
    origin = dns.name.from_text("cluster.local.")
    reply = respond(zone, dns.message.make_query("db.cluster.local.", "A"), origin)
    assert reply is not None and addresses(reply) == ["10.88.0.5", "10.88.1.5"]
    assert respond(zone, dns.message.make_query("db.orch.", "A"), origin) is None


@pytest.mark.parametrize("bad", ["", ".", "a..b", "-x", "x_y", "a" * 64, "Ünï"])
def test_bad_domains_are_refused(bad):
    with pytest.raises(DomainError):
        check_domain(bad)


# -- the server on loopback ------------------------------------------------------------------


def upstream_endpoints(count: int = 1) -> apb.Endpoints:
    many = [
        apb.Endpoint(instance=f"www-{i:05d}", ip=f"10.1.{i // 250}.{i % 250 + 1}", ready=True) for i in range(count)
    ]
    return apb.Endpoints(apps=[apb.AppEndpoints(app="www", endpoints=many)])


async def start(domain: str, upstreams: list[tuple[str, int]], data: apb.Endpoints) -> DnsServer:
    server = DnsServer("127.0.0.1", domain, Forwarder(upstreams, timeout=0.5), port=0)
    await server.start()
    server.update(data)
    return server


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_udp_and_tcp_answers_and_forwarding_to_the_upstream():
    async def scenario():
        # The node's resolver: another of our servers, authoritative for "example.test".
        upstream = await start("example.test", [], upstream_endpoints())
        ours = await start("orch", [("127.0.0.1", upstream.port)], endpoints())
        try:
            q = dns.message.make_query("db.orch.", "A")
            udp = await dns.asyncquery.udp(q, "127.0.0.1", port=ours.port, timeout=2)
            tcp = await dns.asyncquery.tcp(q, "127.0.0.1", port=ours.port, timeout=2)
            assert udp.id == q.id and addresses(udp) == addresses(tcp) == ["10.88.0.5", "10.88.1.5"]
            forwarded = dns.message.make_query("www.example.test.", "A")
            for query in (dns.asyncquery.udp, dns.asyncquery.tcp):
                reply = await query(forwarded, "127.0.0.1", port=ours.port, timeout=2)
                assert reply.id == forwarded.id and addresses(reply) == ["10.1.0.1"]
            missing = await dns.asyncquery.udp(
                dns.message.make_query("nope.example.test.", "A"), "127.0.0.1", port=ours.port, timeout=2
            )
            assert missing.rcode() == dns.rcode.NXDOMAIN  # the upstream's answer, passed on
        finally:
            await ours.close()
            await upstream.close()

    run(scenario())


def test_no_upstream_answering_is_servfail():
    async def scenario():
        dead = await start("x.test", [], endpoints())
        port = dead.port
        await dead.close()  # nobody listens there now
        ours = await start("orch", [("127.0.0.1", port)], endpoints())
        try:
            reply = await dns.asyncquery.udp(
                dns.message.make_query("example.com.", "A"), "127.0.0.1", port=ours.port, timeout=5
            )
            assert reply.rcode() == dns.rcode.SERVFAIL
        finally:
            await ours.close()

    run(scenario())


def test_large_answers_are_truncated_over_udp_and_whole_over_tcp():
    async def scenario():
        ours = await start("orch", [], upstream_endpoints(200))
        try:
            q = dns.message.make_query("www.orch.", "A")  # no EDNS: 512 bytes at most
            udp = await dns.asyncquery.udp(q, "127.0.0.1", port=ours.port, timeout=2, raise_on_truncation=False)
            assert udp.flags & dns.flags.TC
            tcp = await dns.asyncquery.tcp(q, "127.0.0.1", port=ours.port, timeout=2)
            assert len(addresses(tcp)) == 200
        finally:
            await ours.close()

    run(scenario())


def test_garbage_gets_formerr_and_responses_get_nothing():
    async def scenario():
        ours = await start("orch", [], endpoints())
        loop = asyncio.get_running_loop()
        got: asyncio.Queue[bytes] = asyncio.Queue()

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", ours.port))
        try:
            transport.sendto(b"\x12\x34\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\xff\xff")  # a question cut short
            reply = await asyncio.wait_for(got.get(), 2)
            assert reply[:2] == b"\x12\x34" and reply[2] & 0x80 and reply[3] & 0x0F == dns.rcode.FORMERR
            response = dns.message.make_response(dns.message.make_query("db.orch.", "A"))
            transport.sendto(response.to_wire())  # a response is never answered (no reflection loops)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(got.get(), 0.3)
        finally:
            transport.close()
            await ours.close()

    run(scenario())


def test_the_agent_side_answers_on_its_gateway_once_attached(tmp_path):
    from types import SimpleNamespace

    from node.discovery import ServiceDiscovery

    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\nsearch corp.example\n")

    async def scenario():
        found = ServiceDiscovery("orch", tmp_path / "resolv.conf", dns_port=0)
        assert found.resolv_conf("web") == ""  # no bridge yet: the host's resolv.conf is copied
        found.update(endpoints())  # endpoints may come before the network
        config = SimpleNamespace(gateway="127.0.0.1", bridge="orch1", subnet="127.0.0.0/24")
        await found.attach(SimpleNamespace(config=config))  # type: ignore[arg-type]
        try:
            assert (
                found.resolv_conf("web") == "search web.orch orch corp.example\nnameserver 127.0.0.1\noptions ndots:2\n"
            )
            assert found.dns is not None
            reply = await dns.asyncquery.udp(dns.message.make_query("db.orch.", "A"), "127.0.0.1", port=found.dns.port)
            assert addresses(reply) == ["10.88.0.5", "10.88.1.5"]
            changed = endpoints()
            changed.apps[0].endpoints[1].ready = False
            found.update(changed)  # the zone is swapped at once
            reply = await dns.asyncquery.udp(dns.message.make_query("db.orch.", "A"), "127.0.0.1", port=found.dns.port)
            assert addresses(reply) == ["10.88.0.5"]
            assert found.dns._forwarder.upstreams == []  # never itself (its own gateway is in resolv.conf)
        finally:
            await found.close()

    run(scenario())


def test_the_agent_side_listens_once_the_port_is_free_again(tmp_path, monkeypatch):
    """Another server holds the gateway's port 53 when the agent attaches (a stray process, an
    agent not yet gone): cluster names resolve once it lets go, without an agent restart."""
    import socket
    from types import SimpleNamespace

    import node.discovery
    from node.discovery import ServiceDiscovery

    monkeypatch.setattr(node.discovery, "LISTEN_RETRY", 0.05)
    (tmp_path / "resolv.conf").write_text("nameserver 192.0.2.53\n")
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]

    async def scenario():
        found = ServiceDiscovery("orch", tmp_path / "resolv.conf", dns_port=port)
        found.update(endpoints())
        config = SimpleNamespace(gateway="127.0.0.1", bridge="orch1", subnet="127.0.0.0/24")
        await found.attach(SimpleNamespace(config=config))  # type: ignore[arg-type]
        found.proxy = None  # no VIP rules on this host from a unit test
        assert found.dns is not None and not found.dns.listening
        runner = asyncio.create_task(found.run())
        try:
            await asyncio.sleep(0.2)
            assert not found.dns.listening  # still held: tried again, still refused
            holder.close()
            deadline = asyncio.get_running_loop().time() + 10
            while not found.dns.listening and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            assert found.dns.listening  # tried again, without a new attach
            reply = await dns.asyncquery.udp(dns.message.make_query("db.orch.", "A"), "127.0.0.1", port=port, timeout=2)
            assert addresses(reply) == ["10.88.0.5", "10.88.1.5"]
        finally:
            runner.cancel()
            await found.close()

    try:
        run(scenario())
    finally:
        holder.close()
