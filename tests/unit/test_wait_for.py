"""The tests' wait: a call that ran out of its own time is "not yet", any other error fails at once."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import grpc
import pytest

from tests.fixtures.processes import wait_for


class Rpc(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def flaky(*errors: Exception) -> Callable[[], str]:
    pending = list(errors)

    def predicate() -> str:
        if pending:
            raise pending.pop(0)
        return "done"

    return predicate


def test_a_call_out_of_time_or_without_a_server_is_not_yet() -> None:
    starved = (
        Rpc(grpc.StatusCode.DEADLINE_EXCEEDED),
        Rpc(grpc.StatusCode.UNAVAILABLE),
        subprocess.TimeoutExpired(["orch"], 30),
    )
    assert wait_for(flaky(*starved), 5) == "done"


def test_any_other_error_fails_at_once() -> None:
    with pytest.raises(grpc.RpcError) as raised:
        wait_for(flaky(Rpc(grpc.StatusCode.INVALID_ARGUMENT)), 5)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_the_waits_deadline_fails_with_the_last_starved_call_as_its_cause() -> None:
    late = Rpc(grpc.StatusCode.DEADLINE_EXCEEDED)

    def predicate() -> None:
        raise late

    with pytest.raises(AssertionError, match=r"timed out after 0\.3s waiting for the API") as raised:
        wait_for(predicate, 0.3, "the API")
    assert raised.value.__cause__ is late
