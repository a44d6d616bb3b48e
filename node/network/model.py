"""Data crossing the node.network boundary: NetworkConfig in, Attachment out."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from node.network.errors import ConfigError
from node.network.names import check_ifname
from node.network.portpolicy import DEFAULT_RANGE, PortRange

MIN_MTU = 68  # IPv4's minimum (RFC 791)
MAX_MTU = 65535


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    """Parse an IPv4 subnet with room for a gateway and at least one container."""
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise ConfigError(f"subnet {subnet!r}: {exc}") from exc
    if net.prefixlen > 30:
        # /31 and /32 have no room for gateway + container + network/broadcast.
        raise ConfigError(f"subnet {subnet!r}: prefix /{net.prefixlen} too small, want /30 or larger")
    return net


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """One node's container network: a bridge carrying ``subnet``'s gateway address."""

    bridge: str  # e.g. "orch1"
    subnet: str  # e.g. "10.88.1.0/24"; the gateway is its first host address
    state_dir: Path  # IPAM state (one file per allocated address); host ports in <state_dir>/hostports
    mtu: int = 1500
    publish_address: str = ""  # hostPorts only on this local address; "" = every local one but loopback
    host_port_range: PortRange = DEFAULT_RANGE  # hostPorts this node publishes at all (portpolicy.py)
    node: str = ""  # the node's name, for messages

    def __post_init__(self) -> None:
        check_ifname(self.bridge)
        parse_subnet(self.subnet)
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise ConfigError(f"mtu {self.mtu}: want {MIN_MTU}..{MAX_MTU}")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return parse_subnet(self.subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1


@dataclass(frozen=True, slots=True)
class Attachment:
    """What attach() did for one instance."""

    instance: str
    ip: str  # container address, e.g. "10.88.1.5"
    prefixlen: int
    gateway: str
    host_veth: str  # see names.veth_name
