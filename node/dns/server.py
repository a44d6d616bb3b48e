"""The agent's DNS server: UDP and TCP on the bridge gateway, port 53, on asyncio.

Names in the cluster's domain are answered from the zone (zone.py), which the
agent replaces whenever the scheduler sends new endpoints; other names are
forwarded (forward.py). dnspython reads and writes the wire format. Answers
over UDP are cut to 512 bytes, or to the client's EDNS buffer size, with the
TC bit set, so a client with more to read asks again over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode

from node.dns.forward import Forwarder
from node.dns.zone import Zone, build_zone, origin_of, respond
from orch.v1 import agent_pb2 as apb

__all__ = ["DnsServer"]

log = logging.getLogger(__name__)

MAX_PENDING = 512  # UDP queries in flight (mostly forwarded); more are dropped, the client retries
TCP_IDLE = 10.0  # s a TCP client may keep its connection without asking
UDP_LIMIT = 512  # bytes of an answer to a client without EDNS (RFC 1035)
MAX_UDP = 4096


class DnsServer:
    def __init__(self, address: str, domain: str, forwarder: Forwarder, port: int = 53) -> None:
        self.address, self.port = address, port
        self.domain = domain
        self.origin = origin_of(domain)
        self.zone: Zone | None = None  # None until the first endpoints: SERVFAIL, not a wrong NXDOMAIN
        self._forwarder = forwarder
        self._rng = random.Random()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def update(self, endpoints: apb.Endpoints) -> None:
        self.zone = build_zone(endpoints, self.domain)

    async def start(self) -> None:
        """Listen; OSError (e.g. EADDRINUSE) if the address cannot be had."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.address, self.port))
        port = transport.get_extra_info("sockname")[1]  # port 0 (tests): TCP takes the same one
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, self.address, port, reuse_address=True)
        except OSError:
            transport.close()
            raise
        self._udp, self.port = transport, port

    @property
    def listening(self) -> bool:
        return self._udp is not None

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
        for task in list(self._pending):
            task.cancel()

    async def answer(self, wire: bytes, tcp: bool) -> bytes | None:
        """The reply to one message, or None to drop it (not a query, or unreadable)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None  # a response: never answer one (reflection loops)
        if query.opcode() != dns.opcode.QUERY:
            reply = dns.message.make_response(query)
            reply.set_rcode(dns.rcode.NOTIMP)
        else:
            reply = respond(self.zone, query, self.origin, self._rng) or await self._forward(query, tcp)
        limit = 65535 if tcp else min(max(UDP_LIMIT, query.payload if query.edns >= 0 else UDP_LIMIT), MAX_UDP)
        try:
            return reply.to_wire(max_size=limit, prefer_truncation=True)
        except dns.exception.DNSException as e:  # an upstream answer we cannot write back
            log.debug("dns: cannot encode the answer to %s: %s", query.question, e)
            failed = dns.message.make_response(query)
            failed.set_rcode(dns.rcode.SERVFAIL)
            return failed.to_wire()

    async def _forward(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        answer = await self._forwarder.forward(query, tcp)
        if answer is None:
            answer = dns.message.make_response(query)
            answer.set_rcode(dns.rcode.SERVFAIL)
        answer.id = query.id
        return answer

    def received(self, wire: bytes, reply: asyncio.DatagramTransport, addr: tuple[str, int]) -> None:
        if len(self._pending) >= MAX_PENDING:
            return

        async def serve() -> None:
            out = await self.answer(wire, tcp=False)
            if out is not None and not reply.is_closing():
                reply.sendto(out, addr)

        task = asyncio.create_task(serve())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                wire = await asyncio.wait_for(reader.readexactly(int.from_bytes(size, "big")), TCP_IDLE)
                out = await self.answer(wire, tcp=True)
                if out is None:
                    break
                writer.write(len(out).to_bytes(2, "big") + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # what create_datagram_endpoint makes

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._server.received(data, self._transport, addr)


def _formerr(wire: bytes) -> bytes | None:
    """A header-only FORMERR for an unreadable query that has at least a header."""
    if len(wire) < 12 or wire[2] & 0x80:  # too short, or a response
        return None
    flags = 0x8000 | (wire[2] & 0x79) << 8 | dns.rcode.FORMERR  # QR, the query's opcode and RD
    return wire[:2] + flags.to_bytes(2, "big") + bytes(8)
