"""Rendering API objects: stable camelCase JSON (scripts rely on it), YAML,
and kubectl-like plain tables."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import yaml

from orch.quantity import format_cpu
from orch.v1 import api_pb2 as api
from orch.v1 import types_pb2 as pb

Row = dict[str, Any]


def _enum(name: str, prefix: str) -> str:
    """INSTANCE_STATE_NOT_READY -> NotReady."""
    return "".join(part.capitalize() for part in name.removeprefix(prefix).split("_"))


def _time(ts: Any) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return str(ts.ToJsonString())


def _resources(r: pb.Resources) -> Row:
    return {"cpu": r.cpu_millis, "memory": r.memory_bytes, "pids": r.pids}


def instance_row(i: pb.Instance) -> Row:
    s = i.status
    return {
        "name": i.name,
        "app": i.app,
        "node": i.node or None,
        "state": _enum(pb.InstanceState.Name(s.state), "INSTANCE_STATE_"),
        "reason": s.reason or None,
        "message": s.message or None,
        "exitCode": s.exit_code if s.has_exit_code else None,
        "restarts": s.restarts,
        "ip": s.ip or None,
        "startedAt": _time(s.started_at),
        "ready": s.ready,
        "pid": s.pid or None,
        "desired": "Stop" if i.desired == pb.DESIRED_STATE_STOP else "Run",
        "generation": i.app_generation,
        "image": i.spec.image,
        "createdAt": _time(i.created_at),
        "lastState": _termination(s.last_termination) if s.HasField("last_termination") else None,
        "replaces": move_row(i.replaces),
    }


def move_row(m: pb.Instance.Move) -> Row | None:
    """The instance a replacement stands in for and why that one left; None for any other."""
    if not m.instance:
        return None
    return {"instance": m.instance, "node": m.node or None, "reason": m.reason, "message": m.message, "at": _time(m.at)}


def move_line(m: pb.Instance.Move) -> str:
    """`replaces web-x: NodeLost: node "n1" stopped answering (at ...)`, for explain and describe."""
    why = f"{m.reason}: {m.message}" if m.message else m.reason
    at = _time(m.at)
    return f"replaces {m.instance}: {why}" + (f" (at {at})" if at else "")


def _termination(t: pb.Termination) -> Row:
    """How the previous incarnation ended (kubectl's lastState.terminated)."""
    return {"reason": t.reason, "exitCode": t.exit_code, "finishedAt": _time(t.finished_at), "message": t.message}


NODE_STATES = {
    api.NODE_STATE_READY: "Ready",
    api.NODE_STATE_NOT_READY: "NotReady",
    api.NODE_STATE_RESTARTING: "Restarting",  # its agent restarts; its instances are kept until restartingUntil
}


def node_row(n: api.NodeInfo) -> Row:
    node = n.node
    restarting = n.state == api.NODE_STATE_RESTARTING
    return {
        "name": node.name,
        "state": NODE_STATES.get(n.state, "NotReady"),
        "schedulable": not (node.unschedulable or node.draining),
        "labels": dict(sorted(node.labels.items())),
        "capacity": _resources(node.capacity),
        "allocatable": _resources(node.allocatable),
        "allocated": _resources(n.allocated),
        "instances": n.instances,
        "address": node.address or None,
        "subnet": node.subnet or None,  # its containers' addresses (docs/networking.md)
        "nodeIp": node.node_ip or None,  # where other nodes route that subnet
        "version": node.version or None,
        "restartingUntil": _time(node.restarting_until) if restarting else None,
        "allowedHostPaths": list(node.allowed_host_paths),  # orch node --allow-host-path
    }


def app_row(a: api.AppInfo) -> Row:
    spec = a.app.spec
    current = a.app.rollout.generation == a.app.generation  # else the scheduler has not said yet
    rollout = a.app.rollout if current else pb.RolloutStatus()
    return {
        "name": spec.name,
        "replicas": spec.replicas,
        "ready": a.ready,
        "running": a.running,
        "pending": a.pending,
        "image": spec.image,
        "generation": a.app.generation,
        "labels": dict(sorted(spec.labels.items())),
        "createdAt": _time(a.app.created_at),
        "serviceIp": a.app.service_ip or None,  # the stable virtual IP (spec.service)
        # How the current generation's rollout goes: Progressing, Complete, ProgressDeadlineExceeded.
        "rollout": rollout.reason or None,
        "rolloutMessage": rollout.message or None,
    }


def human_memory(size: int) -> str:
    """Tables only: 24684092Ki reads better as 23.5Gi."""
    for unit, scale in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f}{unit}".replace(".0" + unit, unit)
    return str(size)


def age(iso: str | None, now: float | None = None) -> str:
    if not iso:
        return "-"
    from google.protobuf.timestamp_pb2 import Timestamp

    t = Timestamp()
    t.FromJsonString(iso)
    secs = int((now or time.time()) - t.seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def instance_table(rows: list[Row], wide: bool) -> str:
    headers = ["NAME", "APP", "NODE", "STATE", "REASON", "RESTARTS", "IP", "AGE"]
    if wide:
        headers += ["EXIT", "READY", "GEN", "MESSAGE"]
    out = []
    for r in rows:
        line = [r["name"], r["app"], r["node"], r["state"], r["reason"], r["restarts"], r["ip"], age(r["startedAt"])]
        if wide:
            line += [r["exitCode"], r["ready"], r["generation"], r["message"]]
        out.append(line)
    return table(headers, out)


def node_table(rows: list[Row], wide: bool) -> str:
    headers = ["NAME", "STATE", "SCHEDULABLE", "INSTANCES", "CPU", "MEMORY"]
    if wide:
        headers += ["ADDRESS", "SUBNET", "NODE-IP", "LABELS"]
    out = []
    for r in rows:
        cpu = f"{format_cpu(r['allocated']['cpu'])}/{format_cpu(r['allocatable']['cpu'])}"
        mem = f"{human_memory(r['allocated']['memory'])}/{human_memory(r['allocatable']['memory'])}"
        line = [r["name"], r["state"], r["schedulable"], r["instances"], cpu, mem]
        if wide:
            labels = ",".join(f"{k}={v}" for k, v in r["labels"].items()) or None
            line += [r["address"], r["subnet"], r["nodeIp"], labels]
        out.append(line)
    return table(headers, out)


def app_table(rows: list[Row], wide: bool) -> str:
    headers = ["NAME", "READY", "RUNNING", "PENDING", "GENERATION", "IMAGE"]
    headers += ["SERVICE-IP", "ROLLOUT"] if wide else []
    out = [
        [r["name"], f"{r['ready']}/{r['replicas']}", r["running"], r["pending"], r["generation"], r["image"]]
        + ([r["serviceIp"], r["rollout"]] if wide else [])
        for r in rows
    ]
    return table(headers, out)


def usage_instance_row(u: pb.InstanceUsage) -> Row:
    return {
        "name": u.instance,
        "app": u.app,
        "node": u.node,
        "cpu": u.cpu_millis,
        "memory": u.memory_working_set_bytes,
        "memoryWithCache": u.memory_bytes,
        "pids": u.pids,
    }


def usage_node_row(u: api.NodeUsage) -> Row:
    def percent(used: int, of: int) -> int | None:
        return round(100 * used / of) if of and not u.error else None

    return {
        "name": u.node,
        "cpu": None if u.error else u.cpu_millis,
        "cpuPercent": percent(u.cpu_millis, u.allocatable.cpu_millis),
        "memory": None if u.error else u.memory_working_set_bytes,
        "memoryPercent": percent(u.memory_working_set_bytes, u.allocatable.memory_bytes),
        "instances": None if u.error else u.instances,
        "error": u.error or None,
    }


def top_instance_table(rows: list[Row], wide: bool) -> str:
    headers = ["NAME", "APP", "NODE", "CPU(cores)", "MEMORY(bytes)", "PIDS"]
    # Millicores always, as kubectl top does: usage is rarely a round number of cores.
    out = [[r["name"], r["app"], r["node"], f"{r['cpu']}m", human_memory(r["memory"]), r["pids"]] for r in rows]
    return table(headers, out)


def top_node_table(rows: list[Row], wide: bool) -> str:
    headers = ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%", "INSTANCES"]
    out = []
    for r in rows:
        if r["error"]:
            out.append([r["name"], "<unknown>", "<unknown>", "<unknown>", "<unknown>", None])
            continue
        cpu_pct = None if r["cpuPercent"] is None else f"{r['cpuPercent']}%"
        mem_pct = None if r["memoryPercent"] is None else f"{r['memoryPercent']}%"
        out.append([r["name"], f"{r['cpu']}m", cpu_pct, human_memory(r["memory"]), mem_pct, r["instances"]])
    return table(headers, out)


TABLES = {
    "instances": instance_table,
    "nodes": node_table,
    "apps": app_table,
    "top-instances": top_instance_table,
    "top-nodes": top_node_table,
}


def render(kind: str, rows: list[Row], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(rows, sort_keys=False).rstrip()
    if not rows:
        return f"No {kind} found."
    return TABLES[kind](rows, fmt == "wide")
