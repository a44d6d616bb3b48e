"""Attacks on the control plane of a real `orch up` (issue 9, items 11-14).

From a local user (etcd), from a node's certificate (the Orch API, posing as
the scheduler), from a viewer's certificate (writes), and from a plaintext
client. Each attack has a control: the same step done by whom it is meant for
succeeds, so a refusal is the defence and not a typo.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli import pki
from node.session import Session
from orch.tls import SCHEDULER, Credentials, TlsFiles, channel
from orch.v1 import agent_pb2 as apb
from orch.v1 import agent_pb2_grpc, api_pb2, api_pb2_grpc
from orch.v1 import types_pb2 as pb
from scheduler.store import Store
from tests.e2e.cluster import orch
from tests.fixtures.etcd import free_port
from tests.fixtures.processes import run_orch

pytestmark = pytest.mark.root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
EVIL_KEY = "/orch/apps/ctlplane-evil"
EVIL_APP = """
apiVersion: orch/v1
kind: App
metadata: {name: ctlplane-evil}
spec:
  replicas: 1
  image: rootfs:/
  command: [sleep, "1000"]
  capabilities: {add: [ALL]}
"""


def etcdctl(info: dict[str, Any], *args: str, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*(user or []), "etcdctl", "--endpoints", info["etcd"][0], "--dial-timeout", "2s",
            "--command-timeout", "4s", *args]  # fmt: skip
    env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no ETCDCTL_* of the caller's
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, env=env)


def etcd_client(info: dict[str, Any], name: str = "scheduler") -> list[str]:
    d = Path(info["tlsDir"]) / pki.ETCD_DIR
    return ["--cacert", str(d / "ca.crt"), "--cert", str(d / f"{name}.crt"), "--key", str(d / f"{name}.key")]


def nothing_written(info: dict[str, Any]) -> None:
    """The control: the scheduler's own etcd certificate reads etcd, and the attack's key is not there."""
    r = etcdctl(info, *etcd_client(info), "get", "--prefix", "/orch/apps/ctlplane-")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""


@pytest.fixture(scope="module")
def tls_dir(cluster: dict[str, Any]) -> Path:
    return Path(cluster["tlsDir"])


@pytest.fixture(autouse=True)
def undo(cluster: dict[str, Any]) -> Iterator[None]:
    """Should a defence fail, what got through must not stay for the other modules."""
    yield
    apps = json.loads(orch(cluster, "get", "apps", "-o", "json").stdout)
    if "ctlplane-evil" in [a["name"] for a in apps]:
        orch(cluster, "delete", "app", "ctlplane-evil")
    for node in json.loads(orch(cluster, "get", "nodes", "-o", "json").stdout):
        if not node["schedulable"]:
            orch(cluster, "uncordon", node["name"])


def test_orch_up_says_how_to_use_it(cluster: dict[str, Any]) -> None:
    log = (Path(cluster["stateDir"]).parent / "up.log").read_text()
    assert f"export ORCH_SCHEDULER={cluster['schedulers'][0]} ORCH_TLS_DIR={cluster['tlsDir']}" in log
    assert cluster["etcd"][0].startswith("https://")


def test_the_keys_are_root_only(tls_dir: Path) -> None:
    for d in (tls_dir, tls_dir / pki.ETCD_DIR):
        st = d.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700), d
        for key in d.glob("*.key"):
            st = key.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), key


def test_a_local_user_cannot_read_or_write_etcd(cluster: dict[str, Any], tls_dir: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    # Without a certificate, over TLS that trusts any server (etcdctl 3.4 speaks plaintext unless told).
    for args in (["put", EVIL_KEY, EVIL_APP], ["get", "--prefix", "/orch/"]):
        r = etcdctl(cluster, "--insecure-transport=false", "--insecure-skip-tls-verify", *args, user=NOBODY)
        assert r.returncode != 0 and "/orch/" not in r.stdout, (args, r.stdout, r.stderr)
    # Nor with the scheduler's: the files cannot be read.
    r = etcdctl(cluster, *etcd_client(cluster), "put", EVIL_KEY, EVIL_APP, user=NOBODY)
    assert r.returncode != 0 and "permission denied" in r.stderr, r.stderr
    key = tls_dir / pki.ETCD_DIR / "scheduler.key"
    cat = subprocess.run([*NOBODY, "cat", str(key)], capture_output=True, text=True, check=False)
    assert cat.returncode != 0 and "Permission denied" in cat.stderr
    # Plaintext to the client port is no way round it.
    r = etcdctl({"etcd": [cluster["etcd"][0].replace("https://", "http://")]}, "put", EVIL_KEY, "x", user=NOBODY)
    assert r.returncode != 0
    nothing_written(cluster)


def test_root_needs_an_etcd_client_certificate(cluster: dict[str, Any], tls_dir: Path, tmp_path: Path) -> None:
    ca = ["--cacert", str(tls_dir / pki.ETCD_DIR / "ca.crt")]
    refused = etcdctl(cluster, *ca, "put", EVIL_KEY, EVIL_APP)  # the server is trusted; we show no certificate
    assert refused.returncode != 0, refused.stdout
    # A certificate of another CA, and one of the cluster's own CA (a node's): etcd trusts only its own.
    other = tmp_path / "other"
    pki.init(other)
    pki.issue_for(other, "scheduler", "scheduler", ["127.0.0.1"])
    node = tls_dir / "node-0"
    for cert, key in ((other / "etcd" / "scheduler.crt", other / "etcd" / "scheduler.key"),
                      (node.with_suffix(".crt"), node.with_suffix(".key"))):  # fmt: skip
        r = etcdctl(cluster, *ca, "--cert", str(cert), "--key", str(key), "put", EVIL_KEY, EVIL_APP)
        assert r.returncode != 0, (cert, r.stdout)
    nothing_written(cluster)


def _raw(data: bytes) -> bytes:
    return data


def _call_all(ch: grpc.Channel) -> dict[str, grpc.StatusCode | str]:
    stub = api_pb2_grpc.OrchStub(ch)
    spec = pb.AppSpec(name="ctlplane-evil", replicas=0, image="rootfs:/", command=["sleep", "1000"])
    calls: dict[str, Any] = {
        "Apply": lambda: stub.Apply(api_pb2.ApplyRequest(apps=[spec]), timeout=10),
        "DeleteApp": lambda: stub.DeleteApp(api_pb2.DeleteAppRequest(name="ctlplane-view"), timeout=10),
        "Drain": lambda: list(stub.Drain(api_pb2.DrainRequest(name="node-1", timeout_ms=1000), timeout=10)),
        "SetSchedulable": lambda: stub.SetSchedulable(api_pb2.SetSchedulableRequest(name="node-1"), timeout=10),
        "ListApps": lambda: stub.ListApps(api_pb2.ListAppsRequest(), timeout=10),
        "ListNodes": lambda: stub.ListNodes(api_pb2.ListNodesRequest(), timeout=10),
        # Another change adds Exec; refused by the policy whether this server implements it or not.
        "Exec": lambda: ch.unary_unary("/orch.v1.Orch/Exec", _raw, _raw)(b"", timeout=10),
    }
    out: dict[str, grpc.StatusCode | str] = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = "ok"
        except grpc.RpcError as e:
            out[name] = e.code()
            if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                assert f"orch.v1.Orch/{name}" in str(e.details()), e.details()
    return out


def test_a_node_certificate_cannot_use_the_api(cluster: dict[str, Any], tls_dir: Path) -> None:
    node = TlsFiles.in_dir(tls_dir, "node-0").load()
    with channel(cluster["schedulers"][0], node, peer=SCHEDULER) as ch:
        results = _call_all(ch)
    assert set(results.values()) == {grpc.StatusCode.PERMISSION_DENIED}, results
    apps = json.loads(orch(cluster, "get", "apps", "-o", "json").stdout)
    assert "ctlplane-evil" not in [a["name"] for a in apps]


@pytest.fixture
def viewer(cluster: dict[str, Any], tls_dir: Path, busybox_rootfs: Path) -> Iterator[list[str]]:
    """A viewer's CLI arguments, and an app (no replicas) for it to look at."""
    issued = run_orch("pki", "issue", str(tls_dir), "viewer", "ctlplane-viewer")
    assert issued.returncode == 0, issued.stderr
    app = EVIL_APP.replace("ctlplane-evil", "ctlplane-view").replace("replicas: 1", "replicas: 0")
    assert orch(cluster, "apply", "-", stdin=app.replace("rootfs:/", f"rootfs:{busybox_rootfs}")).returncode == 0
    yield ["--scheduler", cluster["schedulers"][0], "--tls-dir", str(tls_dir), "--tls-user", "ctlplane-viewer"]
    assert orch(cluster, "delete", "app", "ctlplane-view").returncode == 0


def test_a_viewer_reads_but_changes_nothing(cluster: dict[str, Any], viewer: list[str], tls_dir: Path) -> None:
    for read in (["get", "apps"], ["get", "app", "ctlplane-view"], ["get", "nodes"], ["get", "instances"],
                 ["describe", "app", "ctlplane-view"], ["events"], ["top", "nodes"]):  # fmt: skip
        r = run_orch(*viewer, *read)
        assert r.returncode == 0, (read, r.stderr)
    assert "ctlplane-view" in run_orch(*viewer, "get", "apps").stdout
    for write, method in ((["scale", "ctlplane-view", "3"], "Scale"), (["delete", "app", "ctlplane-view"], "DeleteApp"),
                          (["drain", "node-1"], "Drain"), (["cordon", "node-1"], "SetSchedulable"),
                          (["apply", "-"], "Apply")):  # fmt: skip
        r = run_orch(*viewer, *write, stdin=EVIL_APP.replace("replicas: 1", "replicas: 0"))
        assert r.returncode == 1, (write, r.stdout)
        assert r.stderr.strip() == (
            f'Error: permission denied: "viewer:ctlplane-viewer" (role viewer) may not call orch.v1.Orch/{method}'
        )
    with channel(cluster["schedulers"][0], TlsFiles.in_dir(tls_dir, "ctlplane-viewer").load(), peer=SCHEDULER) as ch:
        results = _call_all(ch)
    assert results["ListApps"] == results["ListNodes"] == "ok"
    assert {results[m] for m in ("Apply", "DeleteApp", "Drain", "SetSchedulable", "Exec")} == {
        grpc.StatusCode.PERMISSION_DENIED
    }
    apps = json.loads(orch(cluster, "get", "apps", "-o", "json").stdout)
    assert [a["replicas"] for a in apps if a["name"] == "ctlplane-view"] == [0]
    assert all(n["schedulable"] for n in json.loads(orch(cluster, "get", "nodes", "-o", "json").stdout))


class _Impostor(api_pb2_grpc.OrchServicer, agent_pb2_grpc.AgentSessionServicer):
    """A server that answers as the scheduler would, and counts who got through to it."""

    def __init__(self) -> None:
        self.calls = 0

    def ListNodes(self, request: Any, context: Any) -> api_pb2.ListNodesResponse:
        self.calls += 1
        return api_pb2.ListNodesResponse()

    def Session(self, request_iterator: Any, context: Any) -> Iterator[apb.SchedulerMessage]:
        self.calls += 1
        yield apb.SchedulerMessage(registered=apb.Registered(lease_id=1, heartbeat_interval_ms=1000))


class _AgentImpostor(agent_pb2_grpc.NodeAgentServicer):
    def __init__(self) -> None:
        self.calls = 0

    def Usage(self, request: Any, context: Any) -> pb.UsageReport:
        self.calls += 1
        return pb.UsageReport()


@contextmanager
def _serving(tls_dir: Path, cert: str, add: Callable[[grpc.Server], None]) -> Iterator[str]:
    """A gRPC server on a free loopback port with a valid certificate of the cluster's CA."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add(server)
    creds = TlsFiles.in_dir(tls_dir, cert).load()
    port = server.add_secure_port(f"127.0.0.1:{free_port()}", creds.server_credentials())
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None).wait()


@pytest.fixture
def impostor(request: pytest.FixtureRequest, tls_dir: Path) -> Iterator[tuple[str, _Impostor]]:
    """A scheduler impostor with the certificate named by the test's parameter."""
    servicer = _Impostor()  # type: ignore[abstract]

    def add(server: grpc.Server) -> None:
        api_pb2_grpc.add_OrchServicer_to_server(servicer, server)
        agent_pb2_grpc.add_AgentSessionServicer_to_server(servicer, server)

    with _serving(tls_dir, request.param, add) as address:
        yield address, servicer


@pytest.fixture
def agent_impostor(request: pytest.FixtureRequest, tls_dir: Path) -> Iterator[tuple[str, _AgentImpostor]]:
    """An agent impostor with the certificate named by the test's parameter."""
    servicer = _AgentImpostor()  # type: ignore[abstract]
    with _serving(tls_dir, request.param, lambda s: agent_pb2_grpc.add_NodeAgentServicer_to_server(servicer, s)) as a:
        yield a, servicer


@contextmanager
def _node_address(info: dict[str, Any], tls_dir: Path, node: str, address: str) -> Iterator[None]:
    """Point the scheduler at another address for node's agent, as one who could write etcd would."""
    store = Store(info["etcd"], tls=TlsFiles.in_dir(tls_dir / pki.ETCD_DIR, "scheduler").load())
    key = store.keys.node(node)
    record = store.get(pb.Node, key)
    assert record is not None
    old = record.value.address
    try:
        store.update(pb.Node, key, lambda n: setattr(n, "address", address))
        yield
    finally:
        store.update(pb.Node, key, lambda n: setattr(n, "address", old))
        store.close()


def _top_node_1(info: dict[str, Any]) -> dict[str, Any]:
    r = orch(info, "top", "nodes", "--node", "node-1", "-o", "json")
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout)[0])


@pytest.mark.parametrize("agent_impostor", ["node-0"], indirect=True)
def test_the_scheduler_dials_only_the_node_it_means(
    cluster: dict[str, Any], agent_impostor: tuple[str, _AgentImpostor], tls_dir: Path
) -> None:
    address, servicer = agent_impostor  # node-0's certificate, answering at "node-1's" address
    with _node_address(cluster, tls_dir, "node-1", address):
        usage = _top_node_1(cluster)
    assert servicer.calls == 0, usage  # the handshake failed: it never got a call
    assert "UNAVAILABLE" in (usage["error"] or ""), usage
    assert _top_node_1(cluster)["error"] is None  # node-1 itself answers again


@pytest.mark.parametrize("agent_impostor", ["node-1"], indirect=True)
def test_control_node_1s_certificate_answers_for_node_1(
    cluster: dict[str, Any], agent_impostor: tuple[str, _AgentImpostor], tls_dir: Path
) -> None:
    address, servicer = agent_impostor
    with _node_address(cluster, tls_dir, "node-1", address):
        usage = _top_node_1(cluster)
    assert usage["error"] is None and servicer.calls == 1


def _agent_session(address: str, creds: Credentials) -> str:
    """One agent session attempt, as node-1's agent makes it: "connected" or the gRPC error."""
    session = Session([address], lambda lease: apb.Register(node="node-1"), apb.StatusReport, _ignore, tls=creds)

    async def once() -> str:
        try:
            await asyncio.wait_for(session._session(address), timeout=10)
        except grpc.aio.AioRpcError as e:
            return e.code().name
        except TimeoutError:
            pass
        return "connected" if session.lease_id == 1 else "nothing"

    return asyncio.run(once())


async def _ignore(desired: apb.DesiredSet) -> None:
    return None


@pytest.mark.parametrize("impostor", ["node-0"], indirect=True)
def test_a_node_certificate_cannot_pose_as_the_scheduler(impostor: tuple[str, _Impostor], tls_dir: Path) -> None:
    address, servicer = impostor
    r = run_orch("--scheduler", address, "--tls-dir", str(tls_dir), "get", "nodes")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "scheduler.orch.invalid" in r.stderr or "cannot reach the scheduler" in r.stderr, r.stderr
    assert _agent_session(address, TlsFiles.in_dir(tls_dir, "node-1").load()) == "UNAVAILABLE"
    assert servicer.calls == 0


@pytest.mark.parametrize("impostor", ["scheduler"], indirect=True)
def test_control_the_schedulers_certificate_is_accepted(impostor: tuple[str, _Impostor], tls_dir: Path) -> None:
    address, servicer = impostor
    r = run_orch("--scheduler", address, "--tls-dir", str(tls_dir), "get", "nodes")
    assert r.returncode == 0, r.stderr
    assert _agent_session(address, TlsFiles.in_dir(tls_dir, "node-1").load()) == "connected"
    assert servicer.calls == 2


def test_a_plaintext_client_is_refused(cluster: dict[str, Any]) -> None:
    r = run_orch("--scheduler", cluster["schedulers"][0], "get", "nodes")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "--tls-dir" in r.stderr, r.stderr
    with grpc.insecure_channel(cluster["schedulers"][0]) as ch, pytest.raises(grpc.RpcError) as refused:
        api_pb2_grpc.OrchStub(ch).ListApps(api_pb2.ListAppsRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
