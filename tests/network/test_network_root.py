"""node.network for real: bridges, veths and namespaces on this host (root only).

Everything a test creates is named orcht<4 hex> (bridge) or ov<hash> (veths),
lives in a 10.213.x.0/24 no host route overlaps, and is removed in the
fixtures' finally, whatever the test did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from node.network import (
    Attachment,
    HostPortNotAllowed,
    LinkError,
    NamespaceError,
    NetworkConfig,
    NetworkError,
    NodeNetwork,
    PortMapping,
)
from tests.e2e.cluster import BRIDGE_TESTS

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.timeout(60),
]

Spawn = Callable[[], int]


def netns_inode(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], check=True, capture_output=True, text=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def host_netns() -> str:
    return subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def host_routes() -> list[ipaddress.IPv4Network]:
    """Destinations of every IPv4 route in every table, the default route aside."""
    out = subprocess.run(["ip", "-o", "-4", "route", "show", "table", "all"], capture_output=True, text=True)
    nets = []
    for line in out.stdout.splitlines():
        for word in line.split()[:2]:  # "10.1.0.0/16 dev ..." or "local 127.0.0.1 dev ..."
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(word, strict=False))
                break
    return nets


def free_subnet() -> str:
    """A 10.213.x.0/24 that no host route overlaps (test clusters keep out of 10.213: unused_cidr)."""
    routes = host_routes()
    for third in random.sample(range(1, 255), 254):
        net = ipaddress.IPv4Network(f"10.{BRIDGE_TESTS}.{third}.0/24")
        if not any(net.overlaps(r) for r in routes):
            return str(net)
    raise RuntimeError("no free 10.213.x.0/24")


@pytest.fixture
def spawn_netns() -> Iterator[Spawn]:
    """Start `sleep 60` in a new netns; return its pid (unshare execs sleep in place)."""
    procs: list[subprocess.Popen[bytes]] = []
    mine = netns_inode("self")

    def spawn() -> int:
        proc = subprocess.Popen(["unshare", "--net", "sleep", "60"])
        procs.append(proc)
        assert wait_until(lambda: netns_inode(proc.pid) != mine), "unshare did not enter a new netns"
        return proc.pid

    try:
        yield spawn
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def config(tmp_path: Path) -> Iterator[NetworkConfig]:
    bridge = "orcht" + secrets.token_hex(2)
    assert bridge not in host_links()
    cfg = NetworkConfig(bridge=bridge, subnet=free_subnet(), state_dir=tmp_path / "ipam")
    try:
        yield cfg
    finally:
        NodeNetwork(cfg).teardown()
        assert bridge not in host_links()


@pytest.fixture
def net(config: NetworkConfig) -> NodeNetwork:
    network = NodeNetwork(config)
    network.ensure_bridge()
    return network


@pytest.fixture(scope="module", autouse=True)
def leaves_host_clean() -> Iterator[None]:
    """No orch*/ov* link and no named netns may outlive this module. In a pytest-xdist worker
    (make test) other workers' clusters come and go meanwhile: there tests/zz_host checks the
    host after every worker instead."""
    if os.geteuid() != 0 or "PYTEST_XDIST_WORKER" in os.environ:
        yield
        return
    links_before, netns_before = host_links(), host_netns()
    yield

    def leftovers() -> set[str]:
        return {n for n in host_links() - links_before if n.startswith(("orch", "ov"))}

    # Veths of killed processes vanish with their netns, which the kernel frees asynchronously.
    assert wait_until(lambda: not leftovers()), leftovers()
    assert host_netns() == netns_before


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=10)


def in_netns(pid: int, *argv: str) -> str:
    return run("nsenter", "-t", str(pid), "-n", *argv).stdout


def ping(ip: str) -> bool:
    return run("busybox", "ping", "-c", "1", "-W", "1", ip).returncode == 0


def assert_configured(pid: int, att: Attachment) -> None:
    addrs = in_netns(pid, "ip", "-o", "-4", "addr")
    assert f"eth0    inet {att.ip}/{att.prefixlen} " in addrs, addrs
    assert f"default via {att.gateway} dev eth0" in in_netns(pid, "ip", "route"), "no default route"
    assert "LOOPBACK,UP" in in_netns(pid, "ip", "-o", "link", "show", "lo"), "lo is down"


def test_attach_gives_a_reachable_eth0(net: NodeNetwork, config: NetworkConfig, spawn_netns: Spawn) -> None:
    pid = spawn_netns()
    att = net.attach("web-1", pid)
    assert att.instance == "web-1" and att.prefixlen == 24
    assert att.gateway == str(config.gateway) and att.host_veth == net.veth_name("web-1")
    assert_configured(pid, att)
    ports = run("ip", "-o", "link", "show", "master", config.bridge).stdout
    assert att.host_veth in ports and "state UP" in ports
    assert ping(att.ip), f"host cannot reach {att.ip}"
    to_gateway = run("nsenter", "-t", str(pid), "-n", "busybox", "ping", "-c", "1", "-W", "1", att.gateway)
    assert to_gateway.returncode == 0, "container cannot reach the gateway"


def test_two_attaches_get_different_ips(net: NodeNetwork, spawn_netns: Spawn) -> None:
    a, b = net.attach("a", spawn_netns()), net.attach("b", spawn_netns())
    assert a.ip != b.ip and a.host_veth != b.host_veth
    assert ping(a.ip) and ping(b.ip)
    assert net.addresses() == {"a": a.ip, "b": b.ip}


def test_reattach_keeps_the_ip(net: NodeNetwork, spawn_netns: Spawn) -> None:
    first_pid, second_pid = spawn_netns(), spawn_netns()
    first = net.attach("web-1", first_pid)
    assert net.attach("web-1", first_pid) == first  # same process: replaced in place
    assert_configured(first_pid, first)
    moved = net.attach("web-1", second_pid)  # restarted container, same instance
    assert moved == first
    assert_configured(second_pid, moved)
    assert "eth0" not in in_netns(first_pid, "ip", "-o", "link")  # the old veth went with its host end
    assert ping(moved.ip)


def test_detach_removes_veth_and_releases_ip(net: NodeNetwork, spawn_netns: Spawn) -> None:
    pid = spawn_netns()
    att = net.attach("web-1", pid)
    net.detach("web-1")
    assert att.host_veth not in host_links()
    assert "eth0" not in in_netns(pid, "ip", "-o", "link")
    assert net.addresses() == {}
    net.detach("web-1")  # again: already gone is success


def test_process_exit_then_detach_leaves_no_veth(net: NodeNetwork, spawn_netns: Spawn) -> None:
    pid = spawn_netns()
    att = net.attach("web-1", pid)
    os.kill(pid, 9)
    # The kernel destroys the netns (and with it the veth pair) asynchronously.
    assert wait_until(lambda: att.host_veth not in host_links()), "veth outlived its namespace"
    net.detach("web-1")
    assert net.addresses() == {}


def test_ipam_survives_a_new_object(net: NodeNetwork, config: NetworkConfig, spawn_netns: Spawn) -> None:
    pid = spawn_netns()
    att = net.attach("web-1", pid)
    restarted = NodeNetwork(config)
    restarted.ensure_bridge()  # idempotent on an existing bridge
    assert restarted.addresses() == {"web-1": att.ip}
    assert restarted.attach("web-1", pid) == att
    assert restarted.attach("web-2", spawn_netns()).ip != att.ip


def test_teardown_removes_veths_bridge_and_state(net: NodeNetwork, config: NetworkConfig, spawn_netns: Spawn) -> None:
    atts = [net.attach(f"i{n}", spawn_netns()) for n in range(3)]
    net.teardown()
    assert not {config.bridge, *(a.host_veth for a in atts)} & host_links()
    assert not config.state_dir.exists()
    assert net.addresses() == {}
    net.teardown()  # idempotent


def test_attach_to_a_dead_process_releases_the_ip(net: NodeNetwork, spawn_netns: Spawn) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(NamespaceError) as info:
        net.attach("web-1", proc.pid)
    assert info.value.pid == proc.pid and info.value.errno == errno.ENOENT
    assert net.addresses() == {}


def test_attach_without_bridge_is_a_link_error(config: NetworkConfig, spawn_netns: Spawn) -> None:
    net = NodeNetwork(config)  # ensure_bridge not called
    with pytest.raises(LinkError) as info:
        net.attach("web-1", spawn_netns())
    assert info.value.name == config.bridge and info.value.errno == errno.ENODEV
    assert net.addresses() == {}
    assert net.veth_name("web-1") not in host_links()


def test_bridge_name_taken_by_another_kind(config: NetworkConfig) -> None:
    made = run("ip", "link", "add", config.bridge, "type", "veth", "peer", "name", config.bridge + "p")
    assert made.returncode == 0, made.stderr
    try:
        with pytest.raises(LinkError, match="another kind"):
            NodeNetwork(config).ensure_bridge()
        with pytest.raises(LinkError, match="not a bridge"):
            NodeNetwork(config).teardown()
    finally:
        run("ip", "link", "del", config.bridge)  # takes its peer along


def test_concurrent_attaches_from_threads(net: NodeNetwork, spawn_netns: Spawn) -> None:
    pids = [spawn_netns() for _ in range(6)]
    before = netns_inode("thread-self")
    with ThreadPoolExecutor(max_workers=6) as pool:
        atts = list(pool.map(lambda n: net.attach(f"i{n}", pids[n]), range(6)))
    assert len({a.ip for a in atts}) == 6
    for pid, att in zip(pids, atts, strict=True):
        assert_configured(pid, att)
    assert netns_inode("thread-self") == before  # the caller never changed namespace


def test_calling_from_the_event_loop_is_refused(net: NodeNetwork, spawn_netns: Spawn) -> None:
    pid = spawn_netns()

    async def main() -> Attachment:
        with pytest.raises(NetworkError, match="to_thread"):
            net.attach("web-1", pid)
        return await asyncio.to_thread(net.attach, "web-1", pid)

    assert ping(asyncio.run(main()).ip)


def test_mtu_is_applied(tmp_path: Path, config: NetworkConfig, spawn_netns: Spawn) -> None:
    cfg = NetworkConfig(bridge=config.bridge, subnet=config.subnet, state_dir=config.state_dir, mtu=1400)
    net = NodeNetwork(cfg)
    net.ensure_bridge()
    pid = spawn_netns()
    att = net.attach("web-1", pid)
    assert "mtu 1400" in in_netns(pid, "ip", "-o", "link", "show", "eth0")
    assert "mtu 1400" in run("ip", "-o", "link", "show", att.host_veth).stdout
    assert "mtu 1400" in run("ip", "-o", "link", "show", cfg.bridge).stdout


SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 8080)); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'hello'); c.close()\n"
)


def fetch(address: str, port: int) -> bytes | None:
    try:
        with socket.create_connection((address, port), timeout=2) as s:
            return s.recv(16)
    except OSError:
        return None


def nat_rules(bridge: str) -> list[str]:
    """This test's node's NAT rules (its chains are named after its bridge; other clusters on
    this host have their own)."""
    saved = run("iptables-save", "-t", "nat").stdout
    return [line for line in saved.splitlines() if "ORCH-" in line and bridge in line]


def test_host_ports_are_published_on_the_address_and_removed(tmp_path: Path, config: NetworkConfig) -> None:
    address = f"127.{random.randint(100, 200)}.{random.randint(0, 255)}.1"
    cfg = dataclasses.replace(config, publish_address=address)
    net = NodeNetwork(cfg)
    net.ensure_bridge()
    assert nat_rules(config.bridge) == []  # nothing published, nothing installed
    server = subprocess.Popen(["unshare", "--net", sys.executable, "-c", SERVER])
    try:
        assert wait_until(lambda: netns_inode(server.pid) != netns_inode("self"))
        host_port = free_port()
        net.attach("web-1", server.pid, [PortMapping(host_port, 8080)])
        assert wait_until(lambda: fetch(address, host_port) == b"hello"), nat_rules(config.bridge)
        assert fetch("127.0.0.1", host_port) is None  # published on that address only
        assert any('--comment "web-1"' in r or "--comment web-1" in r for r in nat_rules(config.bridge))
        # An agent restart: the kernel lost the rules (or someone flushed them); the files bring them back.
        run("iptables", "-t", "nat", "-F", net.host_ports.chain)
        assert fetch(address, host_port) is None
        NodeNetwork(cfg).ensure_bridge()
        assert wait_until(lambda: fetch(address, host_port) == b"hello")
        net.detach("web-1")
        assert fetch(address, host_port) is None
        assert not [r for r in nat_rules(config.bridge) if "DNAT" in r]
    finally:
        server.kill()
        server.wait()
    net.teardown()
    assert nat_rules(config.bridge) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_host_port_the_host_listens_on_is_refused_and_the_host_keeps_it(
    tmp_path: Path, config: NetworkConfig
) -> None:
    """hostPort hijack (issue 9 item 9): a port etcd, the scheduler or sshd listens on is not
    published, so the host's own connections to it keep reaching the host's service."""
    net = NodeNetwork(dataclasses.replace(config, node="node-x"))
    net.ensure_bridge()
    server = subprocess.Popen(["unshare", "--net", sys.executable, "-c", SERVER])
    with socket.socket() as service:  # stands in for etcd on 127.0.0.1
        service.bind(("127.0.0.1", 0))
        service.listen()
        port = service.getsockname()[1]
        try:
            assert wait_until(lambda: netns_inode(server.pid) != netns_inode("self"))
            with pytest.raises(HostPortNotAllowed, match=f"hostPort {port}/tcp is in use on node-x by the host"):
                net.attach("evil-1", server.pid, [PortMapping(port, 8080)])
            with pytest.raises(HostPortNotAllowed, match="hostPort 22/tcp is outside the range"):
                net.attach("evil-1", server.pid, [PortMapping(22, 8080)])
            assert not [r for r in nat_rules(config.bridge) if "DNAT" in r]
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                conn, _ = service.accept()  # the host's connection reached the host's service
                conn.close()
        finally:
            server.kill()
            server.wait()
    net.teardown()


def test_without_a_publish_address_loopback_is_never_captured(tmp_path: Path, config: NetworkConfig) -> None:
    """No --publish-address: every local address but 127.0.0.0/8, so a hostPort cannot take over a
    port of the host's loopback services; the node's other addresses (here the bridge's) serve it."""
    net = NodeNetwork(config)
    net.ensure_bridge()
    server = subprocess.Popen(["unshare", "--net", sys.executable, "-c", SERVER])
    try:
        assert wait_until(lambda: netns_inode(server.pid) != netns_inode("self"))
        host_port = free_port()
        net.attach("web-1", server.pid, [PortMapping(host_port, 8080)])
        assert wait_until(lambda: fetch(str(config.gateway), host_port) == b"hello"), nat_rules(config.bridge)
        # A host service on 127.0.0.1 with the same port (started after the publish, so the
        # node's policy could not see it) must still get the host's own connections: without
        # the loopback exclusion the DNAT would send them towards the container instead.
        with socket.socket() as service:
            service.bind(("127.0.0.1", host_port))
            service.listen()
            with socket.create_connection(("127.0.0.1", host_port), timeout=2):
                pass
            service.settimeout(2)
            accepted, _ = service.accept()
            accepted.close()
        route_localnet = Path(f"/proc/sys/net/ipv4/conf/{config.bridge}/route_localnet")
        assert route_localnet.read_text().strip() == "0"  # only for a loopback publish address
    finally:
        server.kill()
        server.wait()
    net.teardown()
