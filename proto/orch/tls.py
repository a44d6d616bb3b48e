"""Mutual TLS for every gRPC hop: CLI → scheduler, agent ⇄ scheduler.

Each component has a certificate signed by the cluster's CA and presents it
both as a server and as a client; every server requires a client certificate
from the same CA. Identities are the certificates' common names:
"scheduler", "node:<name>", "admin" (see cli/pki.py, which issues them).
Without TLS files everything is plaintext, as before (tests, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = [
    "SCHEDULER",
    "TlsError",
    "TlsFiles",
    "add_port",
    "aio_channel",
    "channel",
    "node_identity",
    "peer_identity",
]

SCHEDULER = "scheduler"


def node_identity(name: str) -> str:
    return f"node:{name}"


class TlsError(Exception):
    """A TLS file is missing or unreadable; the message names it."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_options(cls, ca: str, cert: str, key: str) -> TlsFiles | None:
        """--tls-ca/--tls-cert/--tls-key: all three or none."""
        given = [bool(ca), bool(cert), bool(key)]
        if not any(given):
            return None
        if not all(given):
            raise TlsError("--tls-ca, --tls-cert and --tls-key go together")
        return cls(Path(ca), Path(cert), Path(key))

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> TlsFiles:
        """<dir>/ca.crt, <dir>/<name>.crt, <dir>/<name>.key, as cli/pki.py writes them."""
        return cls(directory / "ca.crt", directory / f"{name}.crt", directory / f"{name}.key")

    def _read(self) -> tuple[bytes, bytes, bytes]:
        out = []
        for what, path in (("CA certificate", self.ca), ("certificate", self.cert), ("private key", self.key)):
            try:
                out.append(path.read_bytes())
            except OSError as e:
                raise TlsError(f"TLS {what} {path}: {e.strerror or e}") from None
        return out[0], out[1], out[2]

    def server_credentials(self) -> grpc.ServerCredentials:
        ca, cert, key = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def add_port(server: Any, listen: str, tls: TlsFiles | None) -> int:
    """server.add_(in)secure_port; the bound port, 0 on failure (sync and aio servers alike)."""
    if tls is None:
        return int(server.add_insecure_port(listen))
    return int(server.add_secure_port(listen, tls.server_credentials()))


def aio_channel(target: str, tls: TlsFiles | None, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=options)


def channel(target: str, tls: TlsFiles | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.channel_credentials())


def peer_identity(context: Any) -> str | None:
    """The verified common name of the caller's certificate; None on a plaintext connection."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode() if names else None
