"""The checks of a TLS certificate, its key and its CA, with `cryptography` (orch/tls.py's load).

A module of its own so that importing orch.tls does not import cryptography: its Rust
extension and the x509 modules are ~8.5 MiB RSS that a long-running node agent would keep
for checks it makes once, at start. The agent runs these checks in a forked child
(`TlsFiles.load(apart=True)`); the CLI and the scheduler run them in-process.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orch.identity import IdentityError, Role, role_of, server_name
from orch.tls import TlsError, TlsFiles

__all__ = ["check"]


def check(
    files: TlsFiles,
    pems: tuple[bytes, bytes, bytes],
    roles: Collection[Role],
    identity: str,
    serve: bool,
    now: datetime.datetime,
) -> str:
    """The certificate's common name, once it is the CA's, valid at `now`, matches the key, has one
    of `roles` (or is exactly `identity`) and, to `serve`, carries its role's server name."""
    ca_pem, cert_pem, key_pem = pems
    ca, cert = _load_cert("CA certificate", files.ca, ca_pem), _load_cert("certificate", files.cert, cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise TlsError(f"TLS private key {files.key}: not an unencrypted PEM private key ({e})") from None
    if key.public_key() != cert.public_key():
        raise TlsError(f"TLS private key {files.key} is not the key of certificate {files.cert}")
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        raise TlsError(f"TLS certificate {files.cert} is not signed by the CA in {files.ca}") from None
    _check_validity(files, cert, now)
    common_name = _common_name(cert)
    _check_role(files, common_name, roles, identity)
    if serve:
        _check_server_name(files, cert, common_name)
    return common_name


def _load_cert(what: str, path: Path, pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise TlsError(f"TLS {what} {path}: not a PEM certificate ({e})") from None


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode()


def _check_validity(files: TlsFiles, cert: x509.Certificate, now: datetime.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise TlsError(
            f"TLS certificate {files.cert} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    if now > cert.not_valid_after_utc:
        raise TlsError(f"TLS certificate {files.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def _check_role(files: TlsFiles, common_name: str, roles: Collection[Role], identity: str) -> None:
    if identity and common_name != identity:
        raise TlsError(f'TLS certificate {files.cert} is "{common_name}", not "{identity}"')
    if roles and role_of(common_name) not in roles:
        wanted = " or ".join(r.value for r in roles)
        raise TlsError(f'TLS certificate {files.cert} is "{common_name}", not a certificate of role {wanted}')


def _check_server_name(files: TlsFiles, cert: x509.Certificate, common_name: str) -> None:
    try:
        wanted = server_name(common_name)
    except IdentityError as e:
        raise TlsError(f"TLS certificate {files.cert}: {e}") from None
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if wanted not in dns:
        raise TlsError(f"TLS certificate {files.cert} lacks the DNS name {wanted} that its clients verify")
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no restriction
    if ExtendedKeyUsageOID.SERVER_AUTH not in usage:
        raise TlsError(f"TLS certificate {files.cert} is not for servers (no serverAuth usage)")
