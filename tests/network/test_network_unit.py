"""node.network without root: IPAM, names, config, errors, exports."""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import node.network
from node.network import AddressExhausted, ConfigError, LinkError, NetworkConfig, StateError, veth_name
from node.network.errors import NetworkError
from node.network.hostports import HostPorts, PortMapping, chain_name, chain_rules
from node.network.ipam import Ipam
from node.network.names import bridge_mac, check_ifname


def ips(*last_octets: int, prefix: str = "10.9.0.") -> list[ipaddress.IPv4Address]:
    return [ipaddress.IPv4Address(prefix + str(o)) for o in last_octets]


# -- IPAM ------------------------------------------------------------------


def test_allocate_skips_network_gateway_and_broadcast(tmp_path: Path) -> None:
    ipam = Ipam("10.9.0.0/29", tmp_path)  # .0 network, .1 gateway, .7 broadcast
    got = [ipam.allocate(f"i{n}") for n in range(5)]
    assert got == ips(2, 3, 4, 5, 6)


def test_smallest_subnet_has_one_address(tmp_path: Path) -> None:
    ipam = Ipam("10.9.0.0/30", tmp_path)
    assert ipam.allocate("a") == ips(2)[0]
    with pytest.raises(AddressExhausted):
        ipam.allocate("b")


def test_allocate_is_idempotent_per_instance(tmp_path: Path) -> None:
    ipam = Ipam("10.9.0.0/24", tmp_path)
    first = ipam.allocate("web-1")
    assert ipam.allocate("web-1") == first
    assert ipam.lookup("web-1") == first
    assert ipam.allocations() == {first: "web-1"}


def test_exhausted_names_the_subnet(tmp_path: Path) -> None:
    ipam = Ipam("10.9.0.0/29", tmp_path)
    for n in range(5):
        ipam.allocate(f"i{n}")
    with pytest.raises(AddressExhausted) as info:
        ipam.allocate("one-too-many")
    assert info.value.subnet == "10.9.0.0/29"
    assert "10.9.0.0/29" in str(info.value)
    assert ipam.lookup("one-too-many") is None


def test_release_frees_the_address_round_robin(tmp_path: Path) -> None:
    ipam = Ipam("10.9.0.0/29", tmp_path)
    a, b = ipam.allocate("a"), ipam.allocate("b")
    ipam.release("a")
    ipam.release("a")  # releasing twice is a no-op
    assert ipam.lookup("a") is None
    # The freed address is not reused at once, only after the others.
    assert [ipam.allocate(f"n{k}") for k in range(4)] == ips(4, 5, 6, 2)
    assert b == ips(3)[0] and a == ips(2)[0]


def test_state_survives_a_new_object(tmp_path: Path) -> None:
    Ipam("10.9.0.0/24", tmp_path).allocate("a")
    Ipam("10.9.0.0/24", tmp_path).allocate("b")
    again = Ipam("10.9.0.0/24", tmp_path)
    assert again.allocations() == {ips(2)[0]: "a", ips(3)[0]: "b"}
    assert again.allocate("a") == ips(2)[0]
    assert (tmp_path / "10.9.0.2").read_text() == "a"


def test_concurrent_allocations_never_share_an_address(tmp_path: Path) -> None:
    instances = [f"i{n}" for n in range(60)]
    # Separate Ipam objects, as separate agents or restarted agents would have.
    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(lambda name: Ipam("10.9.0.0/24", tmp_path).allocate(name), instances))
    assert len(set(got)) == len(instances)
    assert Ipam("10.9.0.0/24", tmp_path).allocations() == dict(zip(got, instances, strict=True))


def test_foreign_files_are_ignored_and_kept(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("not ours")
    (tmp_path / "10.99.0.5").write_text("other subnet")
    ipam = Ipam("10.9.0.0/24", tmp_path)
    ipam.allocate("a")
    assert ipam.allocations() == {ips(2)[0]: "a"}
    ipam.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10.99.0.5", "README"]


def test_clear_removes_state_and_directory(tmp_path: Path) -> None:
    state = tmp_path / "ipam"
    ipam = Ipam("10.9.0.0/24", state)
    ipam.allocate("a")
    ipam.clear()
    assert not state.exists()
    ipam.clear()  # idempotent
    assert ipam.allocations() == {}


@pytest.mark.parametrize("bad", ["", "a\nb", "tab\there"])
def test_bad_instance_names_are_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError):
        Ipam("10.9.0.0/24", tmp_path).allocate(bad)


def test_unusable_state_dir_is_a_state_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(StateError) as info:
        Ipam("10.9.0.0/24", not_a_dir).allocate("a")
    assert info.value.path == str(not_a_dir)
    assert info.value.errno == errno.ENOTDIR


# -- names -----------------------------------------------------------------


def test_veth_name_is_short_prefixed_and_stable() -> None:
    name = veth_name("orch1", "web-7f3a")
    assert name == veth_name("orch1", "web-7f3a")
    assert name.startswith("ov") and len(name) == 12 <= 15
    assert check_ifname(name) == name
    assert name == "ovab34b7bf30"  # pinned: a change would orphan veths across an upgrade


def test_veth_name_depends_on_bridge_and_instance() -> None:
    names = {veth_name(b, i) for b in ("orch1", "orch2") for i in ("a", "b")}
    assert len(names) == 4
    assert veth_name("ab", "c") != veth_name("a", "bc")


def test_bridge_mac_is_stable_local_unicast() -> None:
    mac = bridge_mac("orch1")
    assert mac == bridge_mac("orch1") != bridge_mac("orch2")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert len(mac.split(":")) == 6


@pytest.mark.parametrize("bad", ["", "x" * 16, "has space", "a/b", "a:b", "-lead"])
def test_check_ifname_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_ifname(bad)


# -- config and errors ------------------------------------------------------


def test_config_derives_gateway(tmp_path: Path) -> None:
    cfg = NetworkConfig(bridge="orch1", subnet="10.88.1.0/24", state_dir=tmp_path)
    assert str(cfg.gateway) == "10.88.1.1"
    assert cfg.network.prefixlen == 24
    assert cfg.mtu == 1500


@pytest.mark.parametrize(
    ("bridge", "subnet", "mtu"),
    [
        ("a-bridge-name-too-long", "10.88.1.0/24", 1500),
        ("orch1", "10.88.1.0/31", 1500),
        ("orch1", "10.88.1.5/24", 1500),  # host bits set: surely a typo
        ("orch1", "fd00::/64", 1500),
        ("orch1", "nonsense", 1500),
        ("orch1", "10.88.1.0/24", 20),
    ],
)
def test_config_rejects(tmp_path: Path, bridge: str, subnet: str, mtu: int) -> None:
    with pytest.raises(ConfigError):
        NetworkConfig(bridge=bridge, subnet=subnet, state_dir=tmp_path, mtu=mtu)


def test_link_error_carries_context() -> None:
    err = LinkError("ov0123456789", "create veth", errno.EEXIST)
    assert (err.name, err.op, err.errno) == ("ov0123456789", "create veth", errno.EEXIST)
    assert str(err) == "create veth ov0123456789: EEXIST: File exists"
    assert isinstance(err, node.network.NetworkError)


def test_exports() -> None:
    assert sorted(node.network.__all__) == node.network.__all__
    for name in node.network.__all__:
        assert getattr(node.network, name) is not None


def test_host_port_chain_rules_replace_the_chain_with_one_dnat_per_port() -> None:
    published = {
        "web-2": ("10.88.1.3", [PortMapping(18080, 8080), PortMapping(5353, 53, "udp")]),
        "api-1": ("10.88.1.2", [PortMapping(9000, 9000)]),
    }
    text = chain_rules("ORCH-HP-orch1", published, "127.1.2.3")
    assert text.splitlines() == [
        "*nat",
        ":ORCH-HP-orch1 - [0:0]",  # with --noflush this line empties the chain first
        '-A ORCH-HP-orch1 -d 127.1.2.3/32 -p tcp -m tcp --dport 9000 -m comment --comment "api-1"'
        " -j DNAT --to-destination 10.88.1.2:9000",
        '-A ORCH-HP-orch1 -d 127.1.2.3/32 -p tcp -m tcp --dport 18080 -m comment --comment "web-2"'
        " -j DNAT --to-destination 10.88.1.3:8080",
        '-A ORCH-HP-orch1 -d 127.1.2.3/32 -p udp -m udp --dport 5353 -m comment --comment "web-2"'
        " -j DNAT --to-destination 10.88.1.3:53",
        "COMMIT",
    ]
    # No address: every local one but loopback (never the host's own 127.0.0.1 services).
    assert {line.split(" -p ")[0] for line in chain_rules("ORCH-HP-orch1", published).splitlines()[2:-1]} == {
        "-A ORCH-HP-orch1 ! -d 127.0.0.0/8"
    }
    assert chain_name("orch" + "x" * 30) == "ORCH-HP-orch" + "x" * 16  # 28 characters at most


def test_host_ports_state_drives_the_rules(tmp_path: Path) -> None:
    calls: list[tuple[list[str], str]] = []

    def run(argv: Sequence[str], stdin: str) -> None:
        calls.append((list(argv), stdin))
        if argv[4:5] in (["-C"], ["-S"]):  # iptables -w -t TABLE OP
            raise NetworkError("no such rule")  # nothing installed yet

    ports = HostPorts("orch1", tmp_path / "hp", run=run, proc_net=tmp_path)  # nothing listens
    ports.sync()
    assert calls[-1][0][4:5] == ["-S"]  # nothing published: only looked, touched nothing
    looked = len(calls)
    ports.sync()  # the agent's periodic sync: no chain then, none now, no iptables process
    assert len(calls) == looked
    ports.publish("web-1", "10.88.1.2", [PortMapping(18080, 8080)])
    restores = [stdin for argv, stdin in calls if argv[0] == "iptables-restore"]
    assert "--dport 18080" in restores[-1]
    appended = [argv[3:6] for argv, _ in calls if argv[4:5] == ["-A"]]
    assert appended == [["raw", "-A", "PREROUTING"], ["nat", "-A", "PREROUTING"], ["nat", "-A", "OUTPUT"],
                        ["nat", "-A", "POSTROUTING"]]  # fmt: skip
    assert HostPorts("orch1", tmp_path / "hp", run=run).published() == {
        "web-1": ("10.88.1.2", [PortMapping(18080, 8080)])
    }
    ports.unpublish("web-1")
    assert "--dport" not in [stdin for argv, stdin in calls if argv[0] == "iptables-restore"][-1]
    # An unreadable record (a host crash, a disk error) is set aside, not fatal (issue 9 item 17).
    ports.publish("web-1", "10.88.1.2", [PortMapping(18080, 8080)])
    for bad in ("{", "", '{"ip": "10.88.1.9", "ports": [{"host_port": "x"}]}'):
        (tmp_path / "hp" / "bad.json").write_text(bad)
        ports.sync()
        assert list(ports.published()) == ["web-1"]
    assert len(list((tmp_path / "hp").glob("bad.json.corrupt-*"))) >= 1
    ports.teardown()
    assert not (tmp_path / "hp").exists()
