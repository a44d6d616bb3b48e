"""The agent's own metrics: exit counters that exist before the first exit, CamelCase states."""

from __future__ import annotations

from prometheus_client import generate_latest

from node.metrics import NodeMetrics
from orch.v1 import types_pb2 as pb


def test_exit_series_exist_at_zero_before_an_exit_and_count_after() -> None:
    m = NodeMetrics("1.2.3")
    m.started("web")
    text = generate_latest(m.registry).decode()
    for reason in ("Completed", "Error", "OOMKilled", "LivenessFailed", "StartupFailed"):
        assert f'orch_instance_exits_total{{app="web",reason="{reason}"}} 0.0' in text
    m.exited("web", "OOMKilled")
    assert 'orch_instance_exits_total{app="web",reason="OOMKilled"} 1.0' in generate_latest(m.registry).decode()


def test_states_are_spelled_as_orch_get_does_and_no_node_label() -> None:
    m = NodeMetrics("1.2.3")
    m.observe(pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING))
    text = generate_latest(m.registry).decode()
    assert 'orch_node_instance_transitions_total{state="Running"} 1.0' in text
    assert 'orch_node_info{version="1.2.3"} 1.0' in text and 'node="' not in text
    assert "process_resident_memory_bytes" in text
