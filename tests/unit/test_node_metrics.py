"""The agent's own metrics: exit counters that exist before the first exit, CamelCase states,
per-instance traffic from the veths."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.metrics import InstanceNetwork, NodeMetrics
from node.network.counters import LinkCounters, parse_net_dev
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


NET_DEV = "\n".join(  # as the kernel writes it, headers included
    [
        "Inter-|   Receive                                                |  Transmit",
        " face |bytes    packets errs drop fifo frame compressed multicast|"
        "bytes    packets errs drop fifo colls carrier compressed",
        "    lo:    7953    59    0    0    0     0     0     0     7953      59    0    0    0     0    0    0",
        "ov0123456789: 1000  10    0    2    0     0     0     0    50000     40    0    7    0     0    0    0",
        " orch1:     300     3    0    0    0     0     0     0      400       4    0    0    0     0    0    0",
    ]
)


def test_net_dev_parses_every_link_and_skips_the_headers() -> None:
    links = parse_net_dev(NET_DEV)
    assert set(links) == {"lo", "ov0123456789", "orch1"}
    assert links["ov0123456789"] == LinkCounters(
        rx_bytes=1000, rx_packets=10, rx_dropped=2, tx_bytes=50000, tx_packets=40, tx_dropped=7
    )
    assert parse_net_dev("garbage\nx: 1 2 3\n") == {}


SERIES = (
    "receive_bytes",
    "transmit_bytes",
    "receive_packets",
    "transmit_packets",
    "receive_packets_dropped",
    "transmit_packets_dropped",
)


def network_metrics(running: list[tuple[str, str]], veths: dict[str, str] | None) -> dict[tuple[str, str], float]:
    m = NodeMetrics("1.2.3")
    m.registry.register(
        InstanceNetwork(
            lambda: running, lambda name: None if veths is None else veths[name], lambda: parse_net_dev(NET_DEV)
        )
    )
    families = text_string_to_metric_families(generate_latest(m.registry).decode())
    return {
        (s.name, s.labels["instance_name"]): s.value
        for f in families
        for s in f.samples
        if s.name.startswith("orch_node_instance_network_")
    }


def test_an_instance_receives_what_its_veths_host_end_transmits() -> None:
    # The host end's tx is the container's rx (veths are mirrors); drops too: its tx_dropped,
    # frames it could not hand to the container, are the container's receive drops.
    got = network_metrics([("web-1", "web"), ("web-2", "web")], {"web-1": "ov0123456789", "web-2": "ovffffffffff"})
    assert got[("orch_node_instance_network_receive_bytes_total", "web-1")] == 50000
    assert got[("orch_node_instance_network_transmit_bytes_total", "web-1")] == 1000
    assert got[("orch_node_instance_network_receive_packets_total", "web-1")] == 40
    assert got[("orch_node_instance_network_transmit_packets_total", "web-1")] == 10
    assert got[("orch_node_instance_network_receive_packets_dropped_total", "web-1")] == 7
    assert got[("orch_node_instance_network_transmit_packets_dropped_total", "web-1")] == 2
    # A running instance whose veth is not there keeps its series, at 0.
    assert {k: v for k, v in got.items() if k[1] == "web-2"} == {
        (f"orch_node_instance_network_{n}_total", "web-2"): 0.0 for n in SERIES
    }


def test_no_network_series_without_a_container_network_nor_once_the_instance_is_gone() -> None:
    assert network_metrics([("web-1", "web")], None) == {}  # the node has no bridge: only lo inside
    assert network_metrics([], {"web-1": "ov0123456789"}) == {}
