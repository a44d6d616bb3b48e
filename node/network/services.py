"""Service virtual IPs: DNAT from an app's VIP to its ready instances (iptables, as kube-proxy).

Each agent programs every VIP of the cluster, with the ready instances of every
node as endpoints (by address: the host-gw routes carry the packets there), in
chains of its own named after its bridge, so that several nodes on one host
(`orch up`) never touch each other's rules:

    nat    PREROUTING  -j ORCH-SVC-<bridge>       containers (and other hosts) → VIP
    nat    OUTPUT      -j ORCH-SVC-<bridge>       this host → VIP
    ORCH-SVC-<bridge>: per VIP and endpoint i of n, `-m statistic --mode random
        --probability 1/(n-i)` then DNAT to ip:targetPort (the last one without statistic):
        each endpoint gets 1/n of the new connections
    nat    POSTROUTING -j ORCH-SVCMASQ-<bridge>
    ORCH-SVCMASQ-<bridge>: MASQUERADE what a VIP sent from this node's subnet back into it
        (the hairpin: without it the endpoint would answer the client directly, from
        its own address, and the client would drop the reply)
    filter FORWARD, OUTPUT -j ORCH-SVCREJ-<bridge>
    ORCH-SVCREJ-<bridge>: REJECT connections to a VIP with no ready instance (refused at
        once instead of a timeout)
    route  <service CIDR> dev <bridge> src <gateway> metric <per bridge>: a host without a
        default route (a lab host) could not even send to a VIP before OUTPUT rewrites it
    net.ipv4.conf.<bridge>.forwarding = 1: containers' packets to a VIP, or to an instance
        they found by name, that lives on another bridge or host are routed on; only packets
        that come in on the bridge (the host's own ip_forward is left alone). Set at the
        first sync, with or without VIPs. The route and this flag vanish with the bridge.

Level-triggered: `sync` renders the whole rule set from the endpoints and
rewrites the chains in one iptables-restore when the text changed; the jumps
and the route are checked at the first sync after a start, so the rules heal
after an agent restart or a flush. Nothing is installed until the cluster has a
VIP. `teardown` (orch node --cleanup) removes it all.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.network import iptables, links
from node.network.errors import ConfigError
from node.network.iptables import Runner
from node.network.iptables import run as run_iptables
from node.network.pyroute import IPRoute

__all__ = ["ServiceChains", "ServiceProxy", "VirtualService", "route_metric", "service_rules"]

log = logging.getLogger(__name__)

ROUTE_METRIC_BASE = 3000  # per bridge: nodes sharing a host each keep a route of their own


@dataclass(frozen=True, slots=True)
class VirtualService:
    """One app's VIP and where it forwards to."""

    app: str
    ip: str
    port: int
    target_port: int
    protocol: str  # tcp | udp
    endpoints: tuple[str, ...]  # addresses of the app's ready instances, on any node


@dataclass(frozen=True, slots=True)
class ServiceChains:
    dnat: str
    masquerade: str
    reject: str

    @classmethod
    def of(cls, bridge: str) -> ServiceChains:
        # iptables chain names are at most 28 characters; bridge names at most 15.
        return cls(f"ORCH-SVC-{bridge}"[:28], f"ORCH-SVCMASQ-{bridge}"[:28], f"ORCH-SVCREJ-{bridge}"[:28])

    def jumps(self) -> list[list[str]]:
        """[table, chain, target...] of each rule that hooks ours into the kernel's chains."""
        return [
            ["nat", "PREROUTING", "-j", self.dnat],
            ["nat", "OUTPUT", "-j", self.dnat],
            ["nat", "POSTROUTING", "-j", self.masquerade],
            ["filter", "FORWARD", "-j", self.reject],
            ["filter", "OUTPUT", "-j", self.reject],
        ]


def _match(svc: VirtualService) -> str:
    p = svc.protocol
    return f'-d {svc.ip}/32 -p {p} -m {p} --dport {svc.port} -m comment --comment "{svc.app}"'


def service_rules(chains: ServiceChains, services: Sequence[VirtualService], subnet: str, service_cidr: str) -> str:
    """iptables-restore input that replaces our chains (pure).

    The random rules are kube-proxy's: the i-th of n endpoints is taken with probability
    1/(n-i) among the connections the rules before it left, so each gets 1/n."""
    nat = ["*nat", f":{chains.dnat} - [0:0]", f":{chains.masquerade} - [0:0]"]
    reject = ["*filter", f":{chains.reject} - [0:0]"]
    for svc in sorted(services, key=lambda s: (s.ip, s.port, s.protocol)):
        match = _match(svc)
        n = len(svc.endpoints)
        if n == 0:
            reject.append(f"-A {chains.reject} {match} -j REJECT --reject-with icmp-port-unreachable")
        for i, ip in enumerate(sorted(svc.endpoints, key=ipaddress.IPv4Address)):
            pick = f" -m statistic --mode random --probability {1 / (n - i):.10f}" if i < n - 1 else ""
            nat.append(f"-A {chains.dnat} {match}{pick} -j DNAT --to-destination {ip}:{svc.target_port}")
    nat.append(
        f"-A {chains.masquerade} -s {subnet} -d {subnet} -m conntrack --ctstate DNAT"
        f" --ctorigdst {service_cidr} -j MASQUERADE"
    )
    return "\n".join([*nat, "COMMIT", *reject, "COMMIT", ""])


def route_metric(bridge: str) -> int:
    return ROUTE_METRIC_BASE + zlib.crc32(bridge.encode()) % 10_000


class ServiceProxy:
    """This node's VIP rules; blocking (iptables-restore, netlink): call from a thread."""

    def __init__(
        self,
        bridge: str,
        subnet: str,
        run: Runner = run_iptables,
        proc_sys: Path = Path("/proc/sys"),
        route: Callable[[str, str, bool], None] | None = None,
    ) -> None:
        self.bridge, self.subnet = bridge, subnet
        self.chains = ServiceChains.of(bridge)
        self._run = run
        self._proc_sys = proc_sys
        self._route = route or self._netlink_route
        self._applied = ""  # the rules text last restored
        self._hooked = ""  # the service CIDR whose jumps, route and forwarding were checked since start
        self._leftover: bool | None = None  # our chains existed at start (looked up once)
        self._forwarding = False  # the bridge's forwarding flag set
        self._lock = threading.Lock()

    def sync(self, services: Sequence[VirtualService], service_cidr: str) -> None:
        """Make the kernel's rules equal services (idempotent; a no-op when nothing changed)."""
        with self._lock:
            if not self._forwarding:
                self._forward_from_bridge()
            if not services and not self._hooked:
                if self._leftover is None:  # rules of an earlier run: keep them in step
                    self._leftover = self._installed()
                if not self._leftover:
                    return  # no VIP in the cluster, none installed: leave the host's tables alone
            check_service_cidr(service_cidr, self.subnet)
            text = service_rules(self.chains, services, self.subnet, service_cidr)
            if text != self._applied:
                iptables.restore(self._run, text)
                self._applied = text
            if self._hooked != service_cidr:
                self._hook(service_cidr)

    def _hook(self, service_cidr: str) -> None:
        for table, *rule in self.chains.jumps():
            iptables.add_jump(self._run, table, rule)
        self._route(service_cidr, self.bridge, True)
        if self._hooked:  # the scheduler's --service-cidr changed
            self._route(self._hooked, self.bridge, False)
        self._hooked = service_cidr

    def _forward_from_bridge(self) -> None:
        flag = self._proc_sys / "net/ipv4/conf" / self.bridge / "forwarding"
        if flag.exists():  # else no bridge (yet): the next sync looks again
            flag.write_text("1")
            self._forwarding = True

    def teardown(self) -> None:
        """Remove the jumps and our chains (the route and the forwarding go with the bridge)."""
        with self._lock:
            for table, *rule in self.chains.jumps():
                iptables.remove_jump(self._run, table, rule)
            for table, chain in (("nat", self.chains.dnat), ("nat", self.chains.masquerade),
                                 ("filter", self.chains.reject)):  # fmt: skip
                iptables.delete_chain(self._run, table, chain)
            self._applied, self._hooked = "", ""

    def _installed(self) -> bool:
        return iptables.chain_exists(self._run, "nat", self.chains.dnat)

    def _netlink_route(self, service_cidr: str, bridge: str, present: bool) -> None:
        net = ipaddress.IPv4Network(service_cidr)
        gateway = str(ipaddress.IPv4Network(self.subnet).network_address + 1)
        with IPRoute() as ipr:
            index = links.lookup(ipr, bridge)
            if index is None:
                return  # no bridge, no route (it went with it)
            if present:
                links.replace_route(ipr, str(net), index, gateway, route_metric(bridge))
            else:
                links.delete_route(ipr, str(net), index, route_metric(bridge))


def check_service_cidr(service_cidr: str, subnet: str) -> None:
    """ConfigError when the VIPs would shadow this node's containers."""
    try:
        overlap = ipaddress.IPv4Network(service_cidr).overlaps(ipaddress.IPv4Network(subnet))
    except ValueError as e:
        raise ConfigError(f"service CIDR {service_cidr!r}: {e}") from None
    if overlap:
        raise ConfigError(f"service CIDR {service_cidr} overlaps this node's subnet {subnet}: VIPs not programmed")
