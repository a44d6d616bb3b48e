"""Attacks on a node from its containers and its apps (issue 9 items 4 and 9), on the
shared `orch up` cluster: hostPorts that would capture the host's own services, and
what a container can reach of the control plane on its node.

What a container reaches (asserted below): nothing of etcd, the scheduler, the agents'
gRPC and metrics ports or the zygote, whether by 127.0.0.1 (its own loopback), by its
bridge's gateway (those services listen on 127.0.0.1 only) or by its node's publish
address (127.x: all of 127.0.0.0/8 is the container's own lo, and the raw-table rule
drops bridge traffic to it on the host). A host service that listens on every address
is reachable through the gateway, as with Docker (the probe's positive control): bind
control-plane services to loopback, as orch up does.
"""

from __future__ import annotations

import contextlib
import functools
import json
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.cluster import instances, orch, wait_removed
from tests.fixtures.processes import wait_for

pytestmark = pytest.mark.root

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["sh", "-c", %(script)s]
  stopGracePeriod: 1s
"""


def apply(info: dict[str, Any], root: Any, name: str, script: str, extra: str = "") -> None:
    doc = APP % {"name": name, "root": root, "script": json.dumps(script)} + extra  # JSON is YAML
    r = orch(info, "apply", "-", stdin=doc)
    assert r.returncode == 0, r.stderr


def instance_of(info: dict[str, Any], app: str) -> dict[str, Any] | None:
    found = [i for i in instances(info) if i["app"] == app and i["desired"] == "Run"]
    return found[0] if len(found) == 1 else None


def refused(info: dict[str, Any], app: str) -> dict[str, Any] | None:
    inst = instance_of(info, app)
    return inst if inst is not None and inst["reason"] == "HostPortNotAllowed" else None


def delete(info: dict[str, Any], *apps: str) -> None:
    for app in apps:
        orch(info, "delete", "app", app)
    wait_removed(info, *apps, timeout=30)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def agent_ports(info: dict[str, Any]) -> dict[str, int]:
    """Every agent's gRPC and metrics port, from the argv orch up started it with."""
    ports = {}
    for p in info["processes"]:
        if p["role"] == "agent":
            argv = p["argv"]
            ports[f"{p['node']}-grpc"] = port_of(argv[argv.index("--listen") + 1])
            ports[f"{p['node']}-metrics"] = port_of(argv[argv.index("--metrics-listen") + 1])
    return ports


def http_body(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bytes(r.read())
    except Exception:  # any failure: not our container's answer
        return None


def test_host_ports_the_host_uses_are_refused_and_the_host_keeps_them(
    cluster: dict[str, Any], busybox_rootfs: Any
) -> None:
    """hostPort = etcd's or the scheduler's port: the node refuses it (the scheduler does not
    know what listens on a node), the instance says why, and the host's own connections still
    reach etcd and the scheduler. hostPort 22: below the nodes' range, placement avoids them."""
    info = cluster
    etcd = urlsplit(info["etcd"][0]).port
    scheduler = port_of(info["schedulers"][0])
    assert etcd is not None
    targets = {"nodeatk-etcd": etcd, "nodeatk-sched": scheduler}
    for name, port in targets.items():
        ports = f"  ports: [{{containerPort: 8080, hostPort: {port}}}]\n"
        apply(info, busybox_rootfs, name, "exec httpd -f -p 8080 -h /www", ports)
    apply(
        info,
        busybox_rootfs,
        "nodeatk-ssh",
        "exec httpd -f -p 22 -h /www",
        "  ports: [{containerPort: 22, hostPort: 22}]\n",
    )
    try:
        for name, port in targets.items():
            inst = wait_for(functools.partial(refused, info, name), 30, f"{name} refused")
            assert inst["state"] == "Failed"
            assert f"hostPort {port}/tcp is in use on {inst['node']} by the host" in inst["message"], inst
            # The host's connections go where they always went: etcd and the scheduler answer.
            for address in ["127.0.0.1", *(p["publishAddress"] for p in info["processes"] if p.get("publishAddress"))]:
                with contextlib.suppress(ConnectionRefusedError):  # nothing on a node's own address
                    socket.create_connection((address, port), timeout=2).close()
                assert http_body(f"http://{address}:{port}/") != b"hello from orch\n"
        assert orch(info, "get", "nodes").returncode == 0  # the CLI -> scheduler -> etcd path
        ssh = wait_for(lambda: (i := instance_of(info, "nodeatk-ssh")) and i["reason"] and i, 30, "ssh diagnosed")
        assert (ssh["state"], ssh["reason"], ssh["node"]) == ("Pending", "Unschedulable", None), ssh
        assert "didn't allow the host port" in ssh["message"]
    finally:
        delete(info, *targets, "nodeatk-ssh")


@pytest.fixture
def host_listeners() -> Iterator[dict[str, int]]:
    """Two services of the host's own: one on loopback, one on every address."""
    with socket.socket() as lo, socket.socket() as every:
        lo.bind(("127.0.0.1", 0))
        every.bind(("0.0.0.0", 0))  # the point: a service not bound to loopback
        lo.listen()
        every.listen()
        yield {"loopback-only": lo.getsockname()[1], "all-addresses": every.getsockname()[1]}


PROBE = """
set -- $(ip route | grep default); gw=$3
probe() { if nc -w 1 "$2" "$3" -e true >/dev/null 2>&1; then echo "$1 OPEN"; else echo "$1 CLOSED"; fi; }
%(probes)s
grep -q orch-zygote /proc/net/unix && echo "zygote-abstract OPEN" || echo "zygote-abstract CLOSED"
ls %(zygote_dir)s >/dev/null 2>&1 && echo "zygote-dir OPEN" || echo "zygote-dir CLOSED"
echo done; exec sleep 100000
"""


def test_what_a_container_reaches_on_its_node(
    cluster: dict[str, Any], busybox_rootfs: Any, host_listeners: dict[str, int]
) -> None:
    info = cluster
    control = {
        "etcd": urlsplit(info["etcd"][0]).port or 0,
        "scheduler": port_of(info["schedulers"][0]),
        **agent_ports(info),
        **host_listeners,
    }
    publish = [p["publishAddress"] for p in info["processes"] if p.get("publishAddress")]
    lines = []
    for name, port in control.items():
        lines.append(f'probe "{name}@lo" 127.0.0.1 {port}')
        lines.append(f'probe "{name}@gw" "$gw" {port}')
        lines += [f'probe "{name}@{address}" {address} {port}' for address in publish]
    zygote_dir = f"{info['stateDir']}/nodes/node-0/containers/.zygote"
    script = PROBE % {"probes": "\n".join(lines), "zygote_dir": zygote_dir}
    apply(info, busybox_rootfs, "nodeatk-probe", script)
    try:
        inst = wait_for(lambda: (i := instance_of(info, "nodeatk-probe")) and i["state"] == "Running" and i, 30, "up")

        seen: list[str] = []

        def output() -> dict[str, str] | None:
            r = orch(info, "logs", inst["name"])
            seen[:] = [r.stdout, r.stderr]
            if "done" not in r.stdout.split():
                return None
            return dict(line.split() for line in r.stdout.splitlines() if line != "done")

        try:
            reached = wait_for(output, 60, "the probes")
        except AssertionError:
            raise AssertionError(f"{seen} {instances(info)}") from None
        opened = sorted(target for target, result in reached.items() if result == "OPEN")
        # Only the host service that listens on every address, through the gateway.
        assert opened == ["all-addresses@gw"], reached
        assert len(reached) == len(lines) + 2
    finally:
        delete(info, "nodeatk-probe")
