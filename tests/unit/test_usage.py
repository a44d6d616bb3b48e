"""Unit: `orch top`'s sampling on the node and its rows in the CLI."""

from __future__ import annotations

from pathlib import Path

from cli.output import render, usage_instance_row, usage_node_row
from node.runtime import CgroupStats, NotFound
from node.usage import sample_usage
from orch.v1 import api_pb2 as api
from orch.v1 import types_pb2 as pb


def test_cpu_is_the_rate_between_two_readings() -> None:
    readings = {"web-1": [0, 250_000_000], "web-2": [1_000_000_000, 1_000_000_000]}
    running = [("web-1", "web"), ("web-2", "web")]

    def stats(name: str) -> CgroupStats:
        cpu = readings[name].pop(0)
        return CgroupStats(cpu, memory_bytes=3 << 20, pids=2, memory_working_set_bytes=2 << 20, oom_kills=0)

    clock = iter([10.0, 10.5])
    report = sample_usage("n1", lambda: running, stats, window=0.5, sleep=lambda _: None, clock=lambda: next(clock))
    assert report.window_seconds == 0.5
    assert [(u.instance, u.cpu_millis, u.memory_working_set_bytes, u.pids) for u in report.instances] == [
        ("web-1", 500, 2 << 20, 2),  # 0.25 s of CPU in 0.5 s = half a core
        ("web-2", 0, 2 << 20, 2),
    ]
    assert {u.node for u in report.instances} == {"n1"}


def test_an_instance_that_starts_or_ends_during_the_window_is_left_out() -> None:
    lists = iter([[("old", "a"), ("ends", "a")], [("new", "a"), ("ends", "a")]])

    def stats(name: str) -> CgroupStats:
        if name == "ends" and not first:
            raise NotFound(name, Path("/state"))  # gone between listing and reading
        return CgroupStats(0, 0, 0, 0, 0)

    first = True

    def between(_: float) -> None:
        nonlocal first
        first = False

    report = sample_usage("n1", lambda: next(lists), stats, window=0, sleep=between)
    assert list(report.instances) == []


def test_rows_and_tables() -> None:
    inst = pb.InstanceUsage(instance="web-1", app="web", node="n1", cpu_millis=250, memory_working_set_bytes=3 << 20)
    assert usage_instance_row(inst)["cpu"] == 250
    table = render("top-instances", [usage_instance_row(inst)], "table")
    assert table.splitlines()[0].split() == ["NAME", "APP", "NODE", "CPU(cores)", "MEMORY(bytes)", "PIDS"]
    assert table.splitlines()[1].split()[3:5] == ["250m", "3Mi"]
    alloc = pb.Resources(cpu_millis=2000, memory_bytes=1 << 30)
    ok = usage_node_row(
        api.NodeUsage(node="n1", cpu_millis=500, memory_working_set_bytes=256 << 20, instances=2, allocatable=alloc)
    )
    assert (ok["cpuPercent"], ok["memoryPercent"], ok["error"]) == (25, 25, None)
    down = usage_node_row(api.NodeUsage(node="n2", allocatable=alloc, error="node is NotReady"))
    assert (down["cpu"], down["cpuPercent"], down["error"]) == (None, None, "node is NotReady")
    lines = render("top-nodes", [ok, down], "table").splitlines()
    assert lines[1].split() == ["n1", "500m", "25%", "256Mi", "25%", "2"]
    assert lines[2].split()[:2] == ["n2", "<unknown>"]
