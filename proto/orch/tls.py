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
The checks use cryptography and live in orch/certcheck.py, imported only where
they run: `orch node` runs them in a forked child (`load(apart=True)`), so the
long-running agent never loads it.
Without TLS everything is plaintext (`--insecure`: tests, benchmarks).
"""

from __future__ import annotations

import datetime
import json
import os
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from orch.identity import SCHEDULER, Role, node_identity, server_name

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
        apart: bool = False,
    ) -> Credentials:
        """Read and check the three files: the certificate must be the CA's, valid now, match the key,
        have one of `roles` (or be exactly `identity`) and, to `serve`, carry its role's server name.
        `apart`: check in a forked child, so that this process never imports cryptography (the
        node agent: ~8.5 MiB RSS it would keep for checks made once); the same checks, the same errors."""
        pems = (_read("CA certificate", self.ca), _read("certificate", self.cert), _read("private key", self.key))
        at = now or datetime.datetime.now(datetime.UTC)

        def check() -> str:
            from orch import certcheck  # cryptography: imported only where the checks run

            return certcheck.check(self, pems, roles, identity, serve, at)

        return Credentials(*pems, identity=_in_child(check, self.cert) if apart else check())


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


def _in_child(check: Callable[[], str], cert: Path) -> str:
    """check() in a forked child (the agent is still single-threaded at start): its result or its
    TlsError, passed back over a pipe. The child ends with os._exit: nothing of the parent's runs."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read_end)
            try:
                reply = {"identity": check()}
            except TlsError as e:
                reply = {"error": str(e)}
            except Exception as e:  # reported by the parent, naming the file it concerns
                reply = {"error": f"TLS certificate {cert}: checking it failed ({e!r})"}
            os.write(write_end, json.dumps(reply).encode())  # well under a pipe's buffer (64 KiB)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        data = reader.read()
    _, status = os.waitpid(pid, 0)
    try:
        reply = json.loads(data)
    except ValueError:
        raise TlsError(f"TLS certificate {cert}: its checks ended without an answer (wait status {status})") from None
    if "error" in reply:
        raise TlsError(reply["error"])
    return str(reply["identity"])


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
