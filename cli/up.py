"""`orch up`: a local cluster of the production shape in the foreground: etcd, schedulers and
N agents, each a separate process.

By default they all listen on loopback in this network namespace. With `--hosts N` each lab
host (cli/lab.py: a network namespace on a lab bridge) is a machine of its own: etcd has a
member on each of the first three hosts (one member below three hosts), schedulers run on
different hosts, every host runs an agent, and they talk only over the lab network, on the
well-known ports of docs/deploy.md. Ctrl-C or SIGTERM stops everything and removes what it
made, the lab included."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from cli import lab, pki
from cli.client import DEFAULT_STATE_DIR, CliError
from cli.procs import LOCAL, Place, Proc, free_port, http_ok, tcp_open, terminate, wait_until
from node.network import NetworkError
from node.network.hostnets import HostNet, host_routes, podman_networks
from node.network.node import host_netlink
from node.runtime.userns import IDS_PER_CONTAINER, IdRange
from node.session import first_scheduler
from orch.files import write_atomic, write_json_atomic
from orch.tls import TlsFiles
from orch.trees import remove_tree
from scheduler.secrets import generate_key_line
from scheduler.services import DEFAULT_SERVICE_CIDR, ServiceCidrError, parse_service_cidr

log = logging.getLogger("orch.up")
ETCD = "etcd"
# How long a daemon may take to listen: seconds on a laptop, over 15 s on a slow VM (a process
# that exits meanwhile is reported at once, so a long wait costs nothing when things work).
STARTUP_WAIT = 90
ETCD_MEMBER = "up"  # the one etcd member's name without a lab, and its certificate's
# Ports on a lab host, which has its own network stack (docs/deploy.md uses the same).
ETCD_CLIENT, ETCD_PEER, ETCD_METRICS = 2379, 2380, 2381
SCHEDULER_PORT, SCHEDULER_METRICS, SCHEDULER_DASHBOARD = 7070, 9101, 8080
AGENT_API, AGENT_METRICS = 7071, 9100


def scheduler_list(addresses: list[str], node: str, i: int) -> list[str]:
    """The i-th agent's --scheduler list, turned so that its session starts at scheduler i mod
    n: an agent starts where its node's name points (first_scheduler), which spreads a fleet but
    can put a handful of nodes all on one (node-0 to node-5 all on the first of two)."""
    n = len(addresses)
    k = (i - first_scheduler(node, n)) % n if n else 0
    return addresses[k:] + addresses[:k]


class Cluster:
    def __init__(
        self,
        state_dir: Path,
        nodes: int,
        ports: list[int],
        lease_ttl: int,
        cidr: str,
        tls: bool = True,
        hosts: int = 0,
        service_cidr: str = DEFAULT_SERVICE_CIDR,
        allow_host_paths: tuple[str, ...] = (),
    ) -> None:
        self.dir = state_dir.resolve()
        self.allow_host_paths = allow_host_paths  # given to every agent (--allow-host-path)
        self.pki = self.dir / "pki" if tls else None
        self.nodes = nodes
        self.lease_ttl = lease_ttl
        self.cidr = ipaddress.ip_network(cidr)
        # The scheduler's cluster CIDR: all of --cidr, or with a lab its first half (the lab
        # network is its last /24, and must not be taken for containers).
        self.cluster_cidr = next(self.cidr.subnets(prefixlen_diff=1)) if hosts else self.cidr
        try:  # a VIP that is also a container's (or a lab host's) address would capture its traffic
            self.service_cidr = str(parse_service_cidr(service_cidr, avoid=[cidr]))
        except ServiceCidrError as e:
            raise CliError(f"orch up: --service-cidr: {e}") from None
        self.procs: list[Proc] = []
        self.reported: set[int] = set()  # pids whose exit was logged
        # Bridge and lab names must be unique per cluster on this host and ≤ 15 chars.
        self.cluster_id = hashlib.sha256(str(self.dir).encode()).hexdigest()[:4]
        self.lab = self.plan_lab(hosts) if hosts else None
        self.addresses = [
            f"{self.place(i).address}:{p or (SCHEDULER_PORT if self.lab else free_port())}" for i, p in enumerate(ports)
        ]
        self.etcd_endpoints: list[str] = []
        self.dashboards: list[str] = []  # each scheduler's dashboard URL

    def plan_lab(self, hosts: int) -> lab.Lab:
        """The hosts h1..hN on the last /24 of --cidr (its first half goes to containers)."""
        if self.cidr.prefixlen > 17:
            raise CliError(f"--hosts: --cidr {self.cidr} is too small: give a /16 (containers get its first half)")
        subnets = list(self.cidr.subnets(new_prefix=24))
        try:
            return lab.plan(self.cluster_id, [f"h{i + 1}" for i in range(hosts)], str(subnets[-1]))
        except lab.LabError as e:
            raise CliError(f"orch up: {e}") from None

    def place(self, i: int) -> Place:
        """Where node i, scheduler i and etcd member i run."""
        if self.lab is None:
            return LOCAL
        host = self.lab.hosts[i % len(self.lab.hosts)]
        return Place(host.address, host)

    def node_name(self, i: int) -> str:
        return self.place(i).name or f"node-{i}"

    def host_dir(self, place: Place) -> Path:
        """A lab host's own directory (its etcd data, its agent's state); the cluster's otherwise."""
        return self.dir / "hosts" / place.name if place.name else self.dir

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

    def etcd_members(self) -> list[tuple[str, Place]]:
        if self.lab is None:
            return [(ETCD_MEMBER, LOCAL)]
        count = 3 if len(self.lab.hosts) >= 3 else 1  # two members tolerate no failure: one is simpler
        return [(h.name, self.place(i)) for i, h in enumerate(self.lab.hosts[:count])]

    def start_etcd(self) -> None:
        """Every member at once (they wait for each other's votes), then each one healthy."""
        if shutil.which(ETCD) is None:
            raise CliError("etcd not found on PATH: install Debian's etcd-server (make demo does)")
        scheme = "https" if self.pki else "http"
        members = [(name, place, place.port(ETCD_CLIENT), place.port(ETCD_PEER), place.port(ETCD_METRICS))
                   for name, place in self.etcd_members()]  # fmt: skip
        initial = ",".join(f"{n}={scheme}://{p.address}:{peer}" for n, p, _, peer, _ in members)
        self.etcd_endpoints = [f"{scheme}://{p.address}:{client}" for _, p, client, _, _ in members]
        started = []
        for (name, place, _, peer, metrics), client_url in zip(members, self.etcd_endpoints, strict=True):
            peer_url, metrics_url = f"{scheme}://{place.address}:{peer}", f"http://{place.address}:{metrics}"
            suffix = f"-{name}" if place.host else ""
            argv = [ETCD, "--name", name, "--data-dir", str(self.host_dir(place) / "etcd"),
                    "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                    "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", f"orch-{self.cluster_id}",
                    # /metrics and /health only, in plaintext for Prometheus: no keys are served there.
                    "--listen-metrics-urls", metrics_url,
                    # 1 s node leases need an election timeout below 667 ms (etcd raises smaller TTLs).
                    # --pre-vote (etcd 3.5's default): a member back from a partition must not depose
                    # the leader, whose election would stall every lease renewal for a moment.
                    "--heartbeat-interval", "50", "--election-timeout", "500", "--pre-vote",
                    # History is kept for the last 10,000 revisions, not forever (etcd's default).
                    "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
                    "--logger", "zap", "--log-outputs", str(self.dir / "logs" / f"etcd{suffix}.log"),
                    *self.etcd_tls_args(name)]  # fmt: skip
            proc = Proc("etcd", None, place.argv(argv), f"{metrics_url}/metrics", host=place.name)
            started.append((self._spawn(proc, self.dir / "logs" / f"etcd{suffix}.out"), metrics_url, name))
        for proc, metrics_url, name in started:
            wait_until(functools.partial(http_ok, f"{metrics_url}/health"), f"etcd {name}", STARTUP_WAIT, proc)

    def etcd_tls_args(self, member: str) -> list[str]:
        """Clients and peers alike need a certificate of etcd's own CA (cli/pki.py says why)."""
        if self.pki is None:
            return []
        ca, cert = self.pki / pki.ETCD_DIR / "ca.crt", TlsFiles.in_dir(self.pki / pki.ETCD_DIR, member)
        return ["--client-cert-auth", "--trusted-ca-file", str(ca),
                "--cert-file", str(cert.cert), "--key-file", str(cert.key),
                "--peer-client-cert-auth", "--peer-trusted-ca-file", str(ca),
                "--peer-cert-file", str(cert.cert), "--peer-key-file", str(cert.key)]  # fmt: skip

    def orch(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cli", *args]

    def make_certificates(self) -> None:
        """The CAs and a certificate per component, for the addresses it serves on (kept across
        runs: the cluster's identity; reissued when the CA or what they must say changed)."""
        if self.pki is None:
            return
        loopback = ["127.0.0.1", "localhost"]
        schedulers = [a.rpartition(":")[0] for a in self.addresses]
        try:
            pki.init(self.pki)
            pki.issue_for(self.pki, "scheduler", "scheduler", sorted({*loopback, *schedulers}), replace=True)
            for name, place in self.etcd_members():
                pki.issue_for(self.pki, "etcd", name, [place.address] if place.host else loopback, replace=True)
            pki.issue_for(self.pki, "admin", "admin", [], replace=True)
            for i in range(self.nodes):
                pki.issue_for(self.pki, "node", self.node_name(i), [self.place(i).address], replace=True)
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

    def secret_key_file(self) -> Path:
        """The key that seals this cluster's secrets (scheduler/secrets.py): made once, kept."""
        path = self.dir / "secret-keys"
        if not path.exists():
            write_atomic(path, f"{generate_key_line('up')}\n".encode(), mode=0o600)
        return path

    def start_scheduler(self, i: int) -> None:
        place, address = self.place(i), self.addresses[i]
        metrics = f"{place.address}:{place.port(SCHEDULER_METRICS)}"
        dashboard = f"{place.address}:{place.port(SCHEDULER_DASHBOARD)}"
        self.dashboards.append(f"http://{dashboard}/")
        argv = self.orch("scheduler", "--listen", address, "--etcd", ",".join(self.etcd_endpoints),
                         "--lease-ttl", str(self.lease_ttl), "--metrics-listen", metrics,
                         "--dashboard-listen", dashboard, "--service-cidr", self.service_cidr,
                         "--id", f"scheduler-{i}", "--cluster-cidr", str(self.cluster_cidr),
                         "--secret-key-file", str(self.secret_key_file()),
                         *self.tls_args("scheduler"),
                         *self.scheduler_etcd_args())  # fmt: skip
        proc = self._spawn(Proc("scheduler", None, place.argv(argv), f"http://{metrics}/metrics", host=place.name),
                           self.dir / "logs" / f"scheduler-{i}.log")  # fmt: skip
        wait_until(lambda: tcp_open(address), f"scheduler-{i}", STARTUP_WAIT, proc)

    def agent_args(self, i: int) -> list[str]:
        name, place = self.node_name(i), self.place(i)
        state = self.host_dir(place) / "node" if place.host else self.dir / "nodes" / name
        # The subnet comes from the scheduler; --cleanup removes the routes and NAT rules too.
        return ["--name", name, "--state-dir", str(state), "--bridge", self.bridge(i),
                "--cgroup-parent", f"orch/up-{self.cluster_id}/{name}",
                *(arg for path in self.allow_host_paths for arg in ("--allow-host-path", path))]  # fmt: skip

    def bridge(self, i: int) -> str:
        return f"orch{self.cluster_id}n{i}"

    def check_cidr(self) -> None:
        """Refuse a --cidr this machine already uses (a route, Podman's network) before starting
        anything; each agent's host is checked again by the scheduler when it registers."""
        ours = {f"route dev {self.bridge(i)}" for i in range(self.nodes)}  # left from an earlier run: reused
        try:
            taken = [n for n in machine_networks() if n.source not in ours]
        except NetworkError as e:
            raise CliError(f"orch up: reading this machine's routes: {e}") from None
        for net in taken:
            if ipaddress.ip_network(net.cidr).overlaps(self.cidr):
                raise CliError(
                    f"orch up: --cidr {self.cidr} overlaps {net.cidr} ({net.source}) on this machine: "
                    "choose another, e.g. --cidr 10.90.0.0/16 (or set ORCH_UP_CIDR)"
                )

    def publish_address(self, i: int) -> str:
        """Each node its own address for hostPorts, as if the nodes were separate hosts (a lab
        host's is its own; on loopback, 127.a.b.(i+1))."""
        if self.lab is not None:
            return self.place(i).address
        digest = hashlib.sha256(self.cluster_id.encode()).digest()
        return f"127.{1 + digest[0] % 254}.{digest[1]}.{i + 1}"

    def userns_range(self, i: int) -> str:
        """Disjoint user namespace id blocks per node: the nodes share this host's uids."""
        count = IdRange().count // max(self.nodes, 1) // IDS_PER_CONTAINER * IDS_PER_CONTAINER
        return f"{IdRange().first + i * count}:{count}"

    def start_agent(self, i: int) -> None:
        place, name = self.place(i), self.node_name(i)
        metrics = f"{place.address}:{place.port(AGENT_METRICS)}"
        # Agents get every scheduler and fail over between them.
        schedulers = ",".join(scheduler_list(self.addresses, name, i))
        argv = self.orch("--scheduler", schedulers, "node", *self.agent_args(i),
                         "--label", f"zone=zone-{i % 3}", "--metrics-listen", metrics,
                         "--listen", f"{place.address}:{place.port(AGENT_API)}",
                         "--publish-address", self.publish_address(i), *self.tls_args(name),
                         "--userns-range", self.userns_range(i))  # fmt: skip
        proc = Proc("agent", name, place.argv(argv), f"http://{metrics}/metrics", self.publish_address(i), place.name)
        self._spawn(proc, self.dir / "logs" / f"{name}.log")
        wait_until(lambda: tcp_open(metrics), f"agent {name}", STARTUP_WAIT, proc)

    def write_cluster_json(self) -> None:
        doc = {
            "schedulers": self.addresses,
            "dashboards": self.dashboards,
            "etcd": self.etcd_endpoints,
            "stateDir": str(self.dir),
            "clusterId": self.cluster_id,  # names its bridges (orch<id>n<i>) and cgroups (orch/up-<id>/)
            "tlsDir": str(self.pki) if self.pki else None,  # ca.crt, admin.crt, admin.key for the CLI
            "lab": lab.describe(self.lab) if self.lab else None,
            "processes": [
                {"role": p.role, "node": p.node, "host": p.host, "pid": p.pid, "argv": p.argv}
                | {"metricsUrl": p.metricsUrl}
                | ({"publishAddress": p.publishAddress} if p.publishAddress else {})
                for p in self.procs
            ],
        }
        write_json_atomic(self.dir / "cluster.json", doc, indent=2)
        # Prometheus file_sd targets (deploy/prometheus.yml reads this file next to it).
        targets = [
            {
                "targets": [urlsplit(p.metricsUrl).netloc],
                "labels": {"role": p.role, "cluster": self.cluster_id, **({"node": p.node} if p.node else {})}
                | ({"host": p.host} if p.host else {}),
            }
            for p in self.procs
            if p.metricsUrl
        ]
        write_json_atomic(self.dir / "prometheus-targets.json", targets, indent=2)

    def stop(self) -> None:
        """Agents and schedulers first (SIGTERM), then every container and network, then etcd,
        then the lab."""
        terminate([p for p in self.procs if p.role == "agent"])
        self.cleanup_nodes()
        terminate([p for p in self.procs if p.role == "scheduler"])
        # One member at a time: a leader that stops hands its lead to a live member at once,
        # but waits seconds for one when every member stops together.
        for p in self.procs:
            if p.role == "etcd":
                terminate([p])
        if self.lab is not None:
            for what in lab.remove(self.lab):
                log.error("could not remove the lab's %s", what)
        for name in ("cluster.json", "prometheus-targets.json", "etcd", "nodes", "hosts"):
            path = self.dir / name
            if path.is_dir():
                with contextlib.suppress(OSError):
                    remove_tree(path)  # nodes/ holds what containers and images made: any depth
            else:
                path.unlink(missing_ok=True)

    def cleanup_nodes(self) -> None:
        """Agents leave containers running on exit (so restarts adopt them); the cluster going
        away is the one time they must all go. Each node's cleanup runs where its agent ran, one
        after the other (the last one removes the cgroup parents they share)."""
        for i in range(self.nodes):
            argv = self.place(i).argv(self.orch("node", *self.agent_args(i), "--cleanup"))
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
    hosts: int = 0,
    service_cidr: str = "",
    allow_host_paths: tuple[str, ...] = (),
) -> None:
    cidr = cidr or os.environ.get("ORCH_UP_CIDR", "10.88.0.0/16")
    service_cidr = service_cidr or os.environ.get("ORCH_UP_SERVICE_CIDR", DEFAULT_SERVICE_CIDR)
    ports = [port] + [0] * (schedulers - 1)
    where = state_dir or DEFAULT_STATE_DIR
    cluster = Cluster(where, hosts or nodes, ports, lease_ttl, cidr, tls, hosts, service_cidr, allow_host_paths)
    if (cluster.dir / "cluster.json").exists():
        raise CliError(f"{cluster.dir / 'cluster.json'} exists: is another `orch up` running there?")
    cluster.dir.mkdir(parents=True, exist_ok=True)
    stopping = starting = False

    def on_signal(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        if starting:  # not after every daemon's wait (up to STARTUP_WAIT each on a starved machine)
            raise StartInterrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        starting = True
        try:
            start(cluster, schedulers)
        except CliError as e:
            # Said before the stop, which takes minutes on a starved machine: whoever reads the
            # log, or gives up waiting, learns why at once (once: not again from main()).
            print(f"orch up: {e}", file=sys.stderr, flush=True)
            raise SystemExit(e.code) from None
        finally:
            starting = False
        while not stopping:
            watch_children(cluster)
            time.sleep(0.2)
    except StartInterrupted as e:
        print(f"orch up: {e} while starting", flush=True)
    finally:
        print("orch up: stopping", flush=True)
        cluster.stop()


class StartInterrupted(Exception):
    """SIGTERM or SIGINT arrived while `orch up` was starting its daemons."""


def machine_networks() -> list[HostNet]:
    """This machine's routes (but orch's own) and Podman's networks."""
    with host_netlink() as ipr:
        return host_routes(ipr, own_bridge="") + podman_networks()


def start(cluster: Cluster, schedulers: int) -> None:
    cluster.check_cidr()
    if cluster.lab is not None:
        try:
            lab.create(cluster.lab, ip_forward=True)
        except lab.LabError as e:
            raise CliError(f"orch up --hosts: {e}") from None
    cluster.make_certificates()
    cluster.start_etcd()
    for i in range(schedulers):
        cluster.start_scheduler(i)
    for i in range(cluster.nodes):
        cluster.start_agent(i)
    addresses = ",".join(cluster.addresses)
    print(f"orch up: {cluster.nodes} node(s), scheduler(s) {addresses}, state in {cluster.dir}", flush=True)
    print(f"  containers: cluster CIDR {cluster.cluster_cidr}, a /24 per node (docs/networking.md)", flush=True)
    if cluster.lab is not None:
        hosts = ", ".join(f"{h.name} {h.address}" for h in cluster.lab.hosts)
        where = f"lab network {cluster.lab.network} on bridge {cluster.lab.bridge}, this machine {cluster.lab.gateway}"
        enter = " ".join(lab.enter(cluster.lab.hosts[0]))
        print(f"  {where}; hosts {hosts} (`{enter} CMD` runs CMD on h1)", flush=True)
    tls_env = f" ORCH_TLS_DIR={cluster.pki}" if cluster.pki else ""
    if cluster.pki is None:
        print("  WARNING --no-tls: plaintext gRPC and etcd; every local user can control this cluster", flush=True)
    print(f"  dashboard: {', '.join(cluster.dashboards)}", flush=True)
    print(f"  export ORCH_SCHEDULER={addresses}{tls_env}; Ctrl-C stops the cluster", flush=True)
    # Last: tools (and tests) take cluster.json as "up", and may read what was printed then.
    cluster.write_cluster_json()


def watch_children(cluster: Cluster) -> None:
    for p in cluster.procs:
        if p.popen is not None and p.popen.poll() is not None and p.pid not in cluster.reported:
            cluster.reported.add(p.pid)
            log.warning("%s %s (pid %d) exited with %s", p.role, p.node or "", p.pid, p.popen.returncode)
