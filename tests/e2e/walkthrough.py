"""The commands and files of docs/deploy.md, as text with the values of a place: the page's
(m1..m3 at 192.0.2.11-13) or a lab's. test_lab.py runs them on the lab and checks that, with
the page's values, each one is on the page word for word."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

MACHINES = ("m1", "m2", "m3")
SCHEDULERS = ("m1", "m2")
ADMIN = "alice"


@dataclass(frozen=True)
class Values:
    ip: dict[str, str]  # machine -> address
    cidr: str  # the cluster CIDR: the schedulers give each node a /24 of it
    pki: str  # the workstation's PKI directory
    on: Callable[[str, str], str]  # (machine, absolute path) -> that path on the machine
    srv: str  # where the image lies, the same path on every machine
    tmp: str  # the workstation's scratch directory

    def etc(self, m: str) -> str:
        return self.on(m, "/etc/orch")


PAGE = Values(
    ip={m: f"192.0.2.{11 + i}" for i, m in enumerate(MACHINES)},
    cidr="10.88.0.0/16",
    pki="~/orch-pki",
    on=lambda _m, path: path,
    srv="/srv/orch",
    tmp="/tmp",
)


def install_commands(v: Values, m: str) -> list[str]:
    """Section 1, what is left of it on a lab host (the rest installs software it shares)."""
    return [f"install -d -m 0700 {v.etc(m)} {v.etc(m)}/pki {v.etc(m)}/etcd", "sysctl -w net.ipv4.ip_forward=1"]


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


def etcd_files(v: Values, m: str) -> list[str]:
    """Section 3: the member's certificate where orch-etcd.service reads it."""
    pki, etcd = f"{v.etc(m)}/pki/etcd", f"{v.etc(m)}/etcd"
    return [
        f"install -m 0644 {pki}/ca.crt {etcd}/ca.crt",
        f"install -m 0644 {pki}/{m}.crt {etcd}/member.crt",
        f"install -m 0600 {pki}/{m}.key {etcd}/member.key",
    ]


def etcd_env(v: Values, m: str) -> str:
    """Section 3: /etc/orch/etcd.env."""
    ip = v.ip[m]
    cluster = ",".join(f"{n}=https://{v.ip[n]}:2380" for n in MACHINES)
    return f"""ETCD_NAME={m}
ETCD_LISTEN_CLIENT_URLS=https://{ip}:2379
ETCD_ADVERTISE_CLIENT_URLS=https://{ip}:2379
ETCD_LISTEN_PEER_URLS=https://{ip}:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=https://{ip}:2380
ETCD_INITIAL_CLUSTER={cluster}
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=orch
ETCD_LISTEN_METRICS_URLS=http://{ip}:2381
"""


def etcd_health(v: Values, m: str) -> str:
    etcd = f"{v.etc(m)}/etcd"
    return (
        f"etcdctl --endpoints {etcd_urls(v, 2379)} --cacert {etcd}/ca.crt --cert {etcd}/member.crt"
        f" --key {etcd}/member.key endpoint health"
    )


def scheduler_env(v: Values, m: str) -> str:
    """Section 4: /etc/orch/scheduler.env."""
    ip, pki = v.ip[m], f"{v.etc(m)}/pki"
    return f"""ORCH_LISTEN={ip}:7070
ORCH_ETCD={etcd_urls(v, 2379)}
ORCH_SCHEDULER_ID={m}
ORCH_TLS_CA={pki}/ca.crt
ORCH_TLS_CERT={pki}/scheduler-{m}.crt
ORCH_TLS_KEY={pki}/scheduler-{m}.key
ORCH_ETCD_CA={pki}/etcd/ca.crt
ORCH_ETCD_CERT={pki}/etcd/scheduler-{m}.crt
ORCH_ETCD_KEY={pki}/etcd/scheduler-{m}.key
ORCH_SCHEDULER_ARGS=--metrics-listen {ip}:9101 --cluster-cidr {v.cidr}
"""


def schedulers(v: Values) -> str:
    return ",".join(f"{v.ip[m]}:7070" for m in SCHEDULERS)


def node_env(v: Values, m: str) -> str:
    """Section 5: /etc/orch/node.env."""
    ip, pki = v.ip[m], f"{v.etc(m)}/pki"
    return f"""ORCH_SCHEDULER={schedulers(v)}
ORCH_NODE_NAME={m}
ORCH_NODE_LISTEN={ip}:7071
ORCH_TLS_CA={pki}/ca.crt
ORCH_TLS_CERT={pki}/{m}.crt
ORCH_TLS_KEY={pki}/{m}.key
ORCH_NODE_ARGS=--bridge orch0 --metrics-listen {ip}:9100
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


# The units' ExecStart lines, as deploy/systemd/*.service have them (from branch v2host at
# 05512fa; test_lab.py checks them against the unit files once those are here).
EXEC_START = {
    "orch-etcd": "/usr/bin/etcd --data-dir=%S/orch-etcd --heartbeat-interval=50 --election-timeout=500 --pre-vote"
    " --auto-compaction-mode=revision --auto-compaction-retention=10000"
    " --client-cert-auth --trusted-ca-file=%d/ca.crt --cert-file=%d/member.crt --key-file=%d/member.key"
    " --peer-client-cert-auth --peer-trusted-ca-file=%d/ca.crt --peer-cert-file=%d/member.crt"
    " --peer-key-file=%d/member.key",
    "orch-scheduler": "/usr/local/bin/orch scheduler --listen ${ORCH_LISTEN} --etcd ${ORCH_ETCD}"
    " --id ${ORCH_SCHEDULER_ID} --tls-ca ${ORCH_TLS_CA} --tls-cert ${ORCH_TLS_CERT} --tls-key ${ORCH_TLS_KEY}"
    " --etcd-ca ${ORCH_ETCD_CA} --etcd-cert ${ORCH_ETCD_CERT} --etcd-key ${ORCH_ETCD_KEY} $ORCH_SCHEDULER_ARGS",
    "orch-node": "/usr/local/bin/orch node --name ${ORCH_NODE_NAME} --state-dir /var/lib/orch/node"
    " --listen ${ORCH_NODE_LISTEN} --tls-ca ${ORCH_TLS_CA} --tls-cert ${ORCH_TLS_CERT} --tls-key ${ORCH_TLS_KEY}"
    " $ORCH_NODE_ARGS",
}


def unit_exec_start(text: str) -> str:
    """A unit file's ExecStart=, its continuation lines joined and its whitespace collapsed."""
    joined = text.replace("\\\n", " ")
    line = next(line for line in joined.splitlines() if line.startswith("ExecStart="))
    return " ".join(line.removeprefix("ExecStart=").split())


def expand(exec_start: str, env: dict[str, str], specifiers: dict[str, str]) -> list[str]:
    """The argv systemd makes of an ExecStart line: a word `$VAR` becomes the variable's words,
    `${VAR}` inside a word its value, `%x` the unit's specifier (systemd.exec(5), systemd.unit(5))."""
    argv = []
    for word in shlex.split(exec_start):
        if re.fullmatch(r"\$\w+", word):
            argv += env.get(word[1:], "").split()
            continue
        word = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m[1], ""), word)
        argv.append(re.sub(r"%(\w)", lambda m: specifiers[m[1]], word))
    return argv


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
