"""Deterministic link names.

A host veth is named ``ov`` + 10 hex digits of SHA-256 over (bridge, instance):
12 characters, under the kernel's 15-character IFNAMSIZ limit, stable across
agent restarts (so detach finds it without stored state) and distinct per
bridge (so several agents on one host never collide).
"""

from __future__ import annotations

import hashlib
import re

from node.network.errors import ConfigError

VETH_PREFIX = "ov"
CONTAINER_IFNAME = "eth0"
IFNAMSIZ = 15  # usable characters; the kernel's IFNAMSIZ (16) counts the NUL
_HASH_CHARS = 10
# What `ip link` accepts and what is safe in any tool's argv: no "/", ":", space.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def veth_name(bridge: str, instance: str) -> str:
    """Host-side veth name for ``instance`` on ``bridge``."""
    # NUL separates the parts so ("ab", "c") and ("a", "bc") hash differently.
    digest = hashlib.sha256(f"{bridge}\0{instance}".encode()).hexdigest()
    return VETH_PREFIX + digest[:_HASH_CHARS]


def bridge_mac(bridge: str) -> str:
    """A stable, locally administered unicast MAC for ``bridge``."""
    # Set explicitly, a bridge keeps its MAC; otherwise it takes the lowest MAC
    # of its ports and changes as containers come and go, and every container's
    # ARP entry for the gateway goes stale.
    digest = hashlib.sha256(f"orch-bridge\0{bridge}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def check_ifname(name: str) -> str:
    """Return ``name`` if the kernel accepts it as an interface name, else raise ConfigError."""
    if not 0 < len(name) <= IFNAMSIZ or not _IFNAME_RE.match(name):
        raise ConfigError(f"interface name {name!r}: want 1-{IFNAMSIZ} characters of [A-Za-z0-9_.-]")
    return name
