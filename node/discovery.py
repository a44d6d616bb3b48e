"""The agent's side of the cluster's endpoints: its DNS server and its VIP rules.

The scheduler pushes the whole `Endpoints` message whenever an endpoint
changes (scheduler/endpoints.py). The DNS zone is swapped at once, on the event
loop; the VIP rules are rewritten in a thread by the latest message only (a
burst of updates costs one iptables-restore, never a queue of them). A failed
rewrite is tried again a second later, and at the next message anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from node.dns import DnsServer, Forwarder, container_resolv_conf, read_resolv_conf
from node.network import ConfigError, NetworkError, NodeNetwork
from node.network.services import ServiceProxy, VirtualService
from orch.v1 import agent_pb2 as apb

__all__ = ["ServiceDiscovery", "virtual_services"]

log = logging.getLogger(__name__)

RETRY = 1.0  # s before a failed rule rewrite is tried again
LISTEN_RETRY = 5.0  # s between tries to listen on the gateway's port 53 while another holds it


def virtual_services(endpoints: apb.Endpoints) -> list[VirtualService]:
    """The VIPs to program: apps with a service IP, and their ready instances."""
    return [
        VirtualService(
            app=app.app,
            ip=app.service_ip,
            port=app.service.port,
            target_port=app.service.target_port or app.service.port,
            protocol=app.service.protocol or "tcp",
            endpoints=tuple(e.ip for e in app.endpoints if e.ready),
        )
        for app in endpoints.apps
        if app.service_ip and app.service.port
    ]


class ServiceDiscovery:
    """Created with the agent; attached to the node's network once the bridge is up (its
    gateway is where the DNS server listens)."""

    def __init__(self, domain: str, resolv_conf: Path, dns_port: int = 53) -> None:
        self.domain = domain
        self.dns_port = dns_port  # tests: 0
        self._host = read_resolv_conf(resolv_conf)
        self.gateway = ""  # "" until attached
        self.dns: DnsServer | None = None
        self.proxy: ServiceProxy | None = None
        self.updated_at = 0.0  # monotonic time the last endpoints reached the zone
        self._latest: apb.Endpoints | None = None
        self._wake = asyncio.Event()

    async def attach(self, network: NodeNetwork) -> None:
        """Answer on network's gateway and program its bridge's VIP rules (again if it changed)."""
        config = network.config
        if self.dns is not None and self.gateway == str(config.gateway):
            return
        await self.close()
        self.gateway = str(config.gateway)
        # Never forward to ourselves (a node whose resolv.conf names its own gateway).
        upstreams = [(ns, 53) for ns in self._host.nameservers if ns != self.gateway]
        self.dns = DnsServer(self.gateway, self.domain, Forwarder(upstreams), port=self.dns_port)
        if self._latest is not None:
            self.dns.update(self._latest)
        self.proxy = ServiceProxy(config.bridge, config.subnet)
        self._wake.set()
        await self._listen(first=True)

    async def _listen(self, first: bool) -> None:
        """Start answering. If the address cannot be had (another server holds the port), the
        containers' lookups of cluster names fail meanwhile, everything else works, and run()
        tries again every LISTEN_RETRY s."""
        if self.dns is None or self.dns.listening:
            return
        try:
            await self.dns.start()
        except OSError as e:
            if first:
                log.error(
                    "dns: cannot listen on %s:%d: %s; cluster names will not resolve on this node until it can "
                    "(trying again every %.0f s)",
                    self.gateway,
                    self.dns_port,
                    e,
                    LISTEN_RETRY,
                )
            return
        log.info("dns: answering *.%s on %s:%d (udp, tcp)", self.domain, self.gateway, self.dns.port)

    def resolv_conf(self, app: str) -> str:
        """/etc/resolv.conf for a container of app ("" before attach: the host's is copied)."""
        return container_resolv_conf(self.gateway, app, self.domain, self._host) if self.gateway else ""

    def update(self, endpoints: apb.Endpoints) -> None:
        self._latest = endpoints
        if self.dns is not None:
            self.dns.update(endpoints)
        self.updated_at = time.monotonic()
        self._wake.set()

    async def run(self) -> None:
        """Keep the VIP rules equal to the latest endpoints."""
        while True:
            not_listening = self.dns is not None and not self.dns.listening
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LISTEN_RETRY if not_listening else None)
            self._wake.clear()
            await self._listen(first=False)
            latest, proxy = self._latest, self.proxy
            if latest is None or proxy is None:
                continue
            try:
                await asyncio.to_thread(proxy.sync, virtual_services(latest), latest.service_cidr)
            except ConfigError as e:  # the scheduler's --service-cidr: wait for the next endpoints
                log.error("service rules: %s", e)
            except (NetworkError, OSError) as e:
                log.warning("service rules: %s; trying again", e)
                await asyncio.sleep(RETRY)
                self._wake.set()

    async def close(self) -> None:
        if self.dns is not None:
            await self.dns.close()
            self.dns = None
