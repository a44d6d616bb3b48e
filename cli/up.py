"""`orch up`: a local cluster of the production shape in the foreground:
one etcd, one scheduler, N agents, each a separate process, all on
loopback. Ctrl-C or SIGTERM stops everything and removes what it made."""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cli import pki
from cli.client import DEFAULT_STATE_DIR, CliError
from node.runtime.userns import IDS_PER_CONTAINER, IdRange
from orch.files import write_json_atomic
from orch.tls import TlsFiles
from orch.trees import remove_tree

log = logging.getLogger("orch.up")
ETCD = "etcd"
ETCD_MEMBER = "up"  # the one etcd member's name, and its certificate's


@dataclass
class Proc:
    role: str
    node: str | None
    argv: list[str]
    metricsUrl: str | None
    publishAddress: str | None = None  # agents: the local address their hostPorts are published on
    pid: int = 0
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: object, what: str, timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen is not None
        if proc.popen.poll() is not None:
            raise CliError(f"{what}: process exited with code {proc.popen.returncode}; see its log")
        with contextlib.suppress(OSError, ValueError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise CliError(f"{what}: not ready after {timeout:.0f}s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:
        return bool(r.status == 200)


def tcp_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


class Cluster:
    def __init__(
        self, state_dir: Path, nodes: int, ports: list[int], lease_ttl: int, cidr: str, tls: bool = True
    ) -> None:
        self.dir = state_dir.resolve()
        self.pki = self.dir / "pki" if tls else None
        self.nodes = nodes
        self.ports = [p or free_port() for p in ports]
        self.lease_ttl = lease_ttl
        self.cidr = ipaddress.ip_network(cidr)
        self.procs: list[Proc] = []
        # Bridge names must be unique per cluster on this host and ≤ 15 chars.
        self.cluster_id = hashlib.sha256(str(self.dir).encode()).hexdigest()[:4]
        self.etcd_endpoint = ""

    def node_name(self, i: int) -> str:
        return f"node-{i}"

    def _spawn(self, proc: Proc, logfile: Path) -> Proc:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "ab") as out:
            # Own session: a Ctrl-C at the terminal reaches orch up only, which
            # then stops its children in order (agents, scheduler, etcd).
            proc.popen = subprocess.Popen(
                proc.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        proc.pid = proc.popen.pid
        self.procs.append(proc)
        return proc

    def start_etcd(self) -> None:
        if shutil.which(ETCD) is None:
            raise CliError("etcd not found on PATH: install Debian's etcd-server (make demo does)")
        client, peer, metrics = free_port(), free_port(), free_port()
        scheme = "https" if self.pki else "http"
        self.etcd_endpoint = f"{scheme}://127.0.0.1:{client}"
        peer_url, metrics_url = f"{scheme}://127.0.0.1:{peer}", f"http://127.0.0.1:{metrics}"
        argv = [ETCD, "--name", ETCD_MEMBER, "--data-dir", str(self.dir / "etcd"),
                "--listen-client-urls", self.etcd_endpoint, "--advertise-client-urls", self.etcd_endpoint,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"{ETCD_MEMBER}={peer_url}", "--initial-cluster-state", "new",
                # /metrics and /health only, in plaintext for Prometheus: no keys are served there.
                "--listen-metrics-urls", metrics_url,
                # 1 s node leases need an election timeout below 667 ms (etcd raises smaller TTLs).
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-outputs", str(self.dir / "logs" / "etcd.log"),
                *self.etcd_tls_args()]  # fmt: skip
        proc = self._spawn(Proc("etcd", None, argv, f"{metrics_url}/metrics"), self.dir / "logs" / "etcd.out")
        wait_until(lambda: http_ok(f"{metrics_url}/health"), "etcd", 15, proc)

    def etcd_tls_args(self) -> list[str]:
        """Clients and peers alike need a certificate of etcd's own CA (cli/pki.py says why)."""
        if self.pki is None:
            return []
        ca, member = self.pki / pki.ETCD_DIR / "ca.crt", TlsFiles.in_dir(self.pki / pki.ETCD_DIR, ETCD_MEMBER)
        return ["--client-cert-auth", "--trusted-ca-file", str(ca),
                "--cert-file", str(member.cert), "--key-file", str(member.key),
                "--peer-client-cert-auth", "--peer-trusted-ca-file", str(ca),
                "--peer-cert-file", str(member.cert), "--peer-key-file", str(member.key)]  # fmt: skip

    def orch(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cli", *args]

    def make_certificates(self) -> None:
        """The CAs and a certificate per component (kept across runs: the cluster's identity;
        reissued when the CA or what they must say changed)."""
        if self.pki is None:
            return
        try:
            pki.init(self.pki)
            loopback = ["127.0.0.1", "localhost"]
            pki.issue_for(self.pki, "scheduler", "scheduler", loopback, replace=True)
            pki.issue_for(self.pki, "etcd", ETCD_MEMBER, loopback, replace=True)
            pki.issue_for(self.pki, "admin", "admin", [], replace=True)
            for i in range(self.nodes):
                pki.issue_for(self.pki, "node", self.node_name(i), ["127.0.0.1"], replace=True)
        except pki.PkiError as e:
            raise CliError(f"orch up: {e}") from None

    def tls_args(self, name: str) -> list[str]:
        if self.pki is None:
            return ["--insecure"]
        files = TlsFiles.in_dir(self.pki, name)
        return ["--tls-ca", str(files.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]

    def scheduler_etcd_args(self) -> list[str]:
        if self.pki is None:
            return ["--insecure-etcd"]
        files = TlsFiles.in_dir(self.pki / pki.ETCD_DIR, "scheduler")
        return ["--etcd-ca", str(files.ca), "--etcd-cert", str(files.cert), "--etcd-key", str(files.key)]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def start_scheduler(self, i: int) -> None:
        metrics, port = free_port(), self.ports[i]
        argv = self.orch("scheduler", "--listen", f"127.0.0.1:{port}", "--etcd", self.etcd_endpoint,
                         "--lease-ttl", str(self.lease_ttl), "--metrics-listen", f"127.0.0.1:{metrics}",
                         "--id", f"scheduler-{i}", *self.tls_args("scheduler"),
                         *self.scheduler_etcd_args())  # fmt: skip
        proc = self._spawn(Proc("scheduler", None, argv, f"http://127.0.0.1:{metrics}/metrics"),
                           self.dir / "logs" / f"scheduler-{i}.log")  # fmt: skip
        wait_until(lambda: tcp_open(port), f"scheduler-{i}", 15, proc)

    def agent_args(self, i: int) -> list[str]:
        name = self.node_name(i)
        subnet = list(self.cidr.subnets(new_prefix=24))[i]
        return ["--name", name, "--state-dir", str(self.dir / "nodes" / name),
                "--bridge", f"orch{self.cluster_id}n{i}", "--subnet", str(subnet),
                "--cgroup-parent", f"orch/up-{self.cluster_id}/{name}"]  # fmt: skip

    def publish_address(self, i: int) -> str:
        """Each node its own loopback address for hostPorts, as if the nodes were separate hosts."""
        digest = hashlib.sha256(self.cluster_id.encode()).digest()
        return f"127.{1 + digest[0] % 254}.{digest[1]}.{i + 1}"

    def userns_range(self, i: int) -> str:
        """Disjoint user namespace id blocks per node: the nodes share this host's uids."""
        count = IdRange().count // max(self.nodes, 1) // IDS_PER_CONTAINER * IDS_PER_CONTAINER
        return f"{IdRange().first + i * count}:{count}"

    def start_agent(self, i: int) -> None:
        metrics = free_port()
        name = self.node_name(i)
        # Agents get every scheduler and fail over between them.
        argv = self.orch("--scheduler", ",".join(self.addresses), "node", *self.agent_args(i),
                         "--label", f"zone=zone-{i % 3}", "--metrics-listen", f"127.0.0.1:{metrics}",
                         "--listen", f"127.0.0.1:{free_port()}",
                         "--publish-address", self.publish_address(i), *self.tls_args(name),
                         "--userns-range", self.userns_range(i))  # fmt: skip
        proc = self._spawn(Proc("agent", name, argv, f"http://127.0.0.1:{metrics}/metrics", self.publish_address(i)),
                           self.dir / "logs" / f"{name}.log")  # fmt: skip
        wait_until(lambda: tcp_open(metrics), f"agent {name}", 15, proc)

    def write_cluster_json(self) -> None:
        doc = {
            "schedulers": self.addresses,
            "etcd": [self.etcd_endpoint],
            "stateDir": str(self.dir),
            "clusterId": self.cluster_id,  # names its bridges (orch<id>n<i>) and cgroups (orch/up-<id>/)
            "tlsDir": str(self.pki) if self.pki else None,  # ca.crt, admin.crt, admin.key for the CLI
            "processes": [
                {"role": p.role, "node": p.node, "pid": p.pid, "argv": p.argv, "metricsUrl": p.metricsUrl}
                | ({"publishAddress": p.publishAddress} if p.publishAddress else {})
                for p in self.procs
            ],
        }
        write_json_atomic(self.dir / "cluster.json", doc, indent=2)
        # Prometheus file_sd targets (deploy/prometheus.yml reads this file next to it).
        targets = [
            {
                "targets": [urlsplit(p.metricsUrl).netloc],
                "labels": {"role": p.role, "cluster": self.cluster_id, **({"node": p.node} if p.node else {})},
            }
            for p in self.procs
            if p.metricsUrl
        ]
        write_json_atomic(self.dir / "prometheus-targets.json", targets, indent=2)

    def stop(self) -> None:
        """Agents and scheduler first (SIGTERM), then every container and network, then etcd."""
        for role in ("agent", "scheduler", "etcd"):
            group = [p for p in self.procs if p.role == role and p.popen is not None]
            for p in group:
                with contextlib.suppress(ProcessLookupError):
                    p.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            for p in group:
                try:
                    p.popen.wait(timeout=10)  # type: ignore[union-attr]
                except subprocess.TimeoutExpired:
                    p.popen.kill()  # type: ignore[union-attr]
                    p.popen.wait()  # type: ignore[union-attr]
            if role == "agent":
                self.cleanup_nodes()
        for name in ("cluster.json", "prometheus-targets.json", "etcd", "nodes"):
            path = self.dir / name
            if path.is_dir():
                with contextlib.suppress(OSError):
                    remove_tree(path)  # nodes/ holds what containers and images made: any depth
            else:
                path.unlink(missing_ok=True)

    def cleanup_nodes(self) -> None:
        # Agents leave containers running on exit (so restarts adopt them); the
        # cluster going away is the one time they must all go.
        for i in range(self.nodes):
            argv = self.orch("node", *self.agent_args(i), "--cleanup")
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                log.error("cleanup of %s failed: %s", self.node_name(i), result.stderr.strip())


def run_cluster(
    nodes: int,
    state_dir: Path | None,
    port: int,
    lease_ttl: int,
    cidr: str = "",
    schedulers: int = 1,
    tls: bool = True,
) -> None:
    cidr = cidr or os.environ.get("ORCH_UP_CIDR", "10.88.0.0/16")
    ports = [port] + [0] * (schedulers - 1)
    cluster = Cluster(state_dir or DEFAULT_STATE_DIR, nodes, ports, lease_ttl, cidr, tls)
    if (cluster.dir / "cluster.json").exists():
        raise CliError(f"{cluster.dir / 'cluster.json'} exists: is another `orch up` running there?")
    cluster.dir.mkdir(parents=True, exist_ok=True)
    stopping = False

    def on_signal(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster.make_certificates()
        cluster.start_etcd()
        for i in range(schedulers):
            cluster.start_scheduler(i)
        for i in range(nodes):
            cluster.start_agent(i)
        cluster.write_cluster_json()
        addresses = ",".join(cluster.addresses)
        print(f"orch up: {nodes} node(s), scheduler(s) {addresses}, state in {cluster.dir}", flush=True)
        tls_env = f" ORCH_TLS_DIR={cluster.pki}" if cluster.pki else ""
        if cluster.pki is None:
            print("  WARNING --no-tls: plaintext gRPC and etcd; every local user can control this cluster", flush=True)
        print(f"  export ORCH_SCHEDULER={addresses}{tls_env}; Ctrl-C stops the cluster", flush=True)
        reported: set[int] = set()
        while not stopping:
            for p in cluster.procs:
                if p.popen is not None and p.popen.poll() is not None and p.pid not in reported:
                    reported.add(p.pid)
                    log.warning("%s %s (pid %d) exited with %s", p.role, p.node or "", p.pid, p.popen.returncode)
            time.sleep(0.2)
    finally:
        print("orch up: stopping", flush=True)
        cluster.stop()
