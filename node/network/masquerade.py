"""NAT and forwarding for a node's containers (iptables), around its bridge:

    nat POSTROUTING -j ORCH-MASQ-<bridge>
    ORCH-MASQ-<bridge>:
      -s <subnet> -d <subnet> -m conntrack --ctstate DNAT -j MASQUERADE   hairpin: an instance
            reaching a hostPort of its own node, DNATed back onto the bridge, must see the
            answer come from the node's address, not straight from the other instance
      -s <subnet> -d <cluster CIDR> -j RETURN       other nodes' instances see the real source
      -s <subnet> -d 224.0.0.0/4 -j RETURN          multicast is never masqueraded
      -s <subnet> -j MASQUERADE                     leaving the cluster: the node's address
    filter FORWARD -j ORCH-FWD-<bridge>
    ORCH-FWD-<bridge>:
      -i <bridge> -j ACCEPT, -o <bridge> -j ACCEPT  routed to and from the containers even
                                                    under a FORWARD policy of DROP (Docker's)

Level-triggered like hostports.py: `ensure` rewrites both chains whole with one
iptables-restore and adds a missing jump, so an agent start heals whatever was removed
by hand; `teardown` removes the jumps and the chains. Forwarding itself needs
net.ipv4.ip_forward=1 (docs/deploy.md; orch up --hosts sets it on each host).
"""

from __future__ import annotations

from node.network import iptables

__all__ = ["Masquerade", "chain_names", "rules"]

MULTICAST = "224.0.0.0/4"


def chain_names(bridge: str) -> tuple[str, str]:
    """(nat chain, filter chain); iptables allows 28 characters, a bridge name has at most 15."""
    return f"ORCH-MASQ-{bridge}", f"ORCH-FWD-{bridge}"


def rules(bridge: str, subnet: str, cluster_cidr: str) -> str:
    """iptables-restore input that replaces both chains (pure)."""
    nat, fwd = chain_names(bridge)
    return "\n".join(
        [
            "*nat",
            f":{nat} - [0:0]",
            f'-A {nat} -s {subnet} -d {subnet} -m conntrack --ctstate DNAT -m comment --comment "hairpin"'
            " -j MASQUERADE",
            f"-A {nat} -s {subnet} -d {cluster_cidr} -j RETURN",
            f"-A {nat} -s {subnet} -d {MULTICAST} -j RETURN",
            f'-A {nat} -s {subnet} -m comment --comment "leaving the cluster" -j MASQUERADE',
            "COMMIT",
            "*filter",
            f":{fwd} - [0:0]",
            f"-A {fwd} -i {bridge} -j ACCEPT",
            f"-A {fwd} -o {bridge} -j ACCEPT",
            "COMMIT",
            "",
        ]
    )


class Masquerade:
    def __init__(self, bridge: str, run: iptables.Runner = iptables.run) -> None:
        self.bridge = bridge
        self._run = run
        self.nat_chain, self.forward_chain = chain_names(bridge)

    def _jumps(self) -> list[tuple[str, list[str]]]:
        return [("nat", ["POSTROUTING", "-j", self.nat_chain]), ("filter", ["FORWARD", "-j", self.forward_chain])]

    def ensure(self, subnet: str, cluster_cidr: str) -> None:
        """The chains as they must be, and the jumps into them. Idempotent."""
        iptables.restore(self._run, rules(self.bridge, subnet, cluster_cidr))
        for table, rule in self._jumps():
            iptables.add_jump(self._run, table, rule)

    def teardown(self) -> None:
        """The jumps (every copy), then the chains; what is gone already counts as removed."""
        for table, rule in self._jumps():
            iptables.remove_jump(self._run, table, rule)
        iptables.delete_chain(self._run, "nat", self.nat_chain)
        iptables.delete_chain(self._run, "filter", self.forward_chain)
