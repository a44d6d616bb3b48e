"""Which hostPorts a node publishes: its own policy, not the scheduler's word.

A hostPort is a DNAT of the node's own port (hostports.py), also for the
node's own outgoing connections: published on a port the host uses, it
would capture the host's connections to etcd, the scheduler, sshd or the
agent itself. So a node refuses

    * a port outside its allowed range (`orch node --host-port-range`,
      default 1024-65535, as Kubernetes' service-node-port-range bounds
      NodePorts: ports below 1024 are the host's services);
    * a port something on the host listens on right now (/proc/net/tcp,
      tcp6, udp, udp6 of the agent's network namespace);
    * a port another instance of this node already publishes.

A service that starts listening on a port after an instance published it is
not protected (the check is at publish time); the range is for that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from node.network.errors import ConfigError

__all__ = ["DEFAULT_RANGE", "PortRange", "host_listening", "refusal"]

_TCP_LISTEN = "0A"


@dataclass(frozen=True, slots=True)
class PortRange:
    """hostPorts a node may publish: first..last, inclusive."""

    first: int = 1024
    last: int = 65535

    def __post_init__(self) -> None:
        if not 1 <= self.first <= self.last <= 65535:
            raise ConfigError(f"host port range {self.first}-{self.last}: want FIRST-LAST within 1-65535")

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """ "1024-65535" (or one port, "8080")."""
        first, dash, last = text.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ConfigError(f'host port range "{text}": want FIRST-LAST, e.g. 1024-65535')
        return cls(int(first), int(last or first))

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


DEFAULT_RANGE = PortRange()


def _listening(table: str, protocol: str) -> Iterable[tuple[int, str]]:
    """(port, protocol) of each listening socket in one /proc/net table's text."""
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        local, remote, state = fields[1], fields[2], fields[3]
        unconnected = int(remote.rpartition(":")[2], 16) == 0
        if (state == _TCP_LISTEN) if protocol == "tcp" else unconnected:
            yield int(local.rpartition(":")[2], 16), protocol


def host_listening(proc_net: Path = Path("/proc/net")) -> set[tuple[int, str]]:
    """(port, "tcp"|"udp") the host (our network namespace) listens on, IPv4 and IPv6."""
    found: set[tuple[int, str]] = set()
    for name, protocol in (("tcp", "tcp"), ("tcp6", "tcp"), ("udp", "udp"), ("udp6", "udp")):
        try:
            found.update(_listening((proc_net / name).read_text(), protocol))
        except OSError:
            continue  # e.g. no IPv6 in this kernel
    return found


def refusal(
    port: int,
    protocol: str,
    allowed: PortRange,
    listening: set[tuple[int, str]],
    published: Mapping[tuple[int, str], str],
    node: str,
) -> str:
    """Why this node will not publish port/protocol ("" if it will); `published`: the
    ports other instances of this node publish, with the instance's name."""
    where = f" on {node}" if node else ""
    what = f"hostPort {port}/{protocol}"
    if port not in allowed:
        return f"{what} is outside the range this node allows{where} ({allowed}; orch node --host-port-range)"
    if (port, protocol) in listening:
        return f"{what} is in use{where} by the host"
    if other := published.get((port, protocol)):
        return f"{what} is already published{where} by {other}"
    return ""
