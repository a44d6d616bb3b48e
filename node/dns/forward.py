"""Names outside the cluster's domain: asked of the node's own resolvers.

The upstreams come from the node's resolv.conf (`orch node --resolv-conf`,
/etc/resolv.conf by default). A loopback stub such as systemd-resolved's
127.0.0.53 is fine: the agent asks it, not the container, and the agent runs
in the node's network namespace. Each upstream is tried in turn with a short
timeout; when none answers the client gets SERVFAIL. Over UDP a truncated
answer is passed on truncated, so the client asks again over TCP, which is
forwarded over TCP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import dns.asyncquery
import dns.exception
import dns.message

__all__ = ["Forwarder", "Upstream"]

log = logging.getLogger(__name__)

Upstream = tuple[str, int]  # (address, port)
TIMEOUT = 2.0  # s per upstream: glibc's client waits 5 s before it asks again


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream], timeout: float = TIMEOUT) -> None:
        self.upstreams = list(upstreams)
        self.timeout = timeout

    async def forward(self, query: dns.message.Message, tcp: bool) -> dns.message.Message | None:
        """The first upstream's answer, or None if none answered."""
        for host, port in self.upstreams:
            try:
                if tcp:
                    return await dns.asyncquery.tcp(query, host, timeout=self.timeout, port=port)
                return await dns.asyncquery.udp(
                    query, host, timeout=self.timeout, port=port, ignore_unexpected=True, raise_on_truncation=False
                )
            except (dns.exception.DNSException, OSError, EOFError) as e:
                log.debug("upstream %s:%d: %s", host, port, e)
        return None
