"""deploy/systemd/ for real: etcd, a scheduler and an agent as systemd services on one host,
as docs/deploy.md sets them up on each machine (certificates from `orch pki`, /etc/orch/*.env),
loopback only. Needs systemd as PID 1 and pure cgroup v2: `make test-v2` runs it in a VM.

The units go to /run/systemd/system (gone at the next boot, whatever happens here); the
test refuses a host that has /etc/orch, orch's units or /usr/local/bin/orch of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.runtime.cgroups import detect
from tests.fixtures.etcd import free_port
from tests.fixtures.processes import ROOT, run_orch, wait_for

SYSTEMD = Path("/run/systemd/system").is_dir()
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not SYSTEMD, reason="needs systemd as PID 1 (run `make test-v2`)"),
    pytest.mark.skipif(detect() != "v2", reason="needs a pure cgroup v2 host (run `make test-v2`)"),
]

UNITS = ("orch-etcd", "orch-scheduler", "orch-node")
ETC, BIN, UNIT_DIR = Path("/etc/orch"), Path("/usr/local/bin/orch"), Path("/run/systemd/system")
STATE = (Path("/var/lib/orch"), Path("/var/lib/orch-etcd"), Path("/var/lib/private/orch-etcd"))
NODE = "st1"
SCOPE = f"orch-node-{NODE}.scope"
CGROUPS = Path("/sys/fs/cgroup")
CLEANUP = [str(BIN), "node", "--cleanup", "--name", NODE, "--state-dir", "/var/lib/orch/node"]

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: unitapp}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["sleep", "100000"]
  stopGracePeriod: 1s
"""


def systemctl(*args: str, check: bool = True) -> str:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 or not check, f"systemctl {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def journal(unit: str) -> str:
    done = subprocess.run(["journalctl", "-u", unit, "-n", "40", "--no-pager"], capture_output=True, text=True)
    return done.stdout


def show(unit: str, prop: str) -> str:
    return systemctl("show", f"--property={prop}", "--value", unit)


def cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text().strip().removeprefix("0::")


def _pki(etcd: str) -> None:
    pki = ETC / "pki"
    for args in (("init",), ("issue", "etcd", "m1"), ("issue", "scheduler", "scheduler"), ("issue", "node", NODE)):
        hosts = ["--host", "127.0.0.1"] if args[0] == "issue" else []
        done = run_orch("pki", args[0], str(pki), *args[1:], *hosts)
        assert done.returncode == 0, done.stderr
    assert run_orch("pki", "issue", str(pki), "admin", "admin").returncode == 0
    (ETC / "etcd").mkdir(mode=0o700)
    for src, dst in (("ca.crt", "ca.crt"), ("m1.crt", "member.crt"), ("m1.key", "member.key")):
        shutil.copy(pki / "etcd" / src, ETC / "etcd" / dst)
    assert etcd.startswith("https://")


def _env_files(ports: list[int]) -> dict[str, str]:
    client, peer, metrics, scheduler, agent = ports
    etcd = f"https://127.0.0.1:{client}"
    pki = ETC / "pki"
    files = {
        "etcd.env": {
            "ETCD_NAME": "m1",
            "ETCD_LISTEN_CLIENT_URLS": etcd,
            "ETCD_ADVERTISE_CLIENT_URLS": etcd,
            "ETCD_LISTEN_PEER_URLS": f"https://127.0.0.1:{peer}",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS": f"https://127.0.0.1:{peer}",
            "ETCD_INITIAL_CLUSTER": f"m1=https://127.0.0.1:{peer}",
            "ETCD_INITIAL_CLUSTER_STATE": "new",
            "ETCD_LISTEN_METRICS_URLS": f"http://127.0.0.1:{metrics}",
        },
        "scheduler.env": {
            "ORCH_LISTEN": f"127.0.0.1:{scheduler}",
            "ORCH_ETCD": etcd,
            "ORCH_SCHEDULER_ID": "scheduler-1",
            **_tls("ORCH_TLS", pki, "scheduler"),
            **_tls("ORCH_ETCD", pki / "etcd", "scheduler"),
        },
        "node.env": {
            "ORCH_SCHEDULER": f"127.0.0.1:{scheduler}",
            "ORCH_NODE_NAME": NODE,
            "ORCH_NODE_LISTEN": f"127.0.0.1:{agent}",
            **_tls("ORCH_TLS", pki, NODE),
        },
    }
    for name, values in files.items():
        (ETC / name).write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return {"etcd": etcd, "scheduler": f"127.0.0.1:{scheduler}"}


def _tls(prefix: str, directory: Path, name: str) -> dict[str, str]:
    return {
        f"{prefix}_CA": str(directory / "ca.crt"),
        f"{prefix}_CERT": str(directory / f"{name}.crt"),
        f"{prefix}_KEY": str(directory / f"{name}.key"),
    }


def _refuse_a_real_deployment() -> None:
    ours = [str(p) for p in (ETC, BIN, *STATE, *(UNIT_DIR / f"{u}.service" for u in UNITS)) if p.exists()]
    ours += [u for u in UNITS if systemctl("cat", f"{u}.service", check=False)]
    if ours:
        pytest.skip(f"this host has {', '.join(ours)}: a deployment of its own, not touched")


def _remove_everything() -> None:
    for unit in (*UNITS, SCOPE):
        systemctl("stop", unit, check=False)
    if (CGROUPS / "system.slice" / SCOPE).exists() or Path("/var/lib/orch/node").exists():
        subprocess.run(CLEANUP, check=False, timeout=120)
    for unit in UNITS:
        (UNIT_DIR / f"{unit}.service").unlink(missing_ok=True)
        systemctl("reset-failed", f"{unit}.service", check=False)
    systemctl("daemon-reload")
    BIN.unlink(missing_ok=True)
    for path in (ETC, *STATE):
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, str]]:
    _refuse_a_real_deployment()
    try:
        ETC.mkdir(mode=0o700)
        BIN.symlink_to(Path(sys.executable).parent / "orch")
        addresses = _env_files([free_port() for _ in range(5)])
        _pki(addresses["etcd"])
        for unit in UNITS:
            shutil.copy(ROOT / "deploy" / "systemd" / f"{unit}.service", UNIT_DIR)
        systemctl("daemon-reload")
        for unit in UNITS:  # Type=notify: each returns once the service said READY=1
            systemctl("start", unit, check=False)
            if systemctl("is-active", unit, check=False) != "active":
                raise AssertionError(f"{unit} did not start:\n{journal(unit)}")
        yield addresses
    finally:
        _remove_everything()
    assert not [p for p in (CGROUPS / "system.slice").iterdir() if p.name.startswith("orch-")]


def orch(services: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_orch("--scheduler", services["scheduler"], "--tls-dir", str(ETC / "pki"), *args, stdin=stdin)


def running(services: dict[str, str]) -> dict[str, Any] | None:
    done = orch(services, "get", "instances", "-o", "json")
    insts = [i for i in json.loads(done.stdout or "[]") if i["app"] == "unitapp"]
    return insts[0] if len(insts) == 1 and insts[0]["state"] == "Running" else None


def test_services_run_the_cluster_and_an_agent_restart_moves_nothing(
    services: dict[str, str], busybox_rootfs: Path
) -> None:
    for unit in UNITS:
        assert systemctl("is-active", unit) == "active"
    assert show("orch-node", "StatusText").startswith("serving on 127.0.0.1:")  # our READY=1 came with it
    agent = int(show("orch-node", "MainPID"))
    assert cgroup_of(agent) == "/system.slice/orch-node.service"  # the unit holds the agent only

    assert orch(services, "apply", "-", stdin=APP % {"root": busybox_rootfs}).returncode == 0
    before = wait_for(lambda: running(services), 60, "unitapp Running")
    pid = before["pid"]
    # The container's cgroup is in the delegated scope beside the unit; its shim too.
    assert cgroup_of(pid) == f"/system.slice/{SCOPE}/containers/{before['name']}"
    assert show(SCOPE, "Delegate") == "yes" and systemctl("is-active", SCOPE) == "active"
    shim = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    assert cgroup_of(shim) == f"/system.slice/{SCOPE}/supervisors"
    assert (CGROUPS / "system.slice" / SCOPE / "cgroup.procs").read_text() == ""

    systemctl("restart", "orch-node")  # KillMode=process: the agent alone
    assert int(show("orch-node", "MainPID")) not in (0, agent)
    after = wait_for(lambda: running(services), 60, "unitapp Running after the restart")
    assert (after["name"], after["pid"], after["restarts"]) == (before["name"], pid, 0)  # adopted
    assert os.path.exists(f"/proc/{pid}")

    systemctl("stop", "orch-node")
    assert cgroup_of(pid) == f"/system.slice/{SCOPE}/containers/{before['name']}"  # still running
    assert subprocess.run(CLEANUP, capture_output=True, text=True, timeout=120).returncode == 0
    assert not os.path.exists(f"/proc/{pid}")
    wait_for(lambda: not (CGROUPS / "system.slice" / SCOPE).exists(), 30, "systemd to remove the empty scope")
    assert systemctl("is-active", SCOPE, check=False) != "active"


def test_setup_left_debian_services_off() -> None:
    """deploy/install-deps.sh (make setup) installs Debian's etcd, prometheus and docker-registry
    but leaves their services disabled and masked, and takes its policy-rc.d guard away."""
    if os.environ.get("ORCH_KEEP_SERVICES") == "1":
        pytest.skip("ORCH_KEEP_SERVICES=1: the services were kept on purpose")
    for unit in ("etcd", "prometheus", "docker-registry"):
        state = systemctl("is-enabled", unit, check=False)
        assert state in ("masked", "disabled"), f"{unit}: {state} (ORCH_KEEP_SERVICES=1 keeps it so)"
        assert systemctl("is-active", unit, check=False) != "active", unit
    guard = Path("/usr/sbin/policy-rc.d")
    assert not (guard.exists() and "install-deps.sh (orch)" in guard.read_text())  # another's stays
