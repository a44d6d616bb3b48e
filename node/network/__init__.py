"""Container networking for the node agent (pyroute2; iptables only for hostPorts).

Vocabulary:
    bridge       one per node agent, e.g. "orch1"; holds the subnet's gateway address
    gateway      the subnet's first host address, on the bridge
    host veth    "ov" + 10 hex of hash(bridge, instance), enslaved to the bridge
    eth0         the veth's peer, created inside the container's network namespace
    IPAM         one file per allocated address under NetworkConfig.state_dir
    subnet       the node's share of the cluster CIDR, from the scheduler (cluster.py)
    node IP      where other nodes route this node's subnet (routes.py: host-gw, proto 152)

Typical use by the agent (blocking calls: from a worker thread, not a coroutine)::

    net = NodeNetwork(NetworkConfig("orch1", "10.88.1.0/24", state_dir / "ipam"))
    net.ensure_bridge()                        # at start
    att = net.attach(instance, pid, ports)     # in the runtime's on_netns(pid) hook; ports: hostPorts
    net.detach(instance)                       # when the instance is gone
    net.addresses()                            # after a restart: who holds which address
    net.teardown()                             # `orch up` shutdown

The cluster network around it (docs/networking.md): cluster.py (the recorded subnet, bridge
and NAT set-up, teardown), routes.py (routes to the other nodes' subnets), masquerade.py (NAT
leaving the cluster, hostPort hairpin), hostnets.py (what the host has, for the overlap check).

Errors: see node.network.errors (NetworkError and its subclasses).
"""

from node.network.errors import (
    AddressExhausted,
    ConfigError,
    HostPortNotAllowed,
    LinkError,
    NamespaceError,
    NetworkError,
    StateError,
)
from node.network.hostports import PortMapping
from node.network.model import Attachment, NetworkConfig
from node.network.names import veth_name
from node.network.node import NodeNetwork
from node.network.portpolicy import PortRange

__all__ = [
    "AddressExhausted",
    "Attachment",
    "ConfigError",
    "HostPortNotAllowed",
    "LinkError",
    "NamespaceError",
    "NetworkConfig",
    "NetworkError",
    "NodeNetwork",
    "PortMapping",
    "PortRange",
    "StateError",
    "veth_name",
]
