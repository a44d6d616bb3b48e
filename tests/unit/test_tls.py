"""Unit: TLS options, certificate issuing and checking, and how the CLI finds its certificate."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cli import client, pki
from orch.identity import Role, identity_for, role_of, server_name
from orch.tls import SCHEDULER, Credentials, TlsError, TlsFiles, aio_channel, node_identity
from orch.v1 import agent_pb2, agent_pb2_grpc


def cert_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    pki.init(d)
    return d


def test_options_are_all_or_none() -> None:
    assert TlsFiles.from_options("", "", "") is None
    assert TlsFiles.from_options("ca", "c", "k") == TlsFiles(Path("ca"), Path("c"), Path("k"))
    with pytest.raises(TlsError, match="go together"):
        TlsFiles.from_options("ca", "", "k")
    with pytest.raises(TlsError, match="--etcd-ca, --etcd-cert and --etcd-key go together"):
        TlsFiles.from_options("", "c", "", "--etcd")


def test_identities() -> None:
    assert identity_for(Role.NODE, "n-1") == "node:n-1" and identity_for(Role.SCHEDULER, "s1") == SCHEDULER
    assert [role_of(i) for i in ("admin", "admin:ann", "viewer:bob", "node:n1", "scheduler")] == [
        Role.ADMIN, Role.ADMIN, Role.VIEWER, Role.NODE, Role.SCHEDULER,
    ]  # fmt: skip
    assert [role_of(i) for i in ("viewer", "node:", "root", "scheduler:x", "")] == [None] * 5
    assert server_name(SCHEDULER) == "scheduler.orch.invalid"
    assert server_name(node_identity("n1")) == "n1.node.orch.invalid"


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=r"TLS CA certificate .*ca\.crt: No such file"):
        TlsFiles.in_dir(tmp_path, "admin").load()


def test_issued_certificates_say_their_role(ca: Path) -> None:
    pki.issue_for(ca, "node", "node-0", ["127.0.0.1"])
    pki.issue_for(ca, "viewer", "bob", [])
    node = cert_of(ca / "node-0.crt")
    assert node.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node:node-0"
    san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["node-0.node.orch.invalid"]  # not the scheduler's names
    node.verify_directly_issued_by(cert_of(ca / "ca.crt"))
    viewer = cert_of(ca / "bob.crt")
    usage = viewer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # a person's certificate cannot serve
    assert TlsFiles.in_dir(ca, "node-0").load(identity="node:node-0", serve=True).identity == "node:node-0"


def test_keys_and_directories_are_private(ca: Path) -> None:
    pki.issue_for(ca, "scheduler", "scheduler", ["127.0.0.1"])
    for d in (ca, ca / "etcd"):
        assert d.stat().st_mode & 0o777 == 0o700
        for key in d.glob("*.key"):
            assert key.stat().st_mode & 0o777 == 0o600, key
    os.chmod(ca, 0o755)
    pki.issue_for(ca, "admin", "admin", [])
    assert ca.stat().st_mode & 0o777 == 0o700  # a loosened directory is tightened again


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_a_directory_of_another_user_is_refused(ca: Path) -> None:
    os.chown(ca, 65534, 65534)
    with pytest.raises(pki.PkiError, match="belongs to uid 65534"):
        pki.issue_for(ca, "admin", "admin", [])


def test_a_new_ca_reissues_every_leaf(ca: Path) -> None:
    pki.issue_for(ca, "scheduler", "scheduler", ["127.0.0.1"])
    before = (ca / "scheduler.crt").read_bytes(), (ca / "etcd" / "scheduler.crt").read_bytes()
    assert pki.issue_for(ca, "scheduler", "scheduler", ["127.0.0.1"]) == []  # current: kept
    for d in (ca, ca / "etcd"):
        (d / "ca.crt").unlink()
    pki.init(ca)
    assert len(pki.issue_for(ca, "scheduler", "scheduler", ["127.0.0.1"])) == 2
    assert ((ca / "scheduler.crt").read_bytes(), (ca / "etcd" / "scheduler.crt").read_bytes()) != before
    TlsFiles.in_dir(ca, "scheduler").load(roles=[Role.SCHEDULER], serve=True)
    TlsFiles.in_dir(ca / "etcd", "scheduler").load()


def test_a_changed_host_list_or_a_foreign_key_reissues(ca: Path) -> None:
    pki.issue_for(ca, "node", "n1", ["127.0.0.1"])
    assert pki.issue_for(ca, "node", "n1", ["127.0.0.2"]) == [ca / "n1.crt"]
    pki.issue_for(ca, "node", "n2", ["127.0.0.1"])
    (ca / "n1.key").write_bytes((ca / "n2.key").read_bytes())  # e.g. a crash between key and certificate
    assert pki.issue_for(ca, "node", "n1", ["127.0.0.2"]) == [ca / "n1.crt"]
    TlsFiles.in_dir(ca, "n1").load()


def test_another_identity_in_the_same_file_is_refused(ca: Path) -> None:
    pki.issue_for(ca, "node", "node-0", [])
    with pytest.raises(pki.PkiError, match=r'node-0\.crt is "node:node-0", not "viewer:node-0"'):
        pki.issue_for(ca, "viewer", "node-0", [])
    with pytest.raises(pki.PkiError, match="not a valid name"):
        pki.issue_for(ca, "node", "Node_0", [])


def test_etcd_has_its_own_ca(ca: Path) -> None:
    pki.issue_for(ca, "etcd", "m1", ["127.0.0.1"])
    pki.issue_for(ca, "node", "n1", [])
    etcd_ca = ca / "etcd" / "ca.crt"
    TlsFiles(etcd_ca, ca / "etcd" / "m1.crt", ca / "etcd" / "m1.key").load()
    with pytest.raises(TlsError, match="not signed by the CA"):  # a node's certificate cannot open etcd
        TlsFiles(etcd_ca, ca / "n1.crt", ca / "n1.key").load()


def test_load_checks_key_role_name_and_time(ca: Path, tmp_path: Path) -> None:
    for role, name in (("scheduler", "scheduler"), ("node", "n1"), ("admin", "ann")):
        pki.issue_for(ca, role, name, ["127.0.0.1"])
    with pytest.raises(TlsError, match=r"n1\.key is not the key of certificate .*scheduler\.crt"):
        TlsFiles(ca / "ca.crt", ca / "scheduler.crt", ca / "n1.key").load()
    with pytest.raises(TlsError, match='"node:n1", not a certificate of role scheduler'):
        TlsFiles.in_dir(ca, "n1").load(roles=[Role.SCHEDULER])
    with pytest.raises(TlsError, match='"node:n1", not "node:n2"'):
        TlsFiles.in_dir(ca, "n1").load(identity="node:n2")
    with pytest.raises(TlsError, match="not a server identity"):
        TlsFiles.in_dir(ca, "ann").load(serve=True)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=900)
    with pytest.raises(TlsError, match=r"scheduler\.crt expired on"):
        TlsFiles.in_dir(ca, "scheduler").load(now=later)
    for mode in (0o644, 0o640, 0o604):  # a group that can read the key is as bad as everyone
        os.chmod(ca / "ann.key", mode)
        with pytest.raises(TlsError, match="readable by its group or other users"):
            TlsFiles.in_dir(ca, "ann").load()
    other = tmp_path / "other"
    pki.init(other)
    with pytest.raises(TlsError, match="not signed by the CA"):
        TlsFiles(other / "ca.crt", ca / "scheduler.crt", ca / "scheduler.key").load()


def test_checks_apart_answer_as_in_process(ca: Path) -> None:
    """load(apart=True), as `orch node` checks (in a forked child): the same identity, the same errors."""
    pki.issue_for(ca, "node", "n1", ["127.0.0.1"])
    pki.issue_for(ca, "admin", "ann", [])
    assert TlsFiles.in_dir(ca, "n1").load(identity="node:n1", serve=True, apart=True).identity == "node:n1"
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=900)
    cases: list[tuple[TlsFiles, dict[str, Any], str]] = [
        (TlsFiles(ca / "ca.crt", ca / "n1.crt", ca / "ann.key"), {}, r"ann\.key is not the key of certificate"),
        (TlsFiles.in_dir(ca, "n1"), {"identity": "node:n2"}, '"node:n1", not "node:n2"'),
        (TlsFiles.in_dir(ca, "ann"), {"serve": True}, "not a server identity"),
        (TlsFiles.in_dir(ca, "n1"), {"now": later}, r"n1\.crt expired on"),
    ]
    for files, how, message in cases:
        with pytest.raises(TlsError, match=message):
            files.load(**how, apart=True)
    (ca / "ann.crt").write_text("not a certificate\n")
    with pytest.raises(TlsError, match=r"ann\.crt: not a PEM certificate"):
        TlsFiles.in_dir(ca, "ann").load(apart=True)


class _Sessions(agent_pb2_grpc.AgentSessionServicer):
    async def Session(self, request_iterator: Any, context: Any) -> Any:
        yield agent_pb2.SchedulerMessage()


def _handshake(server: Credentials, client_creds: Credentials, peer: str) -> str:
    """Connect to a server using `server` credentials, asking for `peer`; "ok" or the error code."""

    async def run() -> str:
        srv = grpc.aio.server()
        agent_pb2_grpc.add_AgentSessionServicer_to_server(_Sessions(), srv)
        port = srv.add_secure_port("127.0.0.1:0", server.server_credentials())
        await srv.start()
        try:
            async with aio_channel(f"127.0.0.1:{port}", client_creds, peer=peer) as ch:
                stream = agent_pb2_grpc.AgentSessionStub(ch).Session(iter([agent_pb2.AgentMessage()]), timeout=5)
                [_ async for _ in stream]
                return "ok"
        except grpc.aio.AioRpcError as e:
            return e.code().name
        finally:
            await srv.stop(None)

    return asyncio.run(run())


def test_clients_verify_the_servers_role(ca: Path) -> None:
    for role, name in (("scheduler", "scheduler"), ("node", "n1"), ("node", "n2")):
        pki.issue_for(ca, role, name, ["127.0.0.1", "localhost"])  # all valid for this host
    scheduler, n1, n2 = (TlsFiles.in_dir(ca, n).load() for n in ("scheduler", "n1", "n2"))
    assert _handshake(scheduler, n1, SCHEDULER) == "ok"
    assert _handshake(n2, n1, SCHEDULER) == "UNAVAILABLE"  # a node posing as the scheduler
    assert _handshake(n1, scheduler, node_identity("n1")) == "ok"
    assert _handshake(n2, scheduler, node_identity("n1")) == "UNAVAILABLE"  # node n2 answering for n1


def test_the_cli_uses_the_default_clusters_certificate_only_for_its_schedulers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ORCH_TLS_DIR", raising=False)
    monkeypatch.delenv("ORCH_TLS_USER", raising=False)
    monkeypatch.setattr(client, "DEFAULT_STATE_DIR", tmp_path)
    (tmp_path / "cluster.json").write_text(json.dumps({"schedulers": ["127.0.0.1:7070"], "tlsDir": "/pki"}))
    assert client.tls_files(None, ["127.0.0.1:7070"]) == TlsFiles.in_dir(Path("/pki"), "admin")
    assert client.tls_files(None, ["10.0.0.9:7070"]) is None  # another cluster: not our certificate
    assert client.tls_files("/mine", ["10.0.0.9:7070"]) == TlsFiles.in_dir(Path("/mine"), "admin")
    assert client.tls_files("/mine", [], "bob") == TlsFiles.in_dir(Path("/mine"), "bob")
    monkeypatch.setenv("ORCH_TLS_DIR", "/env")
    monkeypatch.setenv("ORCH_TLS_USER", "carol")
    assert client.tls_files(None, ["10.0.0.9:7070"]) == TlsFiles.in_dir(Path("/env"), "carol")


def test_the_cli_checks_its_certificate_before_calling(ca: Path) -> None:
    pki.issue_for(ca, "node", "n1", [])
    with pytest.raises(client.CliError, match='"node:n1", not a certificate of role admin or viewer'):
        client.load_credentials(TlsFiles.in_dir(ca, "n1"))
    with pytest.raises(client.CliError, match=r"TLS certificate .*nobody\.crt: No such file"):
        client.load_credentials(TlsFiles.in_dir(ca, "nobody"))
