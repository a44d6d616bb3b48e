"""The agent's pure parts: desired/actual diff and restart decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from node.reconcile import diff
from node.restarts import RestartTracker
from orch.v1 import types_pb2 as pb


def test_diff_splits_added_removed_unchanged():
    d = diff([pb.Instance(name="a"), pb.Instance(name="b")], {"b": object(), "c": object()})
    assert [i.name for i in d.added] == ["a"]
    assert d.removed == ("c",)
    assert d.unchanged == ("b",)


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [
        (pb.RESTART_POLICY_ALWAYS, 0, True),
        (pb.RESTART_POLICY_ALWAYS, 1, True),
        (pb.RESTART_POLICY_ON_FAILURE, 0, False),
        (pb.RESTART_POLICY_ON_FAILURE, 2, True),
        (pb.RESTART_POLICY_NEVER, 1, False),
        (pb.RESTART_POLICY_UNSPECIFIED, 0, True),
    ],
)
def test_restart_policy(policy, code, restart):
    assert RestartTracker(policy).next(code, 1.0).restart is restart


def test_backoff_doubles_caps_and_resets_after_a_healthy_run():
    t = RestartTracker(pb.RESTART_POLICY_ALWAYS, initial=1, maximum=5, reset_after=60)
    delays = [t.next(1, 0.1).delay for _ in range(6)]
    assert delays == [0.0, 1, 2, 4, 5, 5]
    assert t.next(1, 120).delay == 0.0
    assert t.restarts == 7


def test_tables_show_memory_for_people():
    from cli.output import human_memory

    assert [human_memory(n) for n in (0, 64 << 20, 24684092 * 1024, 1536)] == ["0", "64Mi", "23.5Gi", "1.5Ki"]


class _Unavailable(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "gone"


def test_cli_fails_over_between_schedulers_but_not_in_the_middle_of_a_stream():
    from cli.client import Client, CliError

    tried: list[int] = []

    def flaky(stub):
        tried.append(1)
        if len(tried) == 1:
            raise _Unavailable()
        return "answer"

    assert Client(["127.0.0.1:1", "127.0.0.1:2"]).call(flaky) == "answer"  # the second one answered

    client = Client(["127.0.0.1:1", "127.0.0.1:2"])
    calls: list[int] = []

    def stream(stub):
        calls.append(1)
        client.output_started = True  # printed a line, then the scheduler died
        raise _Unavailable()

    with pytest.raises(CliError, match="cannot reach the scheduler"):
        client.call(stream)
    assert len(calls) == 1


def test_node_flags_become_an_agent_config(tmp_path: Path) -> None:
    from cli.client import CliError
    from cli.commands import agent_config
    from node.agent import AgentConfig
    from node.runtime.userns import IdRange

    def config(**kw: Any) -> AgentConfig:
        return agent_config("n1", tmp_path, ("127.0.0.1:7070",), ["zone=a"], "", "", "", "", "", **kw)

    assert config(userns_range="200000:131072").userns_ids == IdRange(200000, 131072)
    assert config().userns_ids == IdRange()
    with pytest.raises(CliError, match=r"--userns-range: .*expected FIRST:COUNT"):
        config(userns_range="lots")
