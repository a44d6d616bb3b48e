"""Runs last: the suite left no cgroup, mount, link, netns, iptables rule or process of ours."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        "PYTEST_XDIST_WORKER" in os.environ,
        reason="checks the host after every other test: make test runs it on its own, after the workers",
    ),
]


def test_no_cgroups_left():
    # v1 (hybrid): every controller hierarchy and the unified one sit one level down;
    # pure v2: one tree, whose top level is /sys/fs/cgroup itself.
    root = Path("/sys/fs/cgroup")
    left = [str(p) for p in [*root.glob("*/orch*"), *root.glob("orch*")]]
    assert not left, left


def test_no_mounts_left():
    mounts = Path("/proc/self/mountinfo").read_text()
    assert not [line for line in mounts.splitlines() if "orch" in line or " overlay " in line]


def test_no_links_or_netns_left():
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    ours = [line.split(": ")[1] for line in links.splitlines() if line.split(": ")[1].startswith(("orch", "ov"))]
    assert not ours, ours
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.strip() == ""


def test_no_processes_left():
    me = os.getpid()
    ours = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == me:
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if (
            "node.runtime.shim" in cmd
            or "-m cli " in cmd
            or (cmd.startswith("etcd ") and "orch-etcd-" in cmd)
            or "/pytest-of-" in cmd  # prometheus, docker-registry, ... started on a test's tmp dir
        ):
            ours.append(f"{p.name}: {cmd[:120]}")
    assert not ours, ours


def test_no_iptables_rules_left():
    # hostPorts: the ORCH-HP-<bridge> chains and the jumps and masquerade rules around them;
    # service VIPs: ORCH-SVC-, ORCH-SVCMASQ- (nat) and ORCH-SVCREJ- (filter) and their jumps.
    # container networking: ORCH-MASQ-<bridge> (nat) and ORCH-FWD-<bridge> (filter) and their jumps.
    saved = "".join(
        subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=True).stdout
        for table in ("nat", "raw", "filter")
    )
    ours = [line for line in saved.splitlines() if "ORCH-" in line or "-o orch" in line or "-i orch" in line]
    assert not ours, ours


def test_no_routes_left():
    # Routes to other nodes' container subnets carry orch's mark (node/network/routes.py ORCH_PROTO).
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all", "proto", "152"], capture_output=True, text=True, check=True
    ).stdout
    assert not routes.strip(), routes
