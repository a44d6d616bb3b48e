"""The agent's side of the cluster network, between its session and node.network:

- what the node tells the scheduler when it registers (it runs container networking, the
  subnet it must have, its node IP, its host's networks for the overlap check);
- on `registered`, the subnet the scheduler assigned: bridge and NAT set up, and the
  NodeNetwork handed to the agent (`on_network`), before any desired set is applied;
- the routes to the other nodes' subnets: set from each Routes message, and again every
  RESYNC seconds with the NAT chains (level-triggered: what someone removed comes back).

At start, a node whose subnet is recorded from before sets its network up again at once
(healing it), before the scheduler answers. `ready` is set once the network is up; then
`network.config` holds the subnet and the bridge's gateway address. A network that cannot be set
up does not end the agent: it says why, and the next registration tries again
(`RegistrationFailed`); only a --subnet that contradicts the recorded one is fatal.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable

from node.network import NetworkError, NodeNetwork
from node.network.cluster import ClusterNetwork
from node.network.hostnets import HostNet, source_address
from node.network.hostports import ip_forward_enabled
from node.network.routes import NodeRoute
from node.session import RegistrationFailed
from orch.v1 import agent_pb2 as apb

log = logging.getLogger(__name__)

RESYNC = 10.0  # s between two level-triggered passes over routes and NAT


def node_ip_for(explicit: str, listen: str, scheduler: str) -> str:
    """--node-ip; else the agent's listen address if it names one; else the local address
    towards the first scheduler (what the kernel would send from)."""
    if explicit:
        return explicit
    host = listen.rpartition(":")[0].strip("[]")
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            return host
    except ValueError:
        pass
    return source_address(scheduler)


class Networking:
    def __init__(self, podnet: ClusterNetwork, node_ip: Callable[[], str], on_network: Callable[[NodeNetwork], None]):
        self.podnet = podnet
        self._node_ip = node_ip
        self._on_network = on_network
        self.network: NodeNetwork | None = None
        self.ready = asyncio.Event()
        self.host_networks: list[HostNet] = []
        self._routes: list[NodeRoute] | None = None  # None: no table from the scheduler yet
        self._wake = asyncio.Event()
        self._problems: list[str] = []
        self._configured: tuple[str, str] | None = None  # (subnet, cluster CIDR) set up by this process

    def register_fields(self) -> apb.Register:
        """The networking fields of Register (merged into the agent's)."""
        return apb.Register(
            container_network=True,
            subnet=self.podnet.requested_subnet(),
            node_ip=self._node_ip(),
            host_networks=[apb.HostNetwork(cidr=n.cidr, source=n.source) for n in self.host_networks],
        )

    async def start(self) -> None:
        """Before the session: the host's networks, and the recorded network set up again."""
        self.podnet.requested_subnet()  # a --subnet that contradicts the recorded one fails now
        self.host_networks = await asyncio.to_thread(self.podnet.host_networks)
        recorded = await asyncio.to_thread(self.podnet.recorded)
        if recorded is not None:
            try:
                await self._configure(recorded.subnet, recorded.cluster_cidr)
            except (NetworkError, OSError) as e:  # each registration tries again, and says why
                log.error("setting up the network of subnet %s again failed: %s", recorded.subnet, e)

    async def on_registered(self, registered: apb.Registered) -> None:
        if not registered.subnet:  # a scheduler that assigns none: an older one
            log.error("the scheduler assigned no subnet: containers get no network until one does")
            return
        if self._configured == (registered.subnet, registered.cluster_cidr):
            # Set up already (from the record at this process's start, or at an earlier
            # registration): again here would only delay the desired set (a dozen iptables runs,
            # seconds on a starved host), and with it the adoption of running containers. Every
            # RESYNC makes the bridge, the NAT and the hostPort rules what they should be anyway.
            return
        if self.network is None or self.network.config.subnet != registered.subnet:
            log.info("subnet %s of cluster CIDR %s", registered.subnet, registered.cluster_cidr)
        try:
            await self._configure(registered.subnet, registered.cluster_cidr)
        except (NetworkError, OSError) as e:  # no desired set without the network: register again
            raise RegistrationFailed(f"the network of subnet {registered.subnet} cannot be set up: {e}") from e

    async def _configure(self, subnet: str, cluster_cidr: str) -> None:
        first = self.network is None
        self.network = await asyncio.to_thread(self.podnet.configure, subnet, cluster_cidr)
        if first and not ip_forward_enabled():
            log.warning(
                "net.ipv4.ip_forward is 0: this node's instances reach only each other and this host (not "
                "other nodes' instances, nor the outside); sysctl -w net.ipv4.ip_forward=1"
            )
        self._configured = (subnet, cluster_cidr)
        self._on_network(self.network)
        self.ready.set()
        self._wake.set()

    def on_routes(self, routes: apb.Routes) -> None:
        self._routes = [NodeRoute(r.node, r.subnet, r.node_ip) for r in routes.nodes]
        self._wake.set()

    async def run(self) -> None:
        """Routes whenever the table changes, and routes, NAT and host networks every RESYNC s."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), RESYNC)
                woken = True
            except TimeoutError:
                woken = False
            self._wake.clear()
            try:
                await self._sync(periodic=not woken)
            except Exception as e:  # whatever it was, the next pass tries again: the task lives on
                self._report([f"{type(e).__name__}: {e}" if not isinstance(e, NetworkError) else str(e)])

    async def _sync(self, periodic: bool) -> None:
        if periodic:
            self.host_networks = await asyncio.to_thread(self.podnet.host_networks)
        if self.network is None:
            return
        if periodic:
            recorded = await asyncio.to_thread(self.podnet.recorded)
            if recorded is not None:
                await asyncio.to_thread(self.podnet.masquerade.ensure, recorded.subnet, recorded.cluster_cidr)
        if self._routes is not None:  # never from nothing: routes left from before stay until the table comes
            self._report(await asyncio.to_thread(self.podnet.sync_routes, self._routes))
        if periodic:  # what configure sets up but the NAT (a re-registration does not set it up again)
            try:  # the bridge, its gateway address, the hostPort rules as recorded (a flushed chain)
                await asyncio.to_thread(self.network.ensure_bridge)
            except (NetworkError, OSError) as e:
                log.warning("bridge and hostPorts: %s", e)

    def _report(self, problems: list[str]) -> None:
        if problems != self._problems:
            for p in problems:
                log.warning("routes: %s", p)
            self._problems = problems
