"""Root: every container's own network namespace (issue 9 item 4) and binding ports
below 1024 in it without privileges on the host (item 10)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.metrics import NodeMetrics
from node.network import NetworkConfig, NodeNetwork
from node.network.counters import LinkCounters, parse_net_dev
from node.runtime import ContainerConfig, Runtime
from tests.network.test_network_root import free_subnet, host_links, wait_until
from tests.runtime.test_runtime_containers import run, sections

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]


def test_a_container_without_a_bridge_has_only_lo(runtime: Runtime, make_config: MakeConfig) -> None:
    """A node started without --bridge: the container's network namespace is its own and holds
    only lo, which is up (the container can talk to itself on 127.0.0.1)."""
    script = (
        "echo '#ns'; readlink /proc/self/ns/net; echo '#links'; ls /sys/class/net;"
        "echo '#lo'; cat /sys/class/net/lo/flags;"
        "httpd -p 127.0.0.1:8080 -h /www; echo '#local'; wget -q -O- http://127.0.0.1:8080/; echo '#end'"
    )
    state, text = run(runtime, make_config("nobridge", "sh", "-c", script))
    out = sections(text)
    assert state.exit_code == 0, text
    assert out["ns"] != [os.readlink("/proc/self/ns/net")]  # not the host's
    assert out["links"] == ["lo"]
    assert int(out["lo"][0], 16) & 1  # IFF_UP
    assert out["local"] == ["hello from orch"]


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[NodeNetwork]:
    name = "orcht" + secrets.token_hex(2)
    assert name not in host_links()
    net = NodeNetwork(NetworkConfig(bridge=name, subnet=free_subnet(), state_dir=tmp_path / "ipam"))
    net.ensure_bridge()
    try:
        yield net
    finally:
        net.teardown()


def fetch(url: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return str(r.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize(
    "who",
    [{"user_namespace": True}, {"user": "app"}, {"user": "app", "user_namespace": True}],
    ids=["hostUsers-false", "user", "user-in-userns"],
)
def test_port_80_binds_without_host_privileges_and_is_reachable(
    runtime: Runtime, make_config: MakeConfig, bridge: NodeNetwork, who: dict[str, object]
) -> None:
    """Root in a user namespace has no privilege over a network namespace the host's user
    namespace owns, and a non-root user never had one: both bind :80 because the container's
    own ip_unprivileged_port_start is 0 (as Docker sets it). The host's stays as it was."""
    host_start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()
    script = "cat /proc/sys/net/ipv4/ip_unprivileged_port_start; id -u; exec httpd -f -p 80 -h /www"
    config = make_config("web80", "sh", "-c", script, **who)
    state = runtime.start(config, on_netns=lambda pid: bridge.attach("web80", pid).ip)
    try:
        ip = bridge.addresses()["web80"]
        assert fetch(f"http://{ip}:80/") == "hello from orch\n", config.log_path.read_text()
    finally:
        runtime.stop("web80", 0)
        bridge.detach("web80")
    assert state.pid is not None
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text() == host_start


def connect_retrying(address: tuple[str, int], timeout: float = 10) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(address, timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def scrape_network(metrics: NodeMetrics, labels: dict[str, str]) -> LinkCounters:
    """One instance's network series from the agent's /metrics text."""
    families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    v = {s.name: int(s.value) for f in families for s in f.samples if s.labels == labels}
    prefix = "orch_node_instance_network"
    return LinkCounters(
        rx_bytes=v[f"{prefix}_receive_bytes_total"],
        rx_packets=v[f"{prefix}_receive_packets_total"],
        rx_dropped=v[f"{prefix}_receive_packets_dropped_total"],
        tx_bytes=v[f"{prefix}_transmit_bytes_total"],
        tx_packets=v[f"{prefix}_transmit_packets_total"],
        tx_dropped=v[f"{prefix}_transmit_packets_dropped_total"],
    )


def eth0_inside(pid: int) -> LinkCounters:
    """The container's eth0 as the container (and cAdvisor) sees it: its namespace's /proc/net/dev."""
    return parse_net_dev(Path(f"/proc/{pid}/net/dev").read_text())["eth0"]


def test_instance_traffic_counts_what_crossed_its_veth_each_way(
    runtime: Runtime, make_config: MakeConfig, bridge: NodeNetwork, rootfs: Path
) -> None:
    """Real TCP both ways, of different sizes so a swapped receive/transmit cannot pass: the
    container sends its busybox (~2 MB) to a listener on the bridge's gateway, then takes
    4 MiB from the host. The agent's collector, reading the veth's host end, counts at least
    that much each way, and exactly what the container's own eth0 counts."""
    gateway = str(bridge.config.gateway)
    out_size, in_size = (rootfs / "bin" / "busybox").stat().st_size, 4 << 20
    with socket.create_server((gateway, 0)) as listener:
        port = listener.getsockname()[1]
        script = f"nc {gateway} {port} < /bin/busybox; nc -l -p 9000 > /dev/null; exec sleep 1000"
        state = runtime.start(
            make_config("netio", "sh", "-c", script), on_netns=lambda pid: bridge.attach("netio", pid).ip
        )
        assert state.pid is not None
        pid = state.pid
        try:
            ip = bridge.addresses()["netio"]
            listener.settimeout(10)
            conn, _ = listener.accept()
            with conn:
                got = 0
                while got < out_size and (chunk := conn.recv(1 << 16)):
                    got += len(chunk)
            assert got == out_size
            with connect_retrying((ip, 9000)) as sender:
                sender.sendall(b"\0" * in_size)
            metrics = NodeMetrics("test")  # the agent's registry, with its collector of veth counters
            metrics.watch_network(lambda: [("netio", "netio-app")], bridge.veth_name)

            def scraped() -> LinkCounters:
                return scrape_network(metrics, {"instance_name": "netio", "app": "netio-app"})

            # Sent is not yet received: wait until the last bytes are through (nc's FIN may come first).
            assert wait_until(lambda: scraped().rx_bytes >= in_size), scraped()
            assert scraped().tx_bytes >= out_size, scraped()

            def bytes_and_packets(c: LinkCounters) -> tuple[int, ...]:  # drops differ by design (counters.py)
                return c.rx_bytes, c.rx_packets, c.tx_bytes, c.tx_packets

            def same_as_inside() -> bool:  # once the last ACKs are through, the very same numbers
                return bytes_and_packets(scraped()) == bytes_and_packets(eth0_inside(pid))

            assert wait_until(same_as_inside), (scraped(), eth0_inside(pid))
        finally:
            runtime.stop("netio", 0)
            bridge.detach("netio")


def test_frames_the_veth_cannot_hand_to_the_instance_count_as_its_receive_drops(
    runtime: Runtime, make_config: MakeConfig, bridge: NodeNetwork
) -> None:
    """Frames too big for the container's eth0 (its MTU lowered to 1000 from inside) are
    dropped at the handover: they count as the instance's receive drops, as its own eth0
    counts them, and not as transmit drops."""
    state = runtime.start(make_config("drops", "sleep", "1000"), on_netns=lambda pid: bridge.attach("drops", pid).ip)
    assert state.pid is not None
    pid = state.pid
    try:
        subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "link", "set", "eth0", "mtu", "1000"], check=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for _ in range(3):  # 1400 bytes fit the bridge (1500), not the container's eth0
                udp.sendto(b"\0" * 1400, (bridge.addresses()["drops"], 9))
        metrics = NodeMetrics("test")
        metrics.watch_network(lambda: [("drops", "drops-app")], bridge.veth_name)

        def seen() -> LinkCounters:
            return scrape_network(metrics, {"instance_name": "drops", "app": "drops-app"})

        # Sent is not yet delivered (the first frames wait for the container's ARP answer).
        assert wait_until(lambda: seen().rx_dropped >= 3), seen()
        assert seen().tx_dropped == 0 and eth0_inside(pid).rx_dropped >= 3, (seen(), eth0_inside(pid))
    finally:
        runtime.stop("drops", 0)
        bridge.detach("drops")
