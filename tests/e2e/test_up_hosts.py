"""`orch up --hosts 3`: each node on a lab host of its own (a network namespace on a lab
bridge), etcd with a member per host and two schedulers on two hosts, driven by the CLI from the
root namespace over the lab network; cluster.json restarts a process where it ran; on exit
nothing of the lab is left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cluster import instances, orch, orch_up, wait_removed
from tests.fixtures.processes import orch_env, stop, wait_for

pytestmark = pytest.mark.root

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: spread}
spec:
  replicas: 6
  image: rootfs:%s
  command: ["sleep", "100000"]
  stopGracePeriod: 1s
"""


def ready(info) -> list[str]:
    r = orch(info, "get", "nodes", "-o", "json")
    return sorted(n["name"] for n in json.loads(r.stdout) if n["state"] == "Ready") if r.returncode == 0 else []


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


# 600 s, not the suite's 300: in the emulated VM (make test-v2) the whole test passed its checks and
# was still stopping the lab of three (8 daemons, 6 containers) when 300 s ran out.
@pytest.mark.timeout(600)
def test_up_hosts_runs_each_node_on_its_own_host_and_leaves_nothing(tmp_path: Path, busybox_rootfs: Path) -> None:
    with orch_up(tmp_path, "--hosts", "3", cidr_start=170) as info:
        lab = info["lab"]
        hosts = {h["name"]: h for h in lab["hosts"]}
        assert sorted(hosts) == ["h1", "h2", "h3"]
        procs = info["processes"]
        assert sorted((p["role"], p["host"]) for p in procs) == [
            ("agent", "h1"), ("agent", "h2"), ("agent", "h3"), ("etcd", "h1"), ("etcd", "h2"), ("etcd", "h3"),
            ("scheduler", "h1"), ("scheduler", "h2"),
        ]  # fmt: skip
        assert info["schedulers"] == [f"{hosts[h]['address']}:7070" for h in ("h1", "h2")]
        assert info["etcd"] == [f"https://{hosts[h]['address']}:2379" for h in ("h1", "h2", "h3")]
        for p in procs:  # each process is in its host's network namespace, and its argv says so
            path = f"/run/netns/{hosts[p['host']]['netns']}"
            assert p["argv"][:3] == ["nsenter", f"--net={path}", "--"]
            assert netns_inode(f"/proc/{p['pid']}/ns/net") == netns_inode(path)
        for h in hosts.values():  # hostPorts answer other hosts, as docs/deploy.md sets up machines
            argv = ["nsenter", f"--net=/run/netns/{h['netns']}", "sysctl", "-n", "net.ipv4.ip_forward"]
            assert subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip() == "1"
        wait_for(lambda: ready(info) == ["h1", "h2", "h3"], 30, "h1, h2, h3 Ready")

        assert orch(info, "apply", "-", stdin=APP % busybox_rootfs).returncode == 0
        wait_for(lambda: sum(i["state"] == "Running" for i in instances(info)) == 6, 30, "6 Running")
        assert sorted(sum(i["node"] == h for i in instances(info)) for h in hosts) == [2, 2, 2]

        # A killed agent restarted from its argv in cluster.json comes back on its own host.
        agent = next(p for p in procs if p["role"] == "agent" and p["host"] == "h3")
        os.kill(agent["pid"], signal.SIGKILL)
        wait_for(lambda: "h3" not in ready(info), 15, "h3 NotReady")
        with open(tmp_path / "h3-again.log", "wb") as log:
            again = subprocess.Popen(agent["argv"], stdout=log, stderr=subprocess.STDOUT, env=orch_env())
        try:
            h3 = netns_inode(f"/run/netns/{hosts['h3']['netns']}")
            wait_for(lambda: netns_inode(f"/proc/{again.pid}/ns/net") == h3, 5, "the agent in h3's namespace")
            wait_for(lambda: ready(info) == ["h1", "h2", "h3"], 30, "h3 Ready again")
            assert orch(info, "delete", "app", "spread").returncode == 0
            wait_removed(info, timeout=30)
        finally:
            stop(again, timeout=20)  # orch up stops only what it started; its cleanup removes h3's containers
    left = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert lab["bridge"] not in left
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not {h["netns"] for h in lab["hosts"]} & set(netns.split())
    assert not Path(info["stateDir"], "hosts").exists()
