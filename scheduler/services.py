"""Virtual IPs for apps with `spec.service` (Kubernetes' ClusterIP allocator, small).

The scheduler hands each such app one address of its service CIDR (`orch
scheduler --service-cidr`, default 10.96.0.0/16) and keeps it while the app
keeps a service: re-applying, scaling or rolling the app never changes it.
The address is stored on the app (`App.service_ip`) and reserved by a key of
its own, `serviceips/<ip>`, created (must-not-exist) in the same transaction
as the app: two Apply calls racing for one address cannot both win, the loser
re-reads and takes the next one. Deleting the app, or dropping its service,
deletes the reservation in the same transaction.

Pure functions; `service_ip_writes` is the only one that names store writes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

from orch.v1 import types_pb2 as pb
from scheduler.store import Delete, Keys, Put, Write

__all__ = [
    "DEFAULT_SERVICE_CIDR",
    "ServiceCidrError",
    "allocate",
    "parse_service_cidr",
    "release_writes",
    "service_ip_writes",
]

DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
MAX_PREFIX = 28  # at least 14 addresses: smaller is a typo, not a plan


class ServiceCidrError(ValueError):
    """--service-cidr is not usable; the message says why."""


def parse_service_cidr(text: str, avoid: Collection[str] = ()) -> ipaddress.IPv4Network:
    """The service CIDR, refused when malformed, too small, special, or overlapping one of avoid
    (the containers' CIDR: a VIP that is also an instance's address would capture its traffic)."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise ServiceCidrError(f"service CIDR {text!r}: {e}") from None
    if net.prefixlen > MAX_PREFIX:
        raise ServiceCidrError(f"service CIDR {text}: /{net.prefixlen} is too small, want /{MAX_PREFIX} or larger")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified or net.is_reserved:
        raise ServiceCidrError(f"service CIDR {text}: a special-purpose range, not usable for services")
    for other in avoid:
        try:
            theirs = ipaddress.ip_network(other, strict=False)
        except ValueError:
            continue
        if net.overlaps(theirs):
            raise ServiceCidrError(f"service CIDR {text} overlaps {other}: choose one apart from it")
    return net


def allocate(network: ipaddress.IPv4Network, used: Collection[str]) -> str | None:
    """The lowest free address of network (not its network or broadcast address); None if full."""
    taken = set(used)
    for ip in network.hosts():
        if str(ip) not in taken:
            return str(ip)
    return None


def service_ip_writes(
    keys: Keys,
    before: pb.App | None,
    after: pb.App,
    network: ipaddress.IPv4Network,
    used: Collection[str],
) -> list[Write]:
    """Sets after.service_ip and returns the reservation writes that go with it.

    An app keeps its address while it has a service (and the address is still in network);
    it gets the lowest free one when it gains a service, and frees it when it loses it.
    Raises ServiceCidrError when the CIDR is full."""
    old = before.service_ip if before is not None else ""
    if not after.spec.HasField("service"):
        after.service_ip = ""
        return [Delete(keys.service_ip(old), None)] if old else []
    if old and ipaddress.IPv4Address(old) in network:
        after.service_ip = old
        return []
    ip = allocate(network, used)
    if ip is None:
        raise ServiceCidrError(f"service CIDR {network} is full: no virtual IP left for app {after.spec.name}")
    after.service_ip = ip
    writes: list[Write] = [Put(keys.service_ip(ip), pb.ServiceIp(app=after.spec.name, ip=ip), 0)]
    if old:  # outside a changed --service-cidr: move, and free the old one
        writes.append(Delete(keys.service_ip(old), None))
    return writes


def release_writes(keys: Keys, app: pb.App) -> list[Write]:
    """What deleting app must also delete."""
    return [Delete(keys.service_ip(app.service_ip), None)] if app.service_ip else []
