"""A lab of hosts on one machine, as kind and containerlab make them: each host is a
network namespace with one veth on a lab bridge and its own address there.

    root namespace        lab bridge orch<id>br, address .254 (the "admin workstation")
      └─ orch<id>v<i>  ── veth ──  eth0 in netns orch-<id>-<host>, address .<i+1>

The hosts have no default route: they reach each other and the root namespace
over the bridge, and nothing else. Their daemons run inside the host's
namespace by `nsenter --net=/run/netns/<netns>` (`enter`). Not `ip netns exec`:
that also unshares the mount namespace and remounts /sys, which hides
/sys/fs/cgroup from the agent. The hosts still share this machine's mounts,
cgroup tree and users, so each needs its own state dir, cgroup parent and user
id block (the caller's job).

`orch up --hosts N` and tests/fixtures/lab.py build on this module.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Lab",
    "LabError",
    "LabHost",
    "create",
    "describe",
    "enter",
    "plan",
    "remove",
    "routed_overlaps",
]

NETNS_DIR = Path("/run/netns")
HOST_IFNAME = "eth0"
_GATEWAY_INDEX = 254  # the root namespace's address on the lab network


class LabError(Exception):
    """Creating or removing the lab failed; the message names the command and why."""


@dataclass(frozen=True, slots=True)
class LabHost:
    name: str
    netns: str  # /run/netns/<netns>
    address: str  # on the lab network
    veth: str  # the root namespace's end of the host's link

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns


@dataclass(frozen=True, slots=True)
class Lab:
    lab_id: str
    bridge: str
    network: ipaddress.IPv4Network
    hosts: tuple[LabHost, ...]

    @property
    def gateway(self) -> str:
        """The root namespace's address on the lab network: where a CLI there comes from."""
        return str(self.network.network_address + _GATEWAY_INDEX)

    def host(self, name: str) -> LabHost:
        return next(h for h in self.hosts if h.name == name)


def plan(lab_id: str, names: Sequence[str], network: str) -> Lab:
    """Names and addresses only: host i gets the network's address i+1, the root namespace .254.

    lab_id (a few characters) keeps two labs on one machine apart; link names stay
    within the kernel's 15 characters."""
    net = ipaddress.ip_network(network)
    if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 24:
        raise LabError(f"lab network {network}: need an IPv4 network of /24 or larger")
    if not 1 <= len(names) < _GATEWAY_INDEX or len(set(names)) != len(names):
        raise LabError(f"a lab needs 1 to {_GATEWAY_INDEX - 1} distinct host names, got {list(names)}")
    if len(f"orch{lab_id}v{len(names)}") > 15:
        raise LabError(f'lab id "{lab_id}" is too long for link names')
    hosts = tuple(
        LabHost(name, f"orch-{lab_id}-{name}", str(net.network_address + i + 1), f"orch{lab_id}v{i}")
        for i, name in enumerate(names)
    )
    return Lab(lab_id, f"orch{lab_id}br", net, hosts)


def describe(lab: Lab) -> dict[str, object]:
    """The lab as cluster.json records it."""
    return {
        "bridge": lab.bridge,
        "network": str(lab.network),
        "gateway": lab.gateway,  # this machine's address on the lab network
        "hosts": [{"name": h.name, "netns": h.netns, "address": h.address} for h in lab.hosts],
    }


def enter(host: LabHost) -> list[str]:
    """The argv prefix that runs a command in host's network namespace, and nothing else of it."""
    return ["nsenter", f"--net={host.netns_path}", "--"]


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.returncode}")


def routed_overlaps(network: str) -> list[str]:
    """The routes of the root namespace that overlap network (a lab there would shadow them)."""
    wanted = ipaddress.ip_network(network)
    out = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, check=True).stdout
    overlaps = []
    for line in out.splitlines():
        dst = line.split()[0] if line.split() else ""
        if dst == "default":
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(dst, strict=False).overlaps(wanted):
                overlaps.append(line.strip())
    return overlaps


def _bridged_traffic_filtered() -> bool:
    """br_netfilter passes bridged frames through iptables' FORWARD chain (Docker's DROP policy too)."""
    try:
        return Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() == "1"
    except OSError:
        return False


def _forward_rule(lab: Lab) -> list[str]:
    return ["FORWARD", "-i", lab.bridge, "-o", lab.bridge, "-j", "ACCEPT"]


def create(lab: Lab, ip_forward: bool = False) -> None:
    """The bridge, then each host's namespace, link and address; on failure nothing is left.
    ip_forward: the hosts forward packets (hostPorts answer other hosts; docs/deploy.md sets it)."""
    overlaps = routed_overlaps(str(lab.network))
    if overlaps:
        raise LabError(f"lab network {lab.network} overlaps routes of this machine ({overlaps[0]}): choose another")
    try:
        _ip("link", "add", lab.bridge, "type", "bridge")
        _ip("addr", "add", f"{lab.gateway}/{lab.network.prefixlen}", "dev", lab.bridge)
        _ip("link", "set", lab.bridge, "up")
        if _bridged_traffic_filtered():  # so a FORWARD policy of DROP cannot cut hosts apart
            _iptables("-I", *_forward_rule(lab))
        for host in lab.hosts:
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", HOST_IFNAME, "netns", host.netns)
            _ip("link", "set", host.veth, "master", lab.bridge, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/{lab.network.prefixlen}", "dev", HOST_IFNAME)
            _ip("-n", host.netns, "link", "set", HOST_IFNAME, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            if ip_forward:  # /proc/sys/net is the writer's network namespace's
                _run([*enter(host), "sysctl", "-qw", "net.ipv4.ip_forward=1"])
    except LabError:
        remove(lab)
        raise


def _iptables(*args: str) -> bool:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, check=False).returncode == 0


def remove(lab: Lab) -> list[str]:
    """Every namespace (its veth goes with it), the bridge and the FORWARD rule; what is
    already gone counts as removed. Returns what could not be removed."""
    left = []
    for host in lab.hosts:
        if host.netns_path.exists():
            with contextlib.suppress(LabError):
                _ip("netns", "delete", host.netns)
            if host.netns_path.exists():
                left.append(f"netns {host.netns}")
        # Normally gone with the namespace; a half-made host may have left it in ours.
        with contextlib.suppress(LabError):
            _ip("link", "delete", host.veth)
    with contextlib.suppress(LabError):
        _ip("link", "delete", lab.bridge)
    while _iptables("-C", *_forward_rule(lab)):
        if not _iptables("-D", *_forward_rule(lab)):
            left.append(f"iptables rule {' '.join(_forward_rule(lab))}")
            break
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    links = {line.split(": ")[1].partition("@")[0] for line in out.splitlines() if ": " in line}
    left += [f"link {name}" for name in (lab.bridge, *(h.veth for h in lab.hosts)) if name in links]
    return left
