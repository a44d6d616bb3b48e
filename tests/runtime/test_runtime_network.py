"""Root: every container's own network namespace (issue 9 item 4) and binding ports
below 1024 in it without privileges on the host (item 10)."""

from __future__ import annotations

import os
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.network import NetworkConfig, NodeNetwork
from node.runtime import ContainerConfig, Runtime
from tests.network.test_network_root import free_subnet, host_links
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
