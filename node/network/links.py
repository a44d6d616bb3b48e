"""Small netlink steps on an open pyroute2 IPRoute, in ``ensure_*`` style.

EEXIST on create means "already there: set the rest instead"; ENODEV or
ENOENT on delete means "already gone" and counts as success. Every other
NetlinkError becomes a LinkError naming the link and the operation. This is
the only module that calls pyroute2's untyped ``**kwarg`` API.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import Any

from node.network.errors import LinkError
from node.network.pyroute import NetlinkError

LOOPBACK = "lo"
_GONE = (errno.ENODEV, errno.ENOENT)


@contextlib.contextmanager
def netlink_op(name: str, op: str, ok: tuple[int, ...] = ()) -> Iterator[None]:
    """Translate a NetlinkError into LinkError(name, op, errno), ignoring codes in ``ok``."""
    try:
        yield
    except NetlinkError as exc:
        if exc.code not in ok:
            raise LinkError(name, op, exc.code) from exc


def lookup(ipr: Any, name: str) -> int | None:
    """Index of link ``name``, or None."""
    with netlink_op(name, "look up"):
        found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def require(ipr: Any, name: str) -> int:
    """Index of link ``name``; LinkError(ENODEV) if it does not exist."""
    index = lookup(ipr, name)
    if index is None:
        raise LinkError(name, "look up", errno.ENODEV)
    return index


def link_kind(ipr: Any, index: int) -> str | None:
    """IFLA_INFO_KIND of link ``index`` ("bridge", "veth", ...), or None for a plain device."""
    with netlink_op(str(index), "get link"):
        (msg,) = ipr.get_links(index)
    info = msg.get_attr("IFLA_LINKINFO")
    return None if info is None else info.get_attr("IFLA_INFO_KIND")


def ensure_bridge(ipr: Any, name: str, mtu: int, mac: str) -> int:
    """Create bridge ``name`` if missing, then set its MTU and bring it up; return its index."""
    with netlink_op(name, "create bridge", ok=(errno.EEXIST,)):
        ipr.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu)
    index = require(ipr, name)
    if link_kind(ipr, index) != "bridge":
        raise LinkError(name, "create bridge (a link of another kind has this name)", errno.EEXIST)
    with netlink_op(name, "set up"):
        ipr.link("set", index=index, mtu=mtu, state="up")
    return index


def ensure_addr(ipr: Any, index: int, name: str, address: str, prefixlen: int) -> None:
    """Add ``address/prefixlen`` to link ``index`` unless it is already there."""
    with netlink_op(name, f"add address {address}/{prefixlen}", ok=(errno.EEXIST,)):
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)


def delete_link(ipr: Any, name: str) -> None:
    """Delete link ``name``; a link that is already gone counts as deleted."""
    with netlink_op(name, "delete", ok=_GONE):
        ipr.link("del", ifname=name)


def add_veth(ipr: Any, host: str, master: int, mtu: int, peer: str, peer_netns_fd: int) -> None:
    """Create veth ``host`` (enslaved to ``master``, up) with its peer born in another namespace.

    Creating the peer directly in the container's namespace, already named
    ``peer``, saves the move and the rename (two requests, and a window in
    which a half-configured link is visible on the host).
    """
    peer_spec = {"ifname": peer, "net_ns_fd": peer_netns_fd, "mtu": mtu}
    with netlink_op(host, "create veth"):
        ipr.link("add", ifname=host, kind="veth", master=master, mtu=mtu, state="up", peer=peer_spec)


def set_hairpin(ipr: Any, name: str) -> None:
    """Let the bridge send frames back out of link ``name``, the port they came in on (CNI
    bridge's hairpinMode). With br_netfilter loaded (bridge-nf-call-iptables=1, as Docker
    leaves it), an instance's connection to a hostPort of its own node that DNATs back to
    itself is turned around on the bridge itself, and must leave through its own port."""
    index = require(ipr, name)
    with netlink_op(name, "set hairpin mode"):
        ipr.brport("set", index=index, mode=1)


def ports_of(ipr: Any, master: int) -> list[str]:
    """Names of the links enslaved to ``master``."""
    with netlink_op(str(master), "list ports"):
        links = ipr.get_links()
    return [str(msg.get_attr("IFLA_IFNAME")) for msg in links if msg.get_attr("IFLA_MASTER") == master]


def configure_container(ns: Any, ifname: str, address: str, prefixlen: int, gateway: str) -> None:
    """Inside the container: address ``ifname``, bring it and lo up, default route via ``gateway``."""
    index = require(ns, ifname)
    ensure_addr(ns, index, ifname, address, prefixlen)
    with netlink_op(ifname, "set up"):
        ns.link("set", index=index, state="up")
    with netlink_op(LOOPBACK, "set up"):
        ns.link("set", index=require(ns, LOOPBACK), state="up")
    # replace, not add: a re-attach must not fail on the route it set before.
    with netlink_op(ifname, f"set default route via {gateway}"):
        ns.route("replace", dst="default", gateway=gateway, oif=index)


def replace_route(ipr: Any, dst: str, oif: int, src: str, priority: int) -> None:
    """Route dst out of link oif from address src, at metric priority (created or updated)."""
    with netlink_op(str(oif), f"set route {dst} (metric {priority})"):
        ipr.route("replace", dst=dst, oif=oif, prefsrc=src, priority=priority, scope=253)  # 253: link


def delete_route(ipr: Any, dst: str, oif: int, priority: int) -> None:
    """Delete that route; one that is already gone (with its link) counts as deleted."""
    with netlink_op(str(oif), f"delete route {dst} (metric {priority})", ok=(*_GONE, errno.ESRCH)):
        ipr.route("del", dst=dst, oif=oif, priority=priority)
