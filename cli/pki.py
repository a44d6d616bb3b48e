"""A small certificate authority for one cluster (`orch up`, `orch pki`).

<dir>/ca.crt, ca.key           the cluster's CA (EC P-256, 10 years)
<dir>/<name>.crt, <name>.key   one per component, signed by the CA: common name
                               "scheduler", "node:<node>" or "admin"; usable as
                               server and client (mutual TLS, orch/tls.py)

Keys are written 0600. Issuing again keeps an existing certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["ensure_ca", "issue"]

_CA_DAYS = 3650
_CERT_DAYS = 825  # what browsers and most CAs accept for a leaf


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orch"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def ensure_ca(directory: Path) -> None:
    """Create ca.crt/ca.key in directory unless they exist."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "ca.crt").exists() and (directory / "ca.key").exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("orch CA"))
        .issuer_name(_name("orch CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(key, hashes.SHA256())
    )
    _write(directory / "ca.key", _key_pem(key), private=True)
    _write(directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))


def issue(directory: Path, file_name: str, common_name: str, hosts: list[str]) -> None:
    """<file_name>.crt/.key signed by the CA in directory, valid for these hosts (IPs or DNS names)."""
    if (directory / f"{file_name}.crt").exists() and (directory / f"{file_name}.key").exists():
        return
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(directory / f"{file_name}.key", _key_pem(key), private=True)
    _write(directory / f"{file_name}.crt", cert.public_bytes(serialization.Encoding.PEM))
