"""Service discovery and VIPs on a real `orch up` of three nodes (issue 11 items 3-4): names
resolve inside containers, `web.orch` is a stable VIP that spreads connections over the ready
instances of every node, and an instance that dies leaves it before clients notice twice.
Each test runs on both shapes of `orch up`: three nodes on this host (`--nodes 3`, one network
namespace) and the lab of three hosts (`--hosts 3`), where the VIP and the names cross hosts
over the host-gw routes.

The client runs GNU wget, copied with its shared libraries into a busybox root and called by its
path (busybox sh prefers its own applets): Debian's busybox-static wget cannot resolve any name
(static glibc's NSS segfaults, even for localhost); its nslookup has a resolver of its own."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.cluster import instances, orch, orch_up, unused_cidr
from tests.fixtures.processes import orch_argv, orch_env, wait_for

pytestmark = pytest.mark.root

WEB = """
apiVersion: orch/v1
kind: App
metadata: {name: web}
spec:
  replicas: 3
  image: rootfs:%(root)s
  command: ["sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
  readiness: {tcp: 8080, periodSeconds: 1}
  service: {port: 8080}
  stopGracePeriod: 1s
---
apiVersion: orch/v1
kind: App
metadata: {name: db}
spec:
  replicas: 2
  image: rootfs:%(root)s
  command: ["sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 5432 -h /tmp/www"]
  stopGracePeriod: 1s
---
apiVersion: orch/v1
kind: App
metadata: {name: client}
spec:
  replicas: 1
  image: rootfs:%(client_root)s
  command: ["sleep", "100000"]
  stopGracePeriod: 1s
"""


def with_binary(root: Path, binary: str) -> None:
    """binary and the shared libraries it loads (ldd), at their paths on this host."""
    listed = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    for path in [binary, *re.findall(r"(/\S+)", listed)]:
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)  # the file a symlink names, under the symlink's name


@pytest.fixture(scope="module")
def client_root(tmp_path_factory, busybox_rootfs):
    wget = shutil.which("wget")
    if wget is None:
        pytest.skip("GNU wget is not installed (deploy/install-deps.sh installs it)")
    root = tmp_path_factory.mktemp("client") / "root"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    (root / "bin" / "wget").unlink()  # busybox's
    with_binary(root, wget)
    return root


@pytest.fixture(scope="module", params=["nodes", "hosts"])
def cluster(request, tmp_path_factory, busybox_rootfs, client_root):
    with unused_cidr(240) as service_cidr:  # VIPs of another cluster on this host must not be ours
        tmp = tmp_path_factory.mktemp("services")
        yield from _cluster(request.param, tmp, service_cidr, busybox_rootfs, client_root)


def _cluster(shape, tmp, service_cidr, busybox_rootfs, client_root):
    with orch_up(tmp, f"--{shape}", "3", "--service-cidr", service_cidr, cidr_start=232) as info:
        apps = WEB % {"root": busybox_rootfs, "client_root": client_root}
        assert orch(info, "apply", "-", stdin=apps).returncode == 0
        # 90 s, as the lab's other waits: in the emulated VM (make test-v2) a lab of three starting
        # its daemons and containers at once starves every process on its 2 CPUs.
        wait_for(lambda: ready_counts(info) == {"web": 3, "db": 2, "client": 1}, 90, "every instance ready")
        yield info
    # orch up removed what the agents made for the VIPs: chains, jumps, routes (with the bridges).
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert f"orch{info['clusterId']}" not in saved
    assert service_cidr not in subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout


def ready_counts(info) -> dict[str, int]:
    counts: dict[str, int] = collections.Counter()
    for i in instances(info):
        counts[i["app"]] += i["state"] == "Running" and i["ready"]
    return dict(counts)


def the(info, app: str) -> list[dict]:
    return [i for i in instances(info) if i["app"] == app and i["state"] == "Running"]


def sh(info, script: str, timeout: float = 30) -> str:
    """Run a shell script in the client instance; its stdout."""
    (client,) = the(info, "client")
    r = orch(info, "exec", client["name"], "--", "sh", "-c", script, timeout=timeout)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return r.stdout


def from_a_node(info, url: str) -> str:
    """GET url from the first node's network namespace (the lab's first host, or this host)."""
    lab = info.get("lab")
    netns = ["nsenter", f"--net=/run/netns/{lab['hosts'][0]['netns']}", "--"] if lab else []
    argv = [*netns, "wget", "-q", "-T", "5", "-t", "1", "-O-", url]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


def service_ip(info) -> str:
    apps = {a["name"]: a for a in json.loads(orch(info, "get", "apps", "-o", "json").stdout)}
    return str(apps["web"]["serviceIp"])


def test_names_resolve_inside_an_instance(cluster):
    info = cluster
    (client,) = the(info, "client")
    gateway = client["ip"].rsplit(".", 1)[0] + ".1"
    search, nameserver, options = sh(info, "cat /etc/resolv.conf").splitlines()
    assert search.startswith("search client.orch orch")  # then the host's own search domains
    assert (nameserver, options) == (f"nameserver {gateway}", "options ndots:2")
    vip = service_ip(info)
    assert f"Address: {vip}" in sh(info, "busybox nslookup -type=a web.orch")
    db = sorted(i["ip"] for i in the(info, "db"))
    answer = sh(info, "busybox nslookup -type=a db.orch")
    assert sorted(line.split()[-1] for line in answer.splitlines() if line.startswith("Address") and "#" not in line
                  and ":53" not in line) == db  # fmt: skip
    one = the(info, "db")[0]
    assert f"Address: {one['ip']}" in sh(info, f"busybox nslookup -type=a {one['name']}.db.orch")
    missing = orch(info, "exec", client["name"], "--", "busybox", "nslookup", "-type=a", "nope.orch")
    assert missing.returncode == 1 and "NXDOMAIN" in missing.stdout + missing.stderr


def test_wget_by_name_answers_and_the_vip_spreads_300_requests_over_3_instances(cluster, record_property):
    info = cluster
    web = {i["name"] for i in the(info, "web")}
    assert len({i["node"] for i in the(info, "web")}) == 3  # one per node: the VIP crosses bridges
    assert sh(info, "/usr/bin/wget -q -T 5 -t 1 -O- http://web.orch:8080/").strip() in web
    assert sh(info, "/usr/bin/wget -q -T 5 -t 1 -O- http://web:8080/").strip() in web  # the search list
    db = the(info, "db")[0]
    assert sh(info, f"/usr/bin/wget -q -T 5 -t 1 -O- http://{db['name']}.db:5432/").strip() == db["name"]

    out = sh(
        info,
        "for i in $(seq 300); do /usr/bin/wget -q -T 5 -t 1 -O- http://web.orch:8080/ || echo FAILED; done",
        timeout=300,
    )  # 300 processes: minutes in the emulated VM
    counts = collections.Counter(out.split())
    record_property("requests_per_instance", sorted(counts.values()))
    assert set(counts) == web, counts
    assert all(n >= 50 for n in counts.values()), counts

    # From a node itself (OUTPUT), as well as from its instances (PREROUTING).
    assert from_a_node(info, f"http://{service_ip(info)}:8080/").strip() in web

    # By an instance's own name, to one on another node (another host in the lab).
    (client,) = the(info, "client")
    far = next(i for i in the(info, "web") if i["node"] != client["node"])
    assert sh(info, f"/usr/bin/wget -q -T 5 -t 1 -O- http://{far['name']}.web.orch:8080/").strip() == far["name"]


def test_an_instance_that_dies_leaves_the_vip_before_a_client_fails_twice(cluster, record_property):
    info = cluster
    (client,) = the(info, "client")
    victim = next(i for i in the(info, "web") if i["node"] != client["node"])  # behind a route in the lab
    # The client asks every 0.1 s for 8 s, with a 1 s timeout, and notes each outcome.
    script = (
        "for i in $(seq 80); do /usr/bin/wget -q -T 1 -t 1 -O- http://web.orch:8080/ >/dev/null"
        " && echo ok || echo FAIL; sleep 0.1; done"
    )
    tls = ["--tls-dir", info["tlsDir"]] if info.get("tlsDir") else []
    argv = orch_argv("--scheduler", info["schedulers"][0], *tls, "exec", client["name"], "--", "sh", "-c", script)
    loop = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=orch_env())
    try:
        time.sleep(2)
        os.kill(victim["pid"], signal.SIGKILL)  # its init: the whole container goes
        out, err = loop.communicate(timeout=150)  # 80 tries of at most 1.1 s each
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    outcomes = out.split()
    assert len(outcomes) == 80, (out, err)
    record_property("failed_requests", outcomes.count("FAIL"))
    twice = [i for i in range(1, len(outcomes)) if outcomes[i] == outcomes[i - 1] == "FAIL"]
    assert not twice, outcomes
    # It comes back (restartPolicy Always) and is ready again, behind the same VIP.
    wait_for(lambda: ready_counts(info)["web"] == 3, 30, "the instance back and ready")
    assert next(i for i in the(info, "web") if i["name"] == victim["name"])["restarts"] >= 1  # it did die
