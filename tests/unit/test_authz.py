"""Unit: who may call what on the scheduler (scheduler/authz.py), with a real gRPC server over TLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from cli import pki
from orch.identity import Role
from orch.tls import SCHEDULER, Credentials, TlsFiles, add_port, aio_channel
from orch.v1 import agent_pb2, agent_pb2_grpc, api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb
from scheduler.authz import POLICY, Authorizer, denial

WRITES = [
    "Apply",
    "DeleteApp",
    "Scale",
    "SetSchedulable",
    "DeleteNode",
    "Drain",
    "Exec",
    "CreateSecret",
    "DeleteSecret",
]
READS = [
    "GetApp", "ListApps", "ListNodes", "ListInstances", "ListEvents", "Logs", "Top", "Version", "Watch", "Explain",
    "ListSecrets",
]  # fmt: skip


def served_methods() -> list[str]:
    """Every method of every service the scheduler serves (scheduler/server.py)."""
    services = [
        api_pb2.DESCRIPTOR.services_by_name["Orch"],
        agent_pb2.DESCRIPTOR.services_by_name["AgentSession"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
    ]
    return [f"/{s.full_name}/{m.name}" for s in services for m in s.methods]


def test_every_method_is_classified() -> None:
    missing = [m for m in served_methods() if m not in POLICY]
    assert not missing, f"add these to scheduler/authz.py POLICY: {missing}"
    assert set(READS) | set(WRITES) >= {m.name for m in api_pb2.DESCRIPTOR.services_by_name["Orch"].methods}


@pytest.mark.parametrize("method", READS)
def test_viewer_reads(method: str) -> None:
    assert denial(f"/orch.v1.Orch/{method}", "viewer:bob", insecure=False) is None
    assert denial(f"/orch.v1.Orch/{method}", "admin:ann", insecure=False) is None
    assert denial(f"/orch.v1.Orch/{method}", "node:n1", insecure=False) is not None


@pytest.mark.parametrize("method", WRITES)
def test_only_admins_write_or_exec(method: str) -> None:
    path = f"/orch.v1.Orch/{method}"
    assert denial(path, "admin", insecure=False) is None
    refused = denial(path, "viewer:bob", insecure=False)
    assert refused == f'permission denied: "viewer:bob" (role viewer) may not call {path[1:]}'
    assert denial(path, "node:n1", insecure=False) is not None
    assert denial(path, "scheduler", insecure=False) is not None  # a scheduler is not an API user
    stranger = denial(path, "mallory", insecure=False)
    assert stranger == f'permission denied: "mallory" (no known role) may not call {path[1:]}'


def test_nodes_only_open_sessions() -> None:
    session = "/orch.v1.AgentSession/Session"
    assert denial(session, "node:n1", insecure=False) is None
    assert all(denial(session, who, insecure=False) for who in ("admin", "viewer:bob", "scheduler"))


def test_unknown_methods_and_missing_identities() -> None:
    assert "not in the policy" in str(denial("/orch.v1.Orch/Format", "admin", insecure=False))
    assert denial("/orch.v1.Orch/Apply", None, insecure=False) is not None
    assert denial("/orch.v1.Orch/Apply", None, insecure=True) is None  # plaintext: as before, everything


# -- the interceptor on a real server -----------------------------------------------------------


class Servicer(api_pb2_grpc.OrchServicer):
    async def ListApps(self, request: Any, context: Any) -> api_pb2.ListAppsResponse:
        return api_pb2.ListAppsResponse()

    async def Apply(self, request: Any, context: Any) -> api_pb2.ApplyResponse:
        return api_pb2.ApplyResponse()

    async def Logs(self, request: Any, context: Any) -> AsyncIterator[pb.LogEntry]:
        yield pb.LogEntry(text="hello")


class Sessions(agent_pb2_grpc.AgentSessionServicer):
    async def Session(self, request_iterator: Any, context: Any) -> AsyncIterator[agent_pb2.SchedulerMessage]:
        async for _ in request_iterator:
            yield agent_pb2.SchedulerMessage()
            return


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Credentials]:
    d = tmp_path_factory.mktemp("pki")
    pki.init(d)
    for role, name, hosts in [("scheduler", "scheduler", ["127.0.0.1"]), ("admin", "ann", []),
                              ("viewer", "bob", []), ("node", "n1", [])]:  # fmt: skip
        pki.issue_for(d, role, name, hosts)
    want = {"scheduler": [Role.SCHEDULER], "ann": [Role.ADMIN], "bob": [Role.VIEWER], "n1": [Role.NODE]}
    return {name: TlsFiles.in_dir(d, name).load(roles=roles) for name, roles in want.items()}


def call_as(server_creds: Credentials, client: Credentials, calls: Any) -> list[Any]:
    async def run() -> list[Any]:
        server = grpc.aio.server(interceptors=[Authorizer(insecure=False)])
        api_pb2_grpc.add_OrchServicer_to_server(Servicer(), server)  # type: ignore[abstract]
        agent_pb2_grpc.add_AgentSessionServicer_to_server(Sessions(), server)
        port = add_port(server, "127.0.0.1:0", server_creds)
        await server.start()
        try:
            async with aio_channel(f"127.0.0.1:{port}", client, peer=SCHEDULER) as ch:
                out = []
                for call in calls:
                    try:
                        out.append(await call(ch))
                    except grpc.aio.AioRpcError as e:
                        out.append((e.code(), e.details()))
                return out
        finally:
            await server.stop(None)

    return asyncio.run(run())


async def list_apps(ch: Any) -> str:
    await api_pb2_grpc.OrchStub(ch).ListApps(api_pb2.ListAppsRequest(), timeout=5)
    return "ok"


async def apply(ch: Any) -> str:
    await api_pb2_grpc.OrchStub(ch).Apply(api_pb2.ApplyRequest(), timeout=5)
    return "ok"


async def logs(ch: Any) -> str:
    return "".join([e.text async for e in api_pb2_grpc.OrchStub(ch).Logs(pb.LogsRequest(), timeout=5)])


async def session(ch: Any) -> str:
    hello = agent_pb2.AgentMessage(register=agent_pb2.Register(node="n1"))
    stream = agent_pb2_grpc.AgentSessionStub(ch).Session(iter([hello]), timeout=5)
    return "ok" if [m async for m in stream] else "empty"


async def exec_(ch: Any) -> str:  # an RPC this server does not implement, but the policy lists
    await ch.unary_unary("/orch.v1.Orch/Exec")(b"", timeout=5)
    return "ok"


def test_interceptor_allows_and_denies_every_call_shape(creds: dict[str, Credentials]) -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    admin = call_as(creds["scheduler"], creds["ann"], [list_apps, apply, logs, exec_])
    assert admin[:3] == ["ok", "ok", "hello"] and admin[3][0] == grpc.StatusCode.UNIMPLEMENTED
    viewer = call_as(creds["scheduler"], creds["bob"], [list_apps, logs, apply, exec_, session])
    assert viewer[:2] == ["ok", "hello"]
    assert [r[0] for r in viewer[2:]] == [denied] * 3
    assert viewer[2][1] == 'permission denied: "viewer:bob" (role viewer) may not call orch.v1.Orch/Apply'
    node = call_as(creds["scheduler"], creds["n1"], [session, list_apps, apply])
    assert node[0] == "ok" and [r[0] for r in node[1:]] == [denied] * 2
