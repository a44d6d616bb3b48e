"""node.network without root: the hostPort policy (issue 9 item 9) and state files that
cannot be read (item 17)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

import pytest

from node.network import ConfigError, HostPortNotAllowed, PortMapping, PortRange
from node.network.hostports import HostPorts
from node.network.ipam import Ipam
from node.network.iptables import Runner
from node.network.portpolicy import host_listening, refusal

# /proc/net/tcp: sl local rem st ... (ports in hex); 0A = LISTEN, 01 = ESTABLISHED.
TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:094B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1B9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:D431 0100007F:094B 01 00000000:00000000 00:00000000 00000000     0        0 3 1
"""
TCP6 = """  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 0 0
"""
UDP = """  sl  local_address rem_address   st
   0: 00000000:14E9 00000000:0000 07 0 0
   1: 0100007F:C000 0100007F:0035 01 0 0
"""


@pytest.fixture
def proc_net(tmp_path: Path) -> Path:
    """A /proc/net where the host listens on tcp 2379, 7070, 22 (IPv6) and udp 5353."""
    net = tmp_path / "net"
    net.mkdir()
    for name, text in (("tcp", TCP), ("tcp6", TCP6), ("udp", UDP)):
        (net / name).write_text(text)
    return net  # no udp6: a kernel without IPv6 is fine


def test_listening_ports_are_read_from_proc_net(proc_net: Path) -> None:
    # 0xD431 is an outgoing connection's port and 0xC000 a connected udp socket: not services.
    assert host_listening(proc_net) == {(2379, "tcp"), (7070, "tcp"), (22, "tcp"), (5353, "udp")}


def test_port_range_parsing() -> None:
    assert PortRange.parse("1024-65535") == PortRange() and str(PortRange(80, 90)) == "80-90"
    assert PortRange.parse("8080") == PortRange(8080, 8080) and 8080 in PortRange(8080, 8080)
    for bad in ("", "x-1", "2000-1000", "0-10", "1-70000", "1024-"):
        with pytest.raises(ConfigError):
            PortRange.parse(bad)


def test_refusal_says_why_and_where() -> None:
    listening = {(2379, "tcp")}
    taken = {(18080, "tcp"): "web-1"}
    allowed = PortRange()
    assert refusal(18081, "tcp", allowed, listening, taken, "node-0") == ""
    assert refusal(2379, "udp", allowed, listening, taken, "node-0") == ""  # another protocol
    assert refusal(2379, "tcp", allowed, listening, taken, "node-0") == (
        "hostPort 2379/tcp is in use on node-0 by the host"
    )
    assert refusal(18080, "tcp", allowed, listening, taken, "node-0") == (
        "hostPort 18080/tcp is already published on node-0 by web-1"
    )
    assert refusal(22, "tcp", allowed, set(), {}, "node-0") == (
        "hostPort 22/tcp is outside the range this node allows on node-0 (1024-65535; orch node --host-port-range)"
    )
    assert refusal(80, "tcp", PortRange(1, 65535), set(), {}, "node-0") == ""  # the operator allowed it


def recorder() -> tuple[list[tuple[list[str], str]], Runner]:
    calls: list[tuple[list[str], str]] = []

    def run(argv: Sequence[str], stdin: str) -> None:
        calls.append((list(argv), stdin))

    return calls, run


def test_the_node_enforces_its_policy_whatever_the_scheduler_sent(tmp_path: Path, proc_net: Path) -> None:
    calls, run = recorder()
    ports = HostPorts("orch1", tmp_path / "hp", run=run, node="node-0", proc_net=proc_net)
    for refused, why in [(2379, "in use on node-0 by the host"), (7070, "by the host"), (22, "outside the range")]:
        with pytest.raises(HostPortNotAllowed, match=why):
            ports.publish("evil-1", "10.88.1.2", [PortMapping(18080, 80), PortMapping(refused, 80)])
    assert calls == [] and not (tmp_path / "hp" / "evil-1.json").exists()  # all or nothing
    ports.publish("web-1", "10.88.1.3", [PortMapping(18080, 8080)])
    ports.publish("web-1", "10.88.1.3", [PortMapping(18080, 8080)])  # its own port again: fine
    with pytest.raises(HostPortNotAllowed, match="already published on node-0 by web-1"):
        ports.publish("web-2", "10.88.1.4", [PortMapping(18080, 8080)])
    low = HostPorts("orch1", tmp_path / "hp", run=run, allowed=PortRange(1, 65535), proc_net=proc_net)
    low.publish("dns-1", "10.88.1.5", [PortMapping(53, 53, "udp")])
    assert HostPortNotAllowed.reason == "HostPortNotAllowed"


def test_unreadable_ipam_files_are_set_aside_and_their_address_quarantined(tmp_path: Path) -> None:
    ipam = Ipam("10.88.1.0/29", tmp_path)  # .2 .. .6 assignable
    assert str(ipam.allocate("a")) == "10.88.1.2"
    (tmp_path / "10.88.1.3").write_text("")  # empty: a crash between create and write
    (tmp_path / "10.88.1.4").write_bytes(b"\xff\xfe")  # not text
    (tmp_path / "10.88.1.5").mkdir()  # not a file
    again = Ipam("10.88.1.0/29", tmp_path)  # an agent starting
    assert again.allocations() == {ipaddress.IPv4Address("10.88.1.2"): "a"}
    assert sorted(p.name.split(".corrupt-")[0] for p in tmp_path.glob("*.corrupt-*")) == [
        "10.88.1.3",
        "10.88.1.4",
        "10.88.1.5",
    ]
    # Their owners are unknown and may still use them: never handed out again before clear().
    assert str(again.allocate("b")) == "10.88.1.6"
    with pytest.raises(Exception, match="no free address"):
        again.allocate("c")
    again.clear()
    assert not tmp_path.exists() or not any(tmp_path.iterdir())
