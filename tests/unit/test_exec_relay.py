"""`orch exec` between the CLI and an agent, without containers: the scheduler's choice of the
agent, and the CLI's exit codes and messages against a real gRPC server that plays the scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from cli.exec import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_NOT_RUNNING, EXIT_UNREACHABLE
from cli.main import main
from orch.v1 import exec_pb2 as xpb
from orch.v1 import types_pb2 as pb
from scheduler.errors import NotFound
from scheduler.exec_relay import ExecTarget, InstanceNotRunning, NodeUnreachable, exec_target
from tests.factories import make_app, make_instance, make_node, make_snapshot, make_spec
from tests.fixtures.etcd import free_port


def snapshot(state: int = pb.INSTANCE_STATE_RUNNING, live: set[str] | None = None) -> Any:
    app = make_app(make_spec("web"))
    node = make_node("n1")
    node.address = "127.0.0.1:4000"
    return make_snapshot([app], [node], [make_instance(app, "web-1", "n1", state=state)], live=live)


def test_exec_target_is_the_instances_agent() -> None:
    assert exec_target(snapshot(), "web-1") == ExecTarget("web-1", "n1", "127.0.0.1:4000")
    with pytest.raises(NotFound):
        exec_target(snapshot(), "web-2")
    with pytest.raises(InstanceNotRunning, match=r'"web-1" is not running \(state Pending\)'):
        exec_target(snapshot(pb.INSTANCE_STATE_PENDING), "web-1")
    with pytest.raises(NodeUnreachable, match='node "n1" of instance "web-1" is not ready'):
        exec_target(snapshot(live=set()), "web-1")


class FakeScheduler:
    """Orch.Exec only (the other methods stay UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.abort: tuple[grpc.StatusCode, str] | None = None
        self.started: list[xpb.ExecStart] = []

    def Exec(
        self, request_iterator: Iterator[xpb.ExecInput], context: grpc.ServicerContext
    ) -> Iterator[xpb.ExecOutput]:
        self.started.append(next(request_iterator).start)
        if self.abort is not None:
            context.abort(*self.abort)
        yield xpb.ExecOutput(stdout=b"out\n")
        yield xpb.ExecOutput(stderr=b"err\n")
        yield xpb.ExecOutput(exit_code=7)


@pytest.fixture
def scheduler() -> Iterator[tuple[FakeScheduler, str]]:
    fake = FakeScheduler()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.stream_stream_rpc_method_handler(
        fake.Exec, request_deserializer=xpb.ExecInput.FromString, response_serializer=xpb.ExecOutput.SerializeToString
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("orch.v1.Orch", {"Exec": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def orch_exec(address: str, *args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(["--scheduler", address, "--timeout", "3", "exec", *args])
    return int(done.value.code or 0)


def test_output_streams_and_the_commands_exit_code(scheduler: Any, capfd: pytest.CaptureFixture[str]) -> None:
    fake, address = scheduler
    assert orch_exec(address, "web-1", "--", "sh", "-c", "exit 7") == 7
    assert capfd.readouterr() == ("out\n", "err\n")
    start = fake.started[0]
    assert (start.instance, list(start.command), start.tty, start.stdin) == ("web-1", ["sh", "-c", "exit 7"], 0, 0)


@pytest.mark.parametrize(
    "code, exit_code",
    [
        (grpc.StatusCode.NOT_FOUND, EXIT_NOT_FOUND),
        (grpc.StatusCode.FAILED_PRECONDITION, EXIT_NOT_RUNNING),
        (grpc.StatusCode.UNAVAILABLE, EXIT_UNREACHABLE),
        (grpc.StatusCode.PERMISSION_DENIED, EXIT_ERROR),
    ],
)
def test_orchs_own_failures_are_one_line_and_a_code_of_their_own(
    scheduler: Any, capfd: pytest.CaptureFixture[str], code: grpc.StatusCode, exit_code: int
) -> None:
    fake, address = scheduler
    fake.abort = (code, "what went wrong")
    assert orch_exec(address, "web-1", "--", "true") == exit_code
    out, err = capfd.readouterr()
    assert out == "" and err.count("\n") == 1 and "what went wrong" in err and "Traceback" not in err


def test_an_unreachable_scheduler(capfd: pytest.CaptureFixture[str]) -> None:
    assert orch_exec(f"127.0.0.1:{free_port()}", "web-1", "--", "true") == EXIT_ERROR
    err = capfd.readouterr().err
    assert err.startswith("cannot reach the scheduler at 127.0.0.1:") and err.count("\n") == 1
