"""Container networking across hosts on `orch up --hosts 3` (docs/networking.md): each node a
subnet from the scheduler, host-gw routes between the hosts, instances reaching each other by
IP with their own addresses, masquerade only when leaving the cluster CIDR, the hostPort
hairpin, and routes that follow nodes as they leave and come back.

The server is busybox httpd with a CGI script that answers the client's address as it saw it
(REMOTE_ADDR), so each hop's NAT, or its absence, is visible."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import instances, orch, orch_up
from tests.fixtures.processes import orch_env, stop, wait_for
from tests.fixtures.rootfs import build_busybox_rootfs

pytestmark = pytest.mark.root

APPS = """
apiVersion: orch/v1
kind: App
metadata: {name: web}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
  ports: [{containerPort: 8080, hostPort: 18080}]
  nodeSelector: {zone: zone-2}
  readiness: {tcp: 8080}
  stopGracePeriod: 1s
---
apiVersion: orch/v1
kind: App
metadata: {name: client}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  nodeSelector: {zone: zone-0}
  stopGracePeriod: 1s
---
apiVersion: orch/v1
kind: App
metadata: {name: neighbour}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  nodeSelector: {zone: zone-2}
  stopGracePeriod: 1s
"""

# Peer address as a python one-shot TCP server on a lab host saw it, for traffic leaving the cluster.
PEER_SERVER = (
    "import socket; s = socket.create_server(('0.0.0.0', 19111)); c, a = s.accept(); "
    "print(a[0], flush=True); c.sendall(b'seen\\n'); c.close()"
)


@pytest.fixture(scope="module")
def web_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_busybox_rootfs(tmp_path_factory.mktemp("web-root"))
    (root / "bin" / "timeout").symlink_to("busybox")  # busybox 1.35's wget -T segfaults: timeout(1) instead
    cgi = root / "www" / "cgi-bin" / "ip"
    cgi.parent.mkdir()
    cgi.write_text('#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "$REMOTE_ADDR"\n')
    cgi.chmod(0o755)
    return root


def one(info: dict[str, Any], app: str) -> dict[str, Any] | None:
    found = [i for i in instances(info) if i["app"] == app and i["state"] == "Running"]
    return found[0] if len(found) == 1 and found[0]["ip"] else None


def exec_in(info: dict[str, Any], inst: dict[str, Any], *cmd: str) -> str:
    r = orch(info, "exec", inst["name"], "--", *cmd)
    assert r.returncode == 0, f"{cmd} in {inst['name']} on {inst['node']}: {r.returncode} {r.stdout}{r.stderr}"
    return r.stdout


def netns_argv(info: dict[str, Any], host: str, *cmd: str) -> list[str]:
    netns = next(h["netns"] for h in info["lab"]["hosts"] if h["name"] == host)
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *cmd]


def routes_on(info: dict[str, Any], host: str) -> dict[str, str]:
    """dst -> gateway of orch's routes on a lab host."""
    argv = netns_argv(info, host, "ip", "-j", "-4", "route", "show", "proto", "152")
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {r["dst"]: r["gateway"] for r in json.loads(out or "[]")}


def nodes(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    r = orch(info, "get", "nodes", "-o", "json")
    return {n["name"]: n for n in json.loads(r.stdout)} if r.returncode == 0 else {}


def all_ready(info: dict[str, Any], count: int) -> dict[str, Any] | None:
    """The nodes once all `count` are Ready. The count matters: on a slow host the first agents
    register before the last, and those alone are all Ready. 90 s: a lab of three in the
    emulated VM (make test-v2) took over 30."""
    n = nodes(info)
    return n if len(n) == count and all(x["state"] == "Ready" for x in n.values()) else None


# 600 s, not the suite's 300: in the emulated VM (make test-v2, 25654ef) every check passed and the
# lab of three was still stopping when 300 s ran out, as test_up_hosts' did.
@pytest.mark.timeout(600)
def test_instances_reach_each_other_across_hosts_by_ip(tmp_path: Path, web_root: Path, record_property) -> None:
    with orch_up(tmp_path, "--hosts", "3", cidr_start=180) as info:
        hosts = {h["name"]: h["address"] for h in info["lab"]["hosts"]}
        ready = wait_for(lambda: all_ready(info, 3), 90, "3 nodes Ready")
        # Subnets from the scheduler: the lowest /24s of the cluster CIDR, the first half of --cidr
        # (whose last /24 is the lab network).
        lab_network = ipaddress.IPv4Network(info["lab"]["network"])
        cluster = next(ipaddress.IPv4Network(f"{lab_network.network_address}/16", strict=False).subnets(1))
        subnets = {name: ipaddress.IPv4Network(n["subnet"]) for name, n in ready.items()}
        assert sorted(subnets.values()) == list(cluster.subnets(new_prefix=24))[:3], subnets
        assert {name: n["nodeIp"] for name, n in ready.items()} == hosts
        # host-gw: each host routes the two other subnets through their hosts' addresses.
        for h in hosts:
            want = {str(subnets[o]): hosts[o] for o in hosts if o != h}
            wait_for(lambda: routes_on(info, h) == want, 15, f"routes on {h}")  # noqa: B023

        assert orch(info, "apply", "-", stdin=APPS % {"root": web_root}).returncode == 0
        web = wait_for(lambda: one(info, "web"), 30, "web running")
        client = wait_for(lambda: one(info, "client"), 30, "client running")
        neighbour = wait_for(lambda: one(info, "neighbour"), 30, "neighbour running")
        assert (web["node"], client["node"], neighbour["node"]) == ("h3", "h1", "h3")
        assert ipaddress.ip_address(web["ip"]) in subnets["h3"] and ipaddress.ip_address(client["ip"]) in subnets["h1"]

        # h1 -> h3 by IP, TCP (wget, and nc): the server sees the client's own address.
        url = f"http://{web['ip']}:8080/cgi-bin/ip"
        seen = wait_for(lambda: _wget(info, client, url), 15, "web answers the client")
        assert seen == client["ip"]
        request = "GET /index.html HTTP/1.0\r\n\r\n"
        assert "hello from orch" in exec_in(info, client, "sh", "-c", f"printf '{request}' | nc -w 5 {web['ip']} 8080")

        # Leaving the cluster CIDR (to h2's own address): masqueraded to h1's address.
        server = subprocess.Popen(netns_argv(info, "h2", sys.executable, "-c", PEER_SERVER), stdout=subprocess.PIPE)
        try:
            wait_for(lambda: _listening(info, "h2", 19111), 10, "the peer server on h2")
            assert exec_in(info, client, "sh", "-c", f"echo hi | nc -w 5 {hosts['h2']} 19111").strip() == "seen"
            assert server.communicate(timeout=10)[0].decode().strip() == hosts["h1"]
        finally:
            stop(server, signal.SIGKILL, timeout=5)

        # hostPort hairpin: instances on h3 reach h3's own hostPort, the web instance itself too;
        # masqueraded to the bridge's gateway so that the answer comes back the same way.
        gateway = str(subnets["h3"].network_address + 1)
        hairpin = f"http://{hosts['h3']}:18080/cgi-bin/ip"
        assert wait_for(lambda: _wget(info, neighbour, hairpin), 10, "hairpin from the neighbour") == gateway
        assert _wget(info, web, hairpin) == gateway
        # From h1's instance the hostPort answers as well (leaving the cluster: h1's address).
        assert _wget(info, client, hairpin) == hosts["h1"]

        # A node that goes away: its routes go from the others once it is deleted, come back
        # when it returns, and its subnet is kept (freed by the delete, the lowest free again).
        agent = next(p for p in info["processes"] if p["role"] == "agent" and p["host"] == "h2")
        os.kill(agent["pid"], signal.SIGKILL)
        wait_for(lambda: nodes(info)["h2"]["state"] == "NotReady", 15, "h2 NotReady")
        assert str(subnets["h2"]) in routes_on(info, "h1")  # liveness alone moves no route
        cleanup = subprocess.run([*agent["argv"], "--cleanup"], capture_output=True, text=True, env=orch_env())
        assert cleanup.returncode == 0, cleanup.stderr
        assert routes_on(info, "h2") == {}  # --cleanup took h2's own routes and NAT rules
        assert "ORCH-" not in _sh(info, "h2", "iptables-save")
        started = time.monotonic()
        assert orch(info, "delete", "node", "h2").returncode == 0
        wait_for(lambda: str(subnets["h2"]) not in routes_on(info, "h1"), 15, "h2's route gone from h1")
        record_property("route_removed_after_delete_s", round(time.monotonic() - started, 2))
        assert "h2" not in nodes(info)
        started = time.monotonic()
        with open(tmp_path / "h2-again.log", "wb") as log:
            again = subprocess.Popen(agent["argv"], stdout=log, stderr=subprocess.STDOUT, env=orch_env())
        try:
            wait_for(lambda: routes_on(info, "h1").get(str(subnets["h2"])) == hosts["h2"], 30, "h2's route back")
            record_property("route_back_after_agent_start_s", round(time.monotonic() - started, 2))
            assert nodes(info)["h2"]["subnet"] == str(subnets["h2"]) and nodes(info)["h2"]["state"] == "Ready"
            wait_for(lambda: len(routes_on(info, "h2")) == 2, 15, "h2's routes to the others")

            # Healed at agent start: a route and the NAT jump removed by hand while the agent is
            # down come back once it runs again.
            stop(again, signal.SIGTERM, timeout=20)
            bridge = agent["argv"][agent["argv"].index("--bridge") + 1]
            _sh(info, "h2", "ip", "route", "del", str(subnets["h3"]))
            _sh(info, "h2", "iptables", "-t", "nat", "-D", "POSTROUTING", "-j", f"ORCH-MASQ-{bridge}")
            with open(tmp_path / "h2-again.log", "ab") as log:
                again = subprocess.Popen(agent["argv"], stdout=log, stderr=subprocess.STDOUT, env=orch_env())
            wait_for(lambda: str(subnets["h3"]) in routes_on(info, "h2"), 20, "h2's route to h3 back")
            wait_for(lambda: f"-A POSTROUTING -j ORCH-MASQ-{bridge}" in _sh(info, "h2", "iptables-save"), 20, "jump")
            assert orch(info, "delete", "app", "web", "client", "neighbour").returncode == 0
            wait_for(lambda: not instances(info), 30, "apps gone")
        finally:
            stop(again, timeout=20)  # orch up's cleanup removes h2's network as well


def _wget(info: dict[str, Any], inst: dict[str, Any], url: str) -> str | None:
    r = orch(info, "exec", inst["name"], "--", "timeout", "5", "wget", "-q", "-O", "-", url)
    # httpd listens dual-stack: REMOTE_ADDR is "[::ffff:10.88.0.2]" for an IPv4 client.
    return (
        r.stdout.strip().removeprefix("[::ffff:").removesuffix("]") if r.returncode == 0 and r.stdout.strip() else None
    )


def _sh(info: dict[str, Any], host: str, *cmd: str) -> str:
    return subprocess.run(netns_argv(info, host, *cmd), capture_output=True, text=True, check=True).stdout


def _listening(info: dict[str, Any], host: str, port: int) -> bool:
    out = subprocess.run(netns_argv(info, host, "ss", "-ltnH"), capture_output=True, text=True).stdout
    return f":{port} " in out


def test_orch_up_on_one_machine_gives_each_node_a_subnet_and_removes_its_nat(tmp_path: Path) -> None:
    # Without --hosts every agent shares this machine's network namespace: no routes between
    # them (their node IPs are local), but each bridge gets its NAT chains, and orch up's exit
    # removes them with the bridges.
    with orch_up(tmp_path, "--nodes", "2", cidr_start=195) as info:
        ready = wait_for(lambda: all_ready(info, 2), 90, "2 nodes Ready")
        assert len({n["subnet"] for n in ready.values()}) == 2 and {n["nodeIp"] for n in ready.values()} == {
            "127.0.0.1"
        }
        bridges = [p["argv"][p["argv"].index("--bridge") + 1] for p in info["processes"] if p["role"] == "agent"]
        # Ready comes with the registration; the agent sets its NAT up right after it (make test,
        # loaded: node-1's jump was not there yet when read at once).
        jumps = [f"-A {j} -j ORCH-{c}-{b}" for b in bridges for j, c in (("POSTROUTING", "MASQ"), ("FORWARD", "FWD"))]
        wait_for(lambda: all(j in _saved() for j in jumps), 30, "each bridge's NAT and FORWARD jumps")
    rules = _saved()
    assert not [b for b in bridges if b in rules], rules
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert not [b for b in bridges if f" {b}:" in links]


def _saved() -> str:
    return "".join(
        subprocess.run(["iptables-save", "-t", t], capture_output=True, text=True, check=True).stdout
        for t in ("nat", "filter")
    )
