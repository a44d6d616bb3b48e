"""hostPort publishing: DNAT from the host's ports to containers (iptables nat table).

What Kubernetes' CNI portmap plugin and Docker's `-p` do, for one node:

    nat PREROUTING  -m addrtype --dst-type LOCAL -j ORCH-HP-<bridge>   traffic from other hosts
    nat OUTPUT      -m addrtype --dst-type LOCAL -j ORCH-HP-<bridge>   traffic from this host
    ORCH-HP-<bridge>: one DNAT per published port, commented with the instance
    nat POSTROUTING -o <bridge> -s 127.0.0.0/8 -j MASQUERADE            so localhost clients work
    net.ipv4.conf.<bridge>.route_localnet = 1                           (vanishes with the bridge)
    raw PREROUTING  -i <bridge> -d 127.0.0.0/8 -j DROP                  but containers may not reach
                                                                        the host's loopback services

Level-triggered: the published ports of each instance are files under
state_dir (they survive agent restarts, like the kernel's rules do), and every
change rewrites the whole chain from them in one iptables-restore, so the
rules always equal the files. A file that cannot be read is set aside
(<file>.corrupt-<time>) with a warning; the agent publishes that instance's
ports again when it adopts it.

`address` limits publishing to one local address (orch up gives each node of a
one-host cluster its own 127.x address, as if they were separate machines);
empty means every local address but loopback: a hostPort never captures the
host's connections to 127.0.0.1 unless the operator asked for it. Which ports
the node publishes at all is its own policy (portpolicy.py), checked here.
Traffic from other hosts also needs net.ipv4.ip_forward=1, as for Kubernetes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.network import iptables
from node.network.errors import HostPortNotAllowed
from node.network.iptables import Runner
from node.network.iptables import run as _run
from node.network.portpolicy import DEFAULT_RANGE, PortRange, host_listening, refusal
from node.runtime.layout import read_json, set_aside
from orch import files

__all__ = ["HostPorts", "PortMapping", "chain_name", "chain_rules", "ip_forward_enabled"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"  # tcp | udp


def chain_name(bridge: str) -> str:
    return f"ORCH-HP-{bridge}"[:28]  # iptables chain names are at most 28 characters


def chain_rules(chain: str, published: dict[str, tuple[str, list[PortMapping]]], address: str = "") -> str:
    """iptables-restore input that replaces the chain with one DNAT per mapping (pure)."""
    lines = ["*nat", f":{chain} - [0:0]"]
    dest = f" -d {address}/32" if address else " ! -d 127.0.0.0/8"  # loopback only when asked for
    for instance, (ip, mappings) in sorted(published.items()):
        for m in mappings:
            lines.append(
                f"-A {chain}{dest} -p {m.protocol} -m {m.protocol} --dport {m.host_port}"
                f' -m comment --comment "{instance}" -j DNAT --to-destination {ip}:{m.container_port}'
            )
    return "\n".join([*lines, "COMMIT", ""])


class HostPorts:
    def __init__(
        self,
        bridge: str,
        state_dir: Path,
        address: str = "",
        run: Runner = _run,
        *,
        allowed: PortRange = DEFAULT_RANGE,
        node: str = "",
        proc_net: Path = Path("/proc/net"),
    ) -> None:
        self.bridge, self.address = bridge, address
        self.allowed, self.node, self._proc_net = allowed, node, proc_net
        self.chain = chain_name(bridge)
        self._dir = state_dir
        self._run = run
        self._hooked = False
        self._no_chain = False  # known: no chain of ours in the nat table (and nothing published)
        # Worker threads publish and unpublish concurrently: each sync must see the others' files.
        self._lock = threading.RLock()

    def _jumps(self) -> list[list[str]]:
        """Rules around the chain, each as [table, chain, match..., target]."""
        local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", self.chain]
        masquerade = ["-o", self.bridge, "-s", "127.0.0.0/8", "-j", "MASQUERADE"]
        # route_localnet would otherwise let a container with NET_RAW send to 127.0.0.1 (CVE-2020-8558).
        no_loopback = ["-i", self.bridge, "-d", "127.0.0.0/8", "-j", "DROP"]
        return [
            ["raw", "PREROUTING", *no_loopback],
            ["nat", "PREROUTING", *local],
            ["nat", "OUTPUT", *local],
            ["nat", "POSTROUTING", *masquerade],
        ]

    def published(self) -> dict[str, tuple[str, list[PortMapping]]]:
        """instance -> (container ip, mappings), from the state files."""
        out: dict[str, tuple[str, list[PortMapping]]] = {}
        if not self._dir.is_dir():
            return out
        for path in sorted(self._dir.glob("*.json")):
            doc = read_json(path)  # sets an unreadable file aside
            try:
                if doc is not None:
                    out[path.stem] = (str(doc["ip"]), [_mapping(m) for m in doc["ports"]])
            except (ValueError, KeyError, TypeError) as e:
                set_aside(path, f"not a host port record: {e!r}")
        return out

    def check(self, instance: str, mappings: Sequence[PortMapping]) -> None:
        """Raise HostPortNotAllowed unless this node publishes every mapping (portpolicy.py)."""
        if not mappings:
            return
        listening = host_listening(self._proc_net)
        taken = {
            (m.host_port, m.protocol): other
            for other, (_, published) in self.published().items()
            if other != instance
            for m in published
        }
        for m in mappings:
            if why := refusal(m.host_port, m.protocol, self.allowed, listening, taken, self.node):
                raise HostPortNotAllowed(why)

    def publish(self, instance: str, ip: str, mappings: Sequence[PortMapping]) -> None:
        """Publish the mappings (replacing the instance's earlier ones); HostPortNotAllowed if
        the node's policy refuses one, and then nothing of them is published."""
        with self._lock:
            self.check(instance, mappings)
            self._publish(instance, ip, mappings)

    def _publish(self, instance: str, ip: str, mappings: Sequence[PortMapping]) -> None:
        if not mappings:
            return self.unpublish(instance)
        self._dir.mkdir(parents=True, exist_ok=True)
        doc = {"ip": ip, "ports": [{"host_port": m.host_port, "container_port": m.container_port,
                                    "protocol": m.protocol} for m in mappings]}  # fmt: skip
        files.write_json_atomic(self._dir / f"{instance}.json", doc)  # fsynced: it outlives a reboot
        self.sync()

    def unpublish(self, instance: str) -> None:
        with self._lock:
            path = self._dir / f"{instance}.json"
            if path.exists():
                path.unlink()
                self.sync()

    def sync(self) -> None:
        """Make the kernel's rules equal the state files (idempotent)."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        published = self.published()
        # Nothing published, nothing installed: leave the host's tables alone. Looked up once (a
        # leftover chain of an earlier agent), not at every periodic sync: one iptables process
        # less every 10 s on a node without hostPorts.
        nothing = not published and not self._hooked
        if nothing and (self._no_chain or not iptables.chain_exists(self._run, "nat", self.chain)):
            self._no_chain = True
            return
        iptables.restore(self._run, chain_rules(self.chain, published, self.address))
        if not self._hooked:
            for table, *rule in self._jumps():
                iptables.add_jump(self._run, table, rule)
            if not self.address.startswith("127.") and not ip_forward_enabled():
                log.warning("net.ipv4.ip_forward is 0: hostPorts answer only to clients on this host")
            route_localnet = Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet")
            if self.address.startswith("127.") and route_localnet.exists():
                # Clients on the published loopback address: 127.x sources may leave via the bridge.
                route_localnet.write_text("1")
            self._hooked = True

    def teardown(self) -> None:
        """Remove the jumps, the masquerade rule, the chain and the state files."""
        for table, *rule in self._jumps():
            iptables.remove_jump(self._run, table, rule)
        iptables.delete_chain(self._run, "nat", self.chain)
        for path in self._dir.glob("*.json*") if self._dir.is_dir() else ():  # with the set-aside ones
            path.unlink()
        if self._dir.is_dir() and not any(self._dir.iterdir()):
            self._dir.rmdir()
        self._hooked = False


def _mapping(doc: Any) -> PortMapping:
    m = PortMapping(int(doc["host_port"]), int(doc["container_port"]), str(doc.get("protocol", "tcp")))
    if m.protocol not in ("tcp", "udp") or not (0 < m.host_port < 65536 and 0 < m.container_port < 65536):
        raise ValueError(f"bad mapping {doc}")
    return m


def ip_forward_enabled() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    except OSError:
        return False
