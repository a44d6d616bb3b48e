"""Service discovery by DNS: the agent answers the cluster's names on its bridge gateway.

Vocabulary:
    domain      the cluster's DNS domain, "orch" by default (`orch node --cluster-domain`)
    zone        the names of the domain and their addresses, built from the scheduler's
                endpoints (zone.py, pure)
    upstream    a resolver of the node (its resolv.conf) that other names are forwarded to
                (forward.py)
    server      UDP and TCP on <gateway>:53, asyncio (server.py)

Containers on a bridge get a resolv.conf that names their gateway (resolvconf.py).
"""

from node.dns.forward import Forwarder
from node.dns.resolvconf import HostResolver, container_resolv_conf, read_resolv_conf
from node.dns.server import DnsServer
from node.dns.zone import TTL, DomainError, Zone, build_zone, check_domain, respond

__all__ = [
    "TTL",
    "DnsServer",
    "DomainError",
    "Forwarder",
    "HostResolver",
    "Zone",
    "build_zone",
    "check_domain",
    "container_resolv_conf",
    "read_resolv_conf",
    "respond",
]
