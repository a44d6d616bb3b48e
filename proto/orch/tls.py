"""Mutual TLS for every gRPC hop: CLI → scheduler, agent ⇄ scheduler.

Each component has a certificate signed by the cluster's CA and presents it
both as a server and as a client; every server requires a client certificate
from the same CA. Identities and roles are the certificates' common names
(orch/identity.py). A client names the identity it expects of the server
(`peer=`) and asks for that role's DNS name instead of the dialled address,
so only a scheduler's certificate passes for a scheduler, and only node X's
for node X.

Credentials are read and checked once, at start (`TlsFiles.load`): a missing
or unreadable file, a key that is not the certificate's, a certificate not
signed by the CA, expired or of the wrong role fails then, naming the file.
Without TLS everything is plaintext (`--insecure`: tests, benchmarks).
"""

from __future__ import annotations

import datetime
import stat
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from orch.identity import SCHEDULER, IdentityError, Role, node_identity, role_of, server_name

__all__ = [
    "SCHEDULER",
    "Credentials",
    "TlsError",
    "TlsFiles",
    "add_port",
    "aio_channel",
    "channel",
    "node_identity",
    "peer_identity",
]


class TlsError(Exception):
    """A TLS file is missing, unreadable or not what it must be; the message names it."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Checked PEM bytes, ready for gRPC; identity is the certificate's common name."""

    ca: bytes
    cert: bytes
    key: bytes
    identity: str

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca, private_key=self.key, certificate_chain=self.cert)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_options(cls, ca: str, cert: str, key: str, prefix: str = "--tls") -> TlsFiles | None:
        """--tls-ca/--tls-cert/--tls-key (or another prefix's): all three or none."""
        given = [bool(ca), bool(cert), bool(key)]
        if not any(given):
            return None
        if not all(given):
            raise TlsError(f"{prefix}-ca, {prefix}-cert and {prefix}-key go together")
        return cls(Path(ca), Path(cert), Path(key))

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> TlsFiles:
        """<dir>/ca.crt, <dir>/<name>.crt, <dir>/<name>.key, as cli/pki.py writes them."""
        return cls(directory / "ca.crt", directory / f"{name}.crt", directory / f"{name}.key")

    def load(
        self,
        roles: Collection[Role] = (),
        identity: str = "",
        serve: bool = False,
        now: datetime.datetime | None = None,
    ) -> Credentials:
        """Read and check the three files: the certificate must be the CA's, valid now, match the key,
        have one of `roles` (or be exactly `identity`) and, to `serve`, carry its role's server name."""
        ca_pem, cert_pem, key_pem = (_read(what, path) for what, path in self._named())
        ca, cert = _load_cert("CA certificate", self.ca, ca_pem), _load_cert("certificate", self.cert, cert_pem)
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as e:
            raise TlsError(f"TLS private key {self.key}: not an unencrypted PEM private key ({e})") from None
        if key.public_key() != cert.public_key():
            raise TlsError(f"TLS private key {self.key} is not the key of certificate {self.cert}")
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            raise TlsError(f"TLS certificate {self.cert} is not signed by the CA in {self.ca}") from None
        _check_validity(self.cert, cert, now or datetime.datetime.now(datetime.UTC))
        common_name = _common_name(cert)
        _check_role(self.cert, common_name, roles, identity)
        if serve:
            _check_server_name(self.cert, cert, common_name)
        return Credentials(ca_pem, cert_pem, key_pem, common_name)

    def _named(self) -> tuple[tuple[str, Path], ...]:
        return (("CA certificate", self.ca), ("certificate", self.cert), ("private key", self.key))


def _read(what: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as e:
        raise TlsError(f"TLS {what} {path}: {e.strerror or e}") from None
    if what == "private key" and stat.S_IMODE(mode) & 0o077:
        # As ssh does: a key other users can read is no secret; refuse it before it is used.
        mode_text = f"{stat.S_IMODE(mode):o}"
        raise TlsError(f"TLS private key {path} is readable by its group or other users (mode {mode_text}); chmod 600")
    return data


def _load_cert(what: str, path: Path, pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise TlsError(f"TLS {what} {path}: not a PEM certificate ({e})") from None


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode()


def _check_validity(path: Path, cert: x509.Certificate, now: datetime.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise TlsError(f"TLS certificate {path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise TlsError(f"TLS certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def _check_role(path: Path, common_name: str, roles: Collection[Role], identity: str) -> None:
    if identity and common_name != identity:
        raise TlsError(f'TLS certificate {path} is "{common_name}", not "{identity}"')
    if roles and role_of(common_name) not in roles:
        wanted = " or ".join(r.value for r in roles)
        raise TlsError(f'TLS certificate {path} is "{common_name}", not a certificate of role {wanted}')


def _check_server_name(path: Path, cert: x509.Certificate, common_name: str) -> None:
    try:
        wanted = server_name(common_name)
    except IdentityError as e:
        raise TlsError(f"TLS certificate {path}: {e}") from None
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if wanted not in dns:
        raise TlsError(f"TLS certificate {path} lacks the DNS name {wanted} that its clients verify")
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return  # no restriction
    if ExtendedKeyUsageOID.SERVER_AUTH not in usage:
        raise TlsError(f"TLS certificate {path} is not for servers (no serverAuth usage)")


def add_port(server: Any, listen: str, tls: Credentials | None) -> int:
    """server.add_(in)secure_port; the bound port, 0 on failure (sync and aio servers alike)."""
    if tls is None:
        return int(server.add_insecure_port(listen))
    return int(server.add_secure_port(listen, tls.server_credentials()))


def _verify_peer(peer: str, options: list[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    # The server must prove the role's name, not the dialled address: a node certificate valid for
    # this host is no scheduler.
    return [*(options or []), ("grpc.ssl_target_name_override", server_name(peer))]


def aio_channel(
    target: str, tls: Credentials | None, options: list[tuple[str, Any]] | None = None, *, peer: str
) -> grpc.aio.Channel:
    """A channel to the server whose identity is `peer` (SCHEDULER, node_identity(name))."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=_verify_peer(peer, options))


# A listing of tens of thousands of instances is tens of MiB, past gRPC's 4 MiB default.
CLIENT_OPTIONS = [("grpc.max_receive_message_length", 256 << 20)]


def channel(target: str, tls: Credentials | None, *, peer: str) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target, options=CLIENT_OPTIONS)
    return grpc.secure_channel(target, tls.channel_credentials(), options=_verify_peer(peer, CLIENT_OPTIONS))


def peer_identity(context: Any) -> str | None:
    """The verified common name of the caller's certificate; None on a plaintext connection."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode() if names else None
