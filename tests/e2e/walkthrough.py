"""The commands and files of docs/deploy.md, as text with the values of a place: the page's
(m1..m3 at 192.0.2.11-13) or a lab's. test_lab.py runs them on the lab and checks that, with
the page's values, each one is on the page word for word."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MACHINES = ("m1", "m2", "m3")
SCHEDULERS = ("m1", "m2")
ADMIN = "alice"


@dataclass(frozen=True)
class Values:
    ip: dict[str, str]  # machine -> address
    subnet: dict[str, str]  # machine -> its containers' /24
    pki: str  # the workstation's PKI directory
    on: Callable[[str, str], str]  # (machine, absolute path) -> that path on the machine
    srv: str  # where the image lies, the same path on every machine
    tmp: str  # the workstation's scratch directory

    def etc(self, m: str) -> str:
        return self.on(m, "/etc/orch")


PAGE = Values(
    ip={m: f"192.0.2.{11 + i}" for i, m in enumerate(MACHINES)},
    subnet={m: f"10.88.{1 + i}.0/24" for i, m in enumerate(MACHINES)},
    pki="~/orch-pki",
    on=lambda _m, path: path,
    srv="/srv/orch",
    tmp="/tmp",
)


def pki_commands(v: Values) -> list[str]:
    """Section 2, on the workstation."""
    hosts = {m: f"--host {m} --host {v.ip[m]}" for m in MACHINES}
    return [
        f"orch pki init {v.pki}",
        *(f"orch pki issue {v.pki} etcd {m} {hosts[m]}" for m in MACHINES),
        *(f"orch pki issue {v.pki} scheduler scheduler-{m} {hosts[m]}" for m in SCHEDULERS),
        *(f"orch pki issue {v.pki} node {m} {hosts[m]}" for m in MACHINES),
        f"orch pki issue {v.pki} admin {ADMIN}",
        *(f"orch pki bundle {v.pki} {m}.pki {m}" + (f" scheduler-{m}" if m in SCHEDULERS else "") for m in MACHINES),
    ]


def etcd_urls(v: Values, port: int) -> str:
    return ",".join(f"https://{v.ip[m]}:{port}" for m in MACHINES)


def etcd_env(v: Values, m: str) -> str:
    """Section 3: /etc/orch/etcd.env."""
    ip, pki = v.ip[m], f"{v.etc(m)}/pki/etcd"
    cluster = ",".join(f"{n}=https://{v.ip[n]}:2380" for n in MACHINES)
    return f"""ETCD_NAME={m}
ETCD_LISTEN_CLIENT_URLS=https://{ip}:2379
ETCD_ADVERTISE_CLIENT_URLS=https://{ip}:2379
ETCD_LISTEN_PEER_URLS=https://{ip}:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=https://{ip}:2380
ETCD_LISTEN_METRICS_URLS=http://{ip}:2381
ETCD_INITIAL_CLUSTER={cluster}
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=orch
ETCD_DATA_DIR={v.on(m, "/var/lib/etcd")}/orch
ETCD_HEARTBEAT_INTERVAL=50
ETCD_ELECTION_TIMEOUT=500
ETCD_CLIENT_CERT_AUTH=true
ETCD_TRUSTED_CA_FILE={pki}/ca.crt
ETCD_CERT_FILE={pki}/{m}.crt
ETCD_KEY_FILE={pki}/{m}.key
ETCD_PEER_CLIENT_CERT_AUTH=true
ETCD_PEER_TRUSTED_CA_FILE={pki}/ca.crt
ETCD_PEER_CERT_FILE={pki}/{m}.crt
ETCD_PEER_KEY_FILE={pki}/{m}.key
"""


def etcd_health(v: Values, m: str) -> str:
    pki = f"{v.etc(m)}/pki/etcd"
    return (
        f"etcdctl --endpoints {etcd_urls(v, 2379)} --cacert {pki}/ca.crt --cert {pki}/{m}.crt --key {pki}/{m}.key"
        " endpoint health"
    )


def scheduler_env(v: Values, m: str) -> str:
    """Section 4: /etc/orch/scheduler.env."""
    ip, pki = v.ip[m], f"{v.etc(m)}/pki"
    return f"""ORCH_SCHEDULER_ARGS=--id {m} --listen {ip}:7070 --metrics-listen {ip}:9101 \\
  --etcd {etcd_urls(v, 2379)} \\
  --tls-ca {pki}/ca.crt --tls-cert {pki}/scheduler-{m}.crt --tls-key {pki}/scheduler-{m}.key \\
  --etcd-ca {pki}/etcd/ca.crt --etcd-cert {pki}/etcd/scheduler-{m}.crt --etcd-key {pki}/etcd/scheduler-{m}.key
"""


def schedulers(v: Values) -> str:
    return ",".join(f"{v.ip[m]}:7070" for m in SCHEDULERS)


def node_env(v: Values, m: str) -> str:
    """Section 5: /etc/orch/node.env."""
    ip, pki = v.ip[m], f"{v.etc(m)}/pki"
    return f"""ORCH_SCHEDULER={schedulers(v)}
ORCH_NODE_ARGS=--name {m} --state-dir {v.on(m, "/var/lib/orch")}/node \\
  --listen {ip}:7071 --metrics-listen {ip}:9100 \\
  --bridge orch0 --subnet {v.subnet[m]} \\
  --tls-ca {pki}/ca.crt --tls-cert {pki}/{m}.crt --tls-key {pki}/{m}.key
"""


def cli_commands(v: Values) -> list[str]:
    """Section 6, on the workstation."""
    return [
        f"export ORCH_SCHEDULER={schedulers(v)}",
        f"export ORCH_TLS_DIR={v.pki} ORCH_TLS_USER={ADMIN}",
    ]


def image_commands(v: Values) -> list[str]:
    """Section 7: a busybox web image at the same path on every machine."""
    cmd = """'["httpd","-f","-p","8080","-h","/www"]'"""
    return [
        f"deploy/build-busybox-rootfs.sh {v.tmp}/busybox",
        f"venv/bin/python deploy/build_image.py build {v.tmp}/busybox {v.srv}/busybox-web 1 --cmd {cmd}"
        " --workdir /www --env PATH=/bin",
    ]


def web_yaml(v: Values) -> str:
    return f"""apiVersion: orch/v1
kind: App
metadata:
  name: web
spec:
  replicas: 3
  image: oci:{v.srv}/busybox-web:1
  ports: [{{name: http, containerPort: 8080, hostPort: 18080}}]
  readiness: {{tcp: 8080}}
  stopGracePeriod: 2s
"""


def prometheus_targets(v: Values) -> str:
    """Section 8: /etc/prometheus/prometheus-targets.json."""
    etcd = ", ".join(f'"{v.ip[m]}:2381"' for m in MACHINES)
    sched = ", ".join(f'"{v.ip[m]}:9101"' for m in SCHEDULERS)
    agents = ",\n".join(
        f'  {{"targets": ["{v.ip[m]}:9100"], "labels": {{"role": "agent", "node": "{m}"}}}}' for m in MACHINES
    )
    return f"""[
  {{"targets": [{etcd}], "labels": {{"role": "etcd"}}}},
  {{"targets": [{sched}], "labels": {{"role": "scheduler"}}}},
{agents}
]
"""


def read_env_file(text: str) -> dict[str, str]:
    """What systemd's EnvironmentFile= makes of text: KEY=VALUE lines, # comments, and a
    backslash at the end of a line continuing the value on the next (unquoted values only,
    as on the page)."""
    env = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env
