"""The node's part of the cluster network: its subnet from the scheduler, its bridge, NAT
and the routes to the other nodes' subnets (docs/networking.md).

    podnet = ClusterNetwork(ClusterNetworkConfig("orch0", state_dir, node="m1"))
    podnet.requested_subnet()           # for Register: --subnet, or the one its containers use
    net = podnet.configure(subnet, cidr)  # after Registered: bridge, NAT; returns the NodeNetwork
    podnet.sync_routes(nodes)           # each Routes, and now and then: host-gw routes
    podnet.teardown()                   # orch node --cleanup: routes, NAT, bridge, state

The subnet is recorded in <state_dir>/network.json once configured: an agent that
restarts sets its bridge and NAT up again at once (healing what went missing) and asks
the scheduler for the same subnet, which its containers still use. Blocking calls: run
them in a thread.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from node.network import routes as rt
from node.network.errors import ConfigError, NetworkError
from node.network.hostnets import HostNet, host_routes, local_addresses, podman_networks
from node.network.masquerade import Masquerade
from node.network.model import NetworkConfig
from node.network.node import NodeNetwork, forbid_event_loop, host_netlink
from node.runtime.layout import read_json
from orch import files

__all__ = ["ClusterNetwork", "ClusterNetworkConfig", "Recorded"]

log = logging.getLogger(__name__)
STATE_FILE = "network.json"
ANY_SUBNET = "0.0.0.0/0"  # teardown without a recorded subnet: every address-named IPAM file is ours


@dataclass(frozen=True, slots=True)
class Recorded:
    subnet: str
    cluster_cidr: str


@dataclass(frozen=True, slots=True)
class ClusterNetworkConfig:
    bridge: str
    state_dir: Path  # the agent's: network.json here, IPAM state in ipam/
    subnet: str = ""  # orch node --subnet: insist on this one; "": the scheduler's pick
    node: str = ""
    base: NetworkConfig | None = field(default=None)  # publish address, port range, MTU (subnet unset)


class ClusterNetwork:
    def __init__(self, config: ClusterNetworkConfig) -> None:
        self.config = config
        self.masquerade = Masquerade(config.bridge)
        self.network: NodeNetwork | None = None
        self._skipped: list[rt.Skipped] = []

    # -- the subnet ------------------------------------------------------

    def recorded(self) -> Recorded | None:
        doc = read_json(self.config.state_dir / STATE_FILE)  # sets an unreadable file aside
        if not isinstance(doc, dict) or not doc.get("subnet"):
            return None
        return Recorded(str(doc["subnet"]), str(doc.get("clusterCidr", "")))

    def requested_subnet(self) -> str:
        """The subnet this node must have: --subnet, else the one its containers use; "": any."""
        recorded = self.recorded()
        if self.config.subnet and recorded is not None and recorded.subnet != self.config.subnet:
            raise ConfigError(
                f"--subnet {self.config.subnet}: this node's containers use {recorded.subnet} "
                f"({self.config.state_dir / STATE_FILE}); run `orch node ... --cleanup` first to change it"
            )
        return self.config.subnet or (recorded.subnet if recorded else "")

    def configure(self, subnet: str, cluster_cidr: str) -> NodeNetwork:
        """Record the subnet, then set up the bridge (its gateway address) and NAT. Idempotent."""
        forbid_event_loop()
        if self.network is not None and self.network.config.subnet != subnet:
            has = self.network.config.subnet
            raise ConfigError(f"subnet {subnet} from the scheduler: this node's bridge has {has}")
        net = self.network or NodeNetwork(self._network_config(subnet))
        files.write_json_atomic(self.config.state_dir / STATE_FILE, {"subnet": subnet, "clusterCidr": cluster_cidr})
        net.ensure_bridge()
        self.masquerade.ensure(subnet, cluster_cidr)
        self.network = net
        return net

    def _network_config(self, subnet: str) -> NetworkConfig:
        base = self.config.base or NetworkConfig(self.config.bridge, subnet, Path())
        return replace(base, bridge=self.config.bridge, subnet=subnet, state_dir=self.config.state_dir / "ipam")

    # -- what the host has -------------------------------------------------

    def host_networks(self) -> list[HostNet]:
        """The host's routes (but orch's own and this node's bridge's) and Podman's networks."""
        with host_netlink() as ipr:
            found = host_routes(ipr, self.config.bridge)
        return found + podman_networks()

    # -- routes --------------------------------------------------------------

    def sync_routes(self, nodes: list[rt.NodeRoute]) -> list[str]:
        """Make orch's routes equal the ones these nodes need; returns the problems."""
        if self.network is None:
            return ["no subnet yet: routes wait for the registration"]
        with host_netlink() as ipr:
            want, skipped = rt.desired(nodes, self.network.config.subnet, local_addresses(ipr))
            todo = rt.plan(want, rt.actual(ipr))
            problems = rt.apply(ipr, todo)
        if skipped != self._skipped:
            for s in skipped:
                log.warning("no route to node %s: %s", s.node, s.why)
            self._skipped = skipped
        for dst, gateway in sorted({**todo.add, **todo.change}.items()):
            log.info("route %s via %s", dst, gateway)
        for dst in todo.delete:
            log.info("route %s removed: no node holds it any more", dst)
        return problems

    # -- teardown ------------------------------------------------------------

    def teardown(self) -> None:
        """Routes with orch's mark, the NAT chains, the bridge and its veths, the IPAM state and
        the recorded subnet; what is gone already counts as removed."""
        with host_netlink() as ipr:
            problems = rt.apply(ipr, rt.plan({}, rt.actual(ipr)))
        if problems:
            raise NetworkError("; ".join(problems))
        self.masquerade.teardown()
        recorded = self.recorded()
        NodeNetwork(self._network_config(recorded.subnet if recorded else ANY_SUBNET)).teardown()
        with contextlib.suppress(FileNotFoundError):
            (self.config.state_dir / STATE_FILE).unlink()
        self.network = None
