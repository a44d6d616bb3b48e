"""Unit: TLS options, certificate issuing, and how the CLI finds its certificate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from cli import client, pki
from orch.tls import TlsError, TlsFiles


def test_options_are_all_or_none() -> None:
    assert TlsFiles.from_options("", "", "") is None
    assert TlsFiles.from_options("ca", "c", "k") == TlsFiles(Path("ca"), Path("c"), Path("k"))
    with pytest.raises(TlsError, match="go together"):
        TlsFiles.from_options("ca", "", "k")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=r"TLS CA certificate .*ca\.crt: No such file"):
        TlsFiles.in_dir(tmp_path, "admin").channel_credentials()


def test_issued_certificates(tmp_path: Path) -> None:
    pki.ensure_ca(tmp_path)
    pki.issue(tmp_path, "node-0", "node:node-0", ["127.0.0.1", "localhost"])
    cert = x509.load_pem_x509_certificate((tmp_path / "node-0.crt").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node:node-0"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert (tmp_path / "node-0.key").stat().st_mode & 0o777 == 0o600
    before = (tmp_path / "node-0.crt").read_bytes()
    pki.issue(tmp_path, "node-0", "node:node-0", [])  # kept: the cluster's identity survives restarts
    assert (tmp_path / "node-0.crt").read_bytes() == before
    TlsFiles.in_dir(tmp_path, "node-0").server_credentials()  # grpc accepts the pair


def test_the_cli_uses_the_default_clusters_certificate_only_for_its_schedulers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCH_TLS_DIR", raising=False)
    monkeypatch.setattr(client, "DEFAULT_STATE_DIR", tmp_path)
    (tmp_path / "cluster.json").write_text(json.dumps({"schedulers": ["127.0.0.1:7070"], "tlsDir": "/pki"}))
    assert client.tls_files(None, ["127.0.0.1:7070"]) == TlsFiles.in_dir(Path("/pki"), "admin")
    assert client.tls_files(None, ["10.0.0.9:7070"]) is None  # another cluster: not our certificate
    assert client.tls_files("/mine", ["10.0.0.9:7070"]) == TlsFiles.in_dir(Path("/mine"), "admin")
    monkeypatch.setenv("ORCH_TLS_DIR", "/env")
    assert client.tls_files(None, ["10.0.0.9:7070"]) == TlsFiles.in_dir(Path("/env"), "admin")
