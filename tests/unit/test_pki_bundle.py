"""Unit: certificates for three machines (docs/deploy.md), and the bundle each machine gets."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from cli import pki
from orch.identity import Role
from orch.tls import TlsFiles
from tests.fixtures.processes import run_orch


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    pki.init(d)
    return d


def sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in names}


def test_one_machine_holds_a_member_a_scheduler_and_a_node_without_clashing(ca: Path) -> None:
    # m1 runs etcd member m1, scheduler scheduler-m1 and node m1: four distinct files in two CAs.
    pki.issue_for(ca, "etcd", "m1", ["192.0.2.11", "m1"])
    pki.issue_for(ca, "scheduler", "scheduler-m1", ["192.0.2.11", "m1"])
    pki.issue_for(ca, "node", "m1", ["192.0.2.11", "m1"])
    assert {"192.0.2.11", "m1"} <= sans(ca / "etcd" / "m1.crt")  # peers check the member's address
    assert {"192.0.2.11", "scheduler.orch.invalid"} <= sans(ca / "scheduler-m1.crt")
    assert {"192.0.2.11", "m1.node.orch.invalid"} <= sans(ca / "m1.crt")
    TlsFiles.in_dir(ca, "scheduler-m1").load(roles=[Role.SCHEDULER], serve=True)
    TlsFiles.in_dir(ca, "m1").load(identity="node:m1", serve=True)
    TlsFiles.in_dir(ca / "etcd", "scheduler-m1").load()
    TlsFiles.in_dir(ca / "etcd", "m1").load()
    ip = x509.load_pem_x509_certificate((ca / "etcd" / "m1.crt").read_bytes())
    ips = ip.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("192.0.2.11") in ips.get_values_for_type(x509.IPAddress)


def test_a_bundle_holds_the_machines_files_and_no_ca_key(ca: Path, tmp_path: Path) -> None:
    pki.issue_for(ca, "etcd", "m1", ["192.0.2.11"])
    pki.issue_for(ca, "scheduler", "scheduler-m1", ["192.0.2.11"])
    pki.issue_for(ca, "node", "m1", ["192.0.2.11"])
    pki.issue_for(ca, "node", "m2", ["192.0.2.12"])
    out = tmp_path / "m1.pki"
    pki.bundle(ca, out, ["m1", "scheduler-m1"])
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "ca.crt", "etcd/ca.crt", "etcd/m1.crt", "etcd/m1.key", "etcd/scheduler-m1.crt", "etcd/scheduler-m1.key",
        "m1.crt", "m1.key", "scheduler-m1.crt", "scheduler-m1.key",
    ]  # fmt: skip
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE((out / "etcd").stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in out.rglob("*.key"))
    TlsFiles.in_dir(out, "m1").load(identity="node:m1", serve=True)  # usable where it lands


def test_bundle_refuses_unknown_names_and_ca_keys(ca: Path, tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match=r"no certificate m9\.crt .*issue it first"):
        pki.bundle(ca, tmp_path / "out", ["m9"])
    with pytest.raises(pki.PkiError, match="CA keys stay"):
        pki.bundle(ca, tmp_path / "out", ["ca"])
    r = run_orch("pki", "bundle", str(tmp_path / "none"), str(tmp_path / "out"), "m1")
    assert r.returncode == 1
    assert r.stderr.strip().startswith("orch pki: no CA in") and "Traceback" not in r.stderr
