"""What the node's host already has on its networks, for the scheduler's overlap check and
for the routes: its routes (but orch's own), Podman's networks, its local addresses, and
the address it uses towards the control plane (the default node IP).

Podman's default network is 10.88.0.0/16, orch's default cluster CIDR: its bridge and
route exist only while a Podman container runs, so where Podman is installed its networks
count from its configuration, running or not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.network.errors import LinkError
from node.network.pyroute import NetlinkError
from node.network.routes import MAIN_TABLE, ORCH_PROTO

__all__ = ["PODMAN_DEFAULT", "HostNet", "host_routes", "local_addresses", "podman_networks", "source_address"]

PODMAN_DEFAULT = "10.88.0.0/16"  # podman's built-in network "podman" (containers.conf default_subnet)


@dataclass(frozen=True, slots=True)
class HostNet:
    cidr: str
    source: str  # "route dev eth0", "Podman network podman"


def host_routes(ipr: Any, own_bridge: str) -> list[HostNet]:
    """The main table's IPv4 routes but the default one, orch's own (its mark) and those of this
    node's bridge, as (cidr, "route dev IFNAME")."""
    try:
        names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        found = ipr.route("dump", family=socket.AF_INET, table=MAIN_TABLE)
    except NetlinkError as e:
        raise LinkError("routes", "list", e.code) from e
    out = []
    for r in found:
        if r["dst_len"] == 0 or r["proto"] == ORCH_PROTO:
            continue
        dev = names.get(int(r.get_attr("RTA_OIF") or 0), "?")
        if dev == own_bridge:
            continue
        cidr = str(ipaddress.IPv4Network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}", strict=False))
        out.append(HostNet(cidr, f"route dev {dev}"))
    return out


def podman_networks(
    which: Callable[[str], str | None] = shutil.which, config: Path = Path("/etc/containers/networks")
) -> list[HostNet]:
    """Podman's networks where Podman is installed: its configured ones, and its default."""
    if which("podman") is None:
        return []
    found: dict[str, str] = {}
    for path in sorted(config.glob("*.json")) if config.is_dir() else ():
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            doc = json.loads(path.read_text())
            name = str(doc.get("name", path.stem))
            for sub in doc.get("subnets") or ():
                found.setdefault(str(ipaddress.ip_network(sub["subnet"], strict=False)), name)
    if "podman" not in found.values():
        found.setdefault(PODMAN_DEFAULT, "podman")
    return [HostNet(cidr, f"Podman network {name}") for cidr, name in found.items() if ":" not in cidr]


def local_addresses(ipr: Any) -> set[str]:
    """This network namespace's IPv4 addresses."""
    try:
        return {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=socket.AF_INET)}
    except NetlinkError as e:
        raise LinkError("addresses", "list", e.code) from e


def source_address(peer: str) -> str:
    """The local address the kernel would send from to reach peer ("host:port" or "host"); ""
    if it has no route there. A UDP socket's connect() only picks the route: nothing is sent."""
    host = peer.rpartition(":")[0] if peer.count(":") == 1 else peer
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        try:
            host = socket.gethostbyname(host)
        except OSError:
            return ""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return str(s.getsockname()[0])
    return ""
