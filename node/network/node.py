"""NodeNetwork: one node's bridge, its containers' veths, and their addresses.

Layout, per node (several nodes may share a host, each with its own bridge
and subnet):

    host netns:       <bridge> (gateway/prefix) ── ov<hash> ─┐ veth
    container netns:                           eth0 <ip>/prefix, default via gateway, lo up

Host-to-container traffic is plain L2 on the bridge, so it needs neither
ip_forward nor iptables. Only hostPorts use iptables (DNAT, hostports.py).

The methods are blocking netlink calls. pyroute2's sync API fails inside a
running asyncio loop ("This event loop is already running"), so call them
from a worker thread (``await asyncio.to_thread(net.attach, ...)``) or from
the runtime's synchronous hook, never from a coroutine directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Iterator, Sequence
from typing import Any

from node.network import links
from node.network.errors import LinkError, NetworkError
from node.network.hostports import HostPorts, PortMapping
from node.network.ipam import Ipam, check_instance
from node.network.model import Attachment, NetworkConfig
from node.network.names import CONTAINER_IFNAME, VETH_PREFIX, bridge_mac, veth_name
from node.network.netns import netlink_socket_in, open_netns
from node.network.pyroute import IPRoute


def forbid_event_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise NetworkError("node.network blocks; call it via asyncio.to_thread, not from the event loop")


@contextlib.contextmanager
def host_netlink() -> Iterator[Any]:
    forbid_event_loop()
    with IPRoute() as ipr:
        yield ipr


@contextlib.contextmanager
def _inside(netns_fd: int, pid: int) -> Iterator[Any]:
    # fileno= makes pyroute2 adopt our socket instead of forking into a netns.
    with IPRoute(fileno=netlink_socket_in(netns_fd, pid).detach()) as ns:
        yield ns


class NodeNetwork:
    """Container networking of one node agent; see the module docstring."""

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self._ipam = Ipam(config.subnet, config.state_dir)
        self.host_ports = HostPorts(
            config.bridge,
            config.state_dir / "hostports",
            config.publish_address,
            allowed=config.host_port_range,
            node=config.node,
        )

    def ensure_bridge(self) -> None:
        """Create the bridge if missing, give it the gateway address, bring it up. Idempotent."""
        cfg = self.config
        with host_netlink() as ipr:
            index = links.ensure_bridge(ipr, cfg.bridge, cfg.mtu, bridge_mac(cfg.bridge))
            links.ensure_addr(ipr, index, cfg.bridge, str(cfg.gateway), cfg.network.prefixlen)
        self.host_ports.sync()  # after an agent restart: the rules equal the recorded ports again

    def veth_name(self, instance: str) -> str:
        return veth_name(self.config.bridge, instance)

    def attach(self, instance: str, pid: int, ports: Sequence[PortMapping] = ()) -> Attachment:
        """Give the network namespace of ``pid`` an eth0 on the bridge, and publish its host ports.

        Idempotent per instance: the address is kept, and a veth left from an
        earlier attach is replaced. On failure the veth is removed and an
        address allocated by this call is released.
        """
        check_instance(instance)
        forbid_event_loop()
        had_ip = self._ipam.lookup(instance) is not None
        ip = self._ipam.allocate(instance)
        attachment = Attachment(
            instance=instance,
            ip=str(ip),
            prefixlen=self.config.network.prefixlen,
            gateway=str(self.config.gateway),
            host_veth=self.veth_name(instance),
        )
        try:
            self._plumb(attachment, pid)
            self.host_ports.publish(instance, attachment.ip, ports)
        except BaseException:
            self._undo(attachment, release=not had_ip)
            raise
        return attachment

    def check_host_ports(self, instance: str, ports: Sequence[PortMapping]) -> None:
        """HostPortNotAllowed unless this node would publish all of ports for instance
        (attach checks again: a port may be taken meanwhile)."""
        self.host_ports.check(instance, ports)

    def detach(self, instance: str) -> None:
        """Unpublish its host ports, delete its host veth (gone already is fine), release its address."""
        check_instance(instance)
        self.host_ports.unpublish(instance)
        with host_netlink() as ipr:
            links.delete_link(ipr, self.veth_name(instance))
        self._ipam.release(instance)

    def addresses(self) -> dict[str, str]:
        """instance -> allocated address, from the IPAM state (survives agent restarts)."""
        return {owner: str(ip) for ip, owner in sorted(self._ipam.allocations().items())}

    def teardown(self) -> None:
        """Remove the host port rules, every veth of this bridge, the bridge itself, and the IPAM state."""
        self.host_ports.teardown()
        bridge = self.config.bridge
        with host_netlink() as ipr:
            index = links.lookup(ipr, bridge)
            if index is not None and links.link_kind(ipr, index) != "bridge":
                raise LinkError(bridge, "tear down (not a bridge; left alone)", errno.EEXIST)
            # Only our own veths: a port someone else enslaved is not ours to delete.
            ports = [p for p in links.ports_of(ipr, index) if p.startswith(VETH_PREFIX)] if index else []
            known = [self.veth_name(owner) for owner in self._ipam.allocations().values()]
            for name in dict.fromkeys([*ports, *known]):  # ordered, without duplicates
                links.delete_link(ipr, name)
            links.delete_link(ipr, bridge)
        self._ipam.clear()

    # -- internals ---------------------------------------------------------

    def _plumb(self, att: Attachment, pid: int) -> None:
        cfg = self.config
        with open_netns(pid) as netns_fd:
            with host_netlink() as ipr:
                bridge = links.require(ipr, cfg.bridge)
                # A leftover veth (earlier attach, crashed agent) would make add fail with EEXIST.
                links.delete_link(ipr, att.host_veth)
                links.add_veth(ipr, att.host_veth, bridge, cfg.mtu, CONTAINER_IFNAME, netns_fd)
                links.set_hairpin(ipr, att.host_veth)
            with _inside(netns_fd, pid) as ns:
                links.configure_container(ns, CONTAINER_IFNAME, att.ip, att.prefixlen, att.gateway)

    def _undo(self, att: Attachment, release: bool) -> None:
        # Best effort: the error that made attach fail is the one to report.
        with contextlib.suppress(Exception):
            self.host_ports.unpublish(att.instance)
        with contextlib.suppress(Exception), host_netlink() as ipr:
            links.delete_link(ipr, att.host_veth)
        if release:
            with contextlib.suppress(Exception):
                self._ipam.release(att.instance)
