"""node/network/cluster.py for real, in a network namespace of its own (root only): the bridge
and NAT chains from the scheduler's subnet, host-gw routes synced as nodes come and go (and
healed when removed by hand), the host networks reported, and a teardown that leaves nothing.

The scenario runs in a child process under `unshare --net`: its routes, links and iptables
rules are that namespace's, and vanish with it whatever happens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.processes import ROOT, orch_env

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root"), pytest.mark.timeout(60)]

SCENARIO = textwrap.dedent(
    """
    import json, subprocess, sys
    from pathlib import Path
    from node.network.cluster import ClusterNetwork, ClusterNetworkConfig
    from node.network.routes import NodeRoute

    def sh(*argv):
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")  # no dummy module here
    sh("ip", "addr", "add", "192.0.2.11/24", "dev", "eth0")
    sh("ip", "link", "set", "peer0", "up")
    sh("ip", "link", "set", "eth0", "up")
    out = {}
    podnet = ClusterNetwork(ClusterNetworkConfig("orchtn0", Path(sys.argv[1]), node="m1"))
    net = podnet.configure("10.88.0.0/24", "10.88.0.0/16")
    out["gateway"] = str(net.config.gateway)
    m = {n: NodeRoute(n, f"10.88.{i}.0/24", f"192.0.2.{11 + i}") for i, n in enumerate(["m1", "m2", "m3", "m4"])}
    far = NodeRoute("far", "10.88.9.0/24", "198.51.100.9")
    out["problems"] = podnet.sync_routes([m["m1"], m["m2"], m["m3"], far])
    out["routes1"] = sh("ip", "-4", "route", "show", "proto", "152")
    sh("ip", "route", "del", "10.88.2.0/24")  # by hand: the next pass puts it back
    sh("ip", "route", "add", "10.88.7.0/24", "via", "192.0.2.1")  # someone else's: never touched
    podnet.sync_routes([m["m1"], m["m2"], m["m3"]])
    out["routes2"] = sh("ip", "-4", "route", "show", "proto", "152")
    podnet.sync_routes([m["m1"], m["m3"], m["m4"]])  # m2 deleted, m4 joined
    out["routes3"] = sh("ip", "-4", "route", "show", "proto", "152")
    out["hostnets"] = [[n.cidr, n.source] for n in podnet.host_networks()]
    out["nat"] = sh("iptables-save", "-t", "nat")
    out["filter"] = sh("iptables-save", "-t", "filter")
    out["recorded"] = json.loads((Path(sys.argv[1]) / "network.json").read_text())
    podnet.teardown()
    out["after_routes"] = sh("ip", "-4", "route", "show", "proto", "152")
    out["after_all"] = sh("ip", "-4", "route")
    out["after_rules"] = sh("iptables-save")
    out["after_links"] = sh("ip", "-o", "link")
    out["after_state"] = sorted(p.name for p in Path(sys.argv[1]).iterdir())
    print(json.dumps(out))
    """
)


def test_routes_nat_and_teardown_in_a_namespace_of_their_own(tmp_path: Path) -> None:
    argv = ["unshare", "--net", "--", sys.executable, "-c", SCENARIO, str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=orch_env(), timeout=50, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["gateway"] == "10.88.0.1"
    assert len(out["problems"]) == 1 and out["problems"][0].startswith("route 10.88.9.0/24 via 198.51.100.9")
    assert [line.strip() for line in out["routes1"].splitlines()] == [  # `show proto 152` omits the proto
        "10.88.1.0/24 via 192.0.2.12 dev eth0",
        "10.88.2.0/24 via 192.0.2.13 dev eth0",
    ]
    assert out["routes2"] == out["routes1"]  # healed
    assert [line.strip() for line in out["routes3"].splitlines()] == [
        "10.88.2.0/24 via 192.0.2.13 dev eth0",
        "10.88.3.0/24 via 192.0.2.14 dev eth0",
    ]
    # What the scheduler's overlap check sees: the host's own networks, not orch's.
    assert sorted(map(tuple, out["hostnets"])) == [
        ("10.88.7.0/24", "route dev eth0"),
        ("192.0.2.0/24", "route dev eth0"),
    ]
    assert "-A POSTROUTING -j ORCH-MASQ-orchtn0" in out["nat"]
    assert "-A ORCH-MASQ-orchtn0 -s 10.88.0.0/24 -d 10.88.0.0/16 -j RETURN" in out["nat"]
    assert "-A FORWARD -j ORCH-FWD-orchtn0" in out["filter"]
    assert out["recorded"] == {"subnet": "10.88.0.0/24", "clusterCidr": "10.88.0.0/16"}
    # Teardown: orch's routes, chains, bridge and recorded subnet gone; the others' route stays.
    assert out["after_routes"] == ""
    assert "10.88.7.0/24 via 192.0.2.1" in out["after_all"]
    assert "ORCH-" not in out["after_rules"]
    assert "orchtn0" not in out["after_links"]
    assert out["after_state"] == []
