"""What each CLI command does, apart from argument parsing (main.py)."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
import grpc
import yaml

from cli.client import RETRYABLE, Client, CliError, UsageError, describe_rpc_error
from cli.diff import summary, unified
from cli.manifest import LoadedApp, load_manifests
from cli.output import (
    app_row,
    instance_row,
    move_line,
    move_row,
    node_row,
    render,
    table,
    usage_instance_row,
    usage_node_row,
)
from cli.render import manifest, manifest_yaml
from cli.selector import Selector
from orch.quantity import QuantityError, parse_cpu, parse_duration, parse_memory
from orch.tls import Credentials
from orch.v1 import api_pb2 as api
from orch.v1 import types_pb2 as pb
from orch.v1.api_pb2_grpc import OrchStub
from orch.version import version

if TYPE_CHECKING:
    from node.agent import AgentConfig

PLURAL = {"app": "apps", "node": "nodes", "instance": "instances", "inst": "instances"}
ACTIONS = {
    api.APPLY_ACTION_CREATED: "created",
    api.APPLY_ACTION_CONFIGURED: "configured",
    api.APPLY_ACTION_UNCHANGED: "unchanged",
}


def plural(kind: str) -> str:
    return PLURAL.get(kind, kind)


def load(paths: Sequence[str]) -> list[LoadedApp]:
    if not paths:
        raise CliError("no manifest given")
    return load_manifests(paths)


def apply(c: Client, paths: Sequence[str], dry_run: bool, wait: bool, wait_timeout: float) -> None:
    apps = load(paths)
    req = api.ApplyRequest(apps=[a.spec for a in apps], dry_run=dry_run)
    resp = c.call(lambda s: s.Apply(req, timeout=c.timeout))
    if dry_run:
        show_diffs(apps, resp.results, summaries_to_stderr=False)
        return
    for r in resp.results:
        click.echo(f"app/{r.name} {ACTIONS.get(r.action, '?')}")
    if wait:
        wait_ready(c, [r.name for r in resp.results], wait_timeout)


def diff(c: Client, paths: Sequence[str]) -> bool:
    """Prints what applying would change; True when something would."""
    apps = load(paths)
    req = api.ApplyRequest(apps=[a.spec for a in apps], dry_run=True)
    resp = c.call(lambda s: s.Apply(req, timeout=c.timeout))
    return show_diffs(apps, resp.results, summaries_to_stderr=True)


def show_diffs(apps: Sequence[LoadedApp], results: Sequence[api.ApplyResult], summaries_to_stderr: bool) -> bool:
    """The diffs on stdout, then one summary line per app (on stderr for `orch diff`, whose
    stdout is a patch)."""
    sources = {a.spec.name: a.source for a in apps}
    for r in results:
        if text := unified(r, sources.get(r.name, "")):
            click.echo(text, nl=False)
    for r in results:
        click.echo(summary(r) + ("" if summaries_to_stderr else " (dry run)"), err=summaries_to_stderr)
    return any(r.action != api.APPLY_ACTION_UNCHANGED for r in results)


def wait_ready(c: Client, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        infos = c.call(lambda s: s.ListApps(api.ListAppsRequest(), timeout=c.timeout)).apps
        by_name = {i.app.spec.name: i for i in infos}
        line = ", ".join(f"{n} {by_name[n].ready}/{by_name[n].app.spec.replicas} ready" for n in names if n in by_name)
        if line != last:
            click.echo(f"waiting: {line}", err=True)
            last = line
        if all(n in by_name and _settled(c, by_name[n]) for n in names):
            click.echo("all replicas ready", err=True)
            return
        if time.monotonic() > deadline:
            raise CliError(f"timed out after {timeout:.0f}s: {line}")
        time.sleep(0.3)


def _settled(c: Client, info: api.AppInfo) -> bool:
    if info.ready != info.app.spec.replicas:
        return False
    insts = c.call(lambda s: s.ListInstances(api.ListInstancesRequest(app=info.app.spec.name), timeout=c.timeout))
    live = [i for i in insts.instances if i.desired != pb.DESIRED_STATE_STOP]
    return all(i.app_generation == info.app.generation for i in live)


def rows(
    c: Client, kind: str, name: str | None, app: str | None, node: str | None, selector: Selector | None = None
) -> list[dict[str, object]]:
    """One row per object; an app's labels select its instances too."""
    wanted = selector or Selector(())
    if kind == "apps":
        apps = c.call(lambda s: s.ListApps(api.ListAppsRequest(), timeout=c.timeout)).apps
        out = [app_row(a) for a in apps if wanted.matches(a.app.spec.labels)]
    elif kind == "nodes":
        nodes = c.call(lambda s: s.ListNodes(api.ListNodesRequest(), timeout=c.timeout)).nodes
        out = [node_row(n) for n in nodes if wanted.matches(n.node.labels)]
    else:
        if name and not app:  # "<app>-<suffix>": read that app's instances, not the whole cluster's
            app = name.rpartition("-")[0]
        req = api.ListInstancesRequest(app=app or "", node=node or "")
        insts = c.call(lambda s: s.ListInstances(req, timeout=c.timeout)).instances
        out = [instance_row(i) for i in insts if wanted.matches(i.spec.labels)]
    if name:
        out = [r for r in out if r["name"] == name]
        if not out:
            raise CliError(f'Error: {kind.rstrip("s")} "{name}" not found')
    return out


def manifests(c: Client, name: str | None, selector: Selector | None) -> str:
    """Apps as the manifests that would apply them again (`get apps -o yaml`)."""
    apps = [a.app.spec for a in c.call(lambda s: s.ListApps(api.ListAppsRequest(), timeout=c.timeout)).apps]
    apps = [a for a in apps if (not name or a.name == name) and (selector is None or selector.matches(a.labels))]
    if name and not apps:
        raise CliError(f'Error: app "{name}" not found')
    return "---\n".join(manifest_yaml(a) for a in apps).rstrip()


def get(
    c: Client,
    kind: str,
    name: str | None,
    fmt: str,
    app: str | None,
    node: str | None,
    watch: bool,
    selector: Selector | None = None,
) -> None:
    last = ""

    def show() -> None:
        nonlocal last
        if kind == "apps" and fmt == "yaml":
            text = manifests(c, name, selector)
        else:
            text = render(kind, rows(c, kind, name, app, node, selector), fmt)
        if text != last:
            if last and fmt in ("table", "wide"):
                click.echo()
            click.echo(text)
            last = text

    if watch:
        watch_changes(c, show)
    else:
        show()


def watch_changes(c: Client, show: Callable[[], None]) -> None:
    """show() now and after every change the scheduler reports (its Watch stream); once a
    second against a scheduler without Watch. Runs until Ctrl-C; reconnects when the stream
    breaks (a scheduler restart), showing again then, since changes may have been missed."""
    lost = False
    while True:
        try:
            for _ in c.watch():
                lost = False
                show()
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                while True:
                    show()
                    time.sleep(1.0)
            problem = describe_rpc_error(e, ",".join(c.addresses))
            if e.code() not in RETRYABLE:
                raise CliError(problem) from None
            if not lost:
                click.echo(f"watch: {problem}; retrying every second", err=True)
            lost = True
        time.sleep(1.0)


def top(c: Client, kind: str, app: str | None, node: str | None, fmt: str) -> None:
    """Usage now, like `kubectl top`: the scheduler asks each node's agent (sampling CPU for 0.5 s)."""
    resp = c.call(lambda s: s.Top(api.TopRequest(node=node or "", app=app or ""), timeout=c.timeout))
    for n in resp.nodes:
        if n.error:  # its instances are missing from the list: say why
            click.echo(f"warning: node {n.node}: {n.error}", err=True)
    if kind == "nodes":
        rows = [usage_node_row(n) for n in resp.nodes]
    else:
        rows = [usage_instance_row(i) for i in resp.instances]
    if not rows and fmt in ("table", "wide"):
        click.echo(f"No running {kind} found.")
        return
    click.echo(render(f"top-{kind}", rows, fmt))


def describe(c: Client, kind: str, name: str) -> str:
    row = rows(c, plural(kind), name, None, None)[0]
    lines = [f"{k}: {_plain(v)}" for k, v in row.items()]
    if kind == "app":
        lines += _app_details(c, name)
    request = api.ListEventsRequest(limit=15, object=name, with_instances=kind == "app")
    mine = c.call(lambda s: s.ListEvents(request, timeout=c.timeout)).events
    lines.append("events:" if mine else "events: <none>")
    for e in mine:
        lines.append(f"  {e.time.ToJsonString()}  {e.type:<7}  {e.reason:<14}  {e.object}: {e.message}")
    return "\n".join(lines)


def _app_details(c: Client, name: str) -> list[str]:
    """The spec as its manifest would say it, and the app's instances, as `kubectl describe` does."""
    info = c.call(lambda s: s.GetApp(api.GetAppRequest(name=name), timeout=c.timeout))
    spec = manifest(info.app.spec)["spec"]
    lines = ["spec:", *("  " + line for line in yaml.safe_dump(spec, sort_keys=False, width=1000).splitlines())]
    req = api.ListInstancesRequest(app=name)
    insts = [instance_row(i) for i in c.call(lambda s: s.ListInstances(req, timeout=c.timeout)).instances]
    lines.append("instances:" if insts else "instances: <none>")
    lines += ["  " + line for line in render("instances", insts, "table").splitlines()] if insts else []
    return lines


def _plain(v: object) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items()) or "<none>"
    return "<none>" if v is None else str(v)


def delete(c: Client, names: list[str]) -> None:
    for n in names:
        c.call(lambda s, n=n: s.DeleteApp(api.DeleteAppRequest(name=n), timeout=c.timeout))  # type: ignore[misc]
        click.echo(f"app/{n} deleted")


def delete_nodes(c: Client, names: list[str]) -> None:
    for n in names:
        c.call(lambda s, n=n: s.DeleteNode(api.DeleteNodeRequest(name=n), timeout=c.timeout))  # type: ignore[misc]
        click.echo(f"node/{n} deleted")


def scale(c: Client, app: str, replicas: int) -> None:
    c.call(lambda s: s.Scale(api.ScaleRequest(name=app, replicas=replicas), timeout=c.timeout))
    click.echo(f"app/{app} scaled to {replicas}")


def set_schedulable(c: Client, node: str, schedulable: bool) -> None:
    req = api.SetSchedulableRequest(name=node, schedulable=schedulable)
    c.call(lambda s: s.SetSchedulable(req, timeout=c.timeout))
    click.echo(f"node/{node} {'uncordoned' if schedulable else 'cordoned'}")


def drain(c: Client, node: str, timeout: str, dry_run: bool = False) -> None:
    try:
        timeout_ms = parse_duration(timeout)
    except QuantityError as e:
        raise CliError(f"--timeout: {e}") from None
    req = api.DrainRequest(name=node, timeout_ms=timeout_ms, dry_run=dry_run)
    if dry_run:
        for p in c.call(lambda s: list(s.Drain(req, timeout=c.timeout * 3))):
            if not p.done:
                click.echo(p.message)
        return

    def stream(stub: OrchStub) -> api.DrainProgress:
        last = api.DrainProgress()
        for p in stub.Drain(req, timeout=timeout_ms / 1000 + 60):
            c.output_started = True
            if not p.done:
                click.echo(p.message + (f" (blocked: {p.blocked})" if p.blocked else ""), err=True)
            last = p
        return last

    result = c.call(stream)
    if result.forced:
        raise CliError(f"node/{node}: drain timed out after {timeout}; the remaining instances were stopped")
    click.echo(f"node/{node} drained")


def since_of(since: str, since_time: str, now: float) -> float:
    """--since 5m or --since-time RFC 3339 (as kubectl's) as unix seconds; 0 for neither."""
    if since and since_time:
        raise UsageError("--since or --since-time, not both")
    if since:
        try:
            return now - parse_duration(since) / 1000
        except QuantityError as e:
            raise UsageError(f"--since: {e}") from None
    if since_time:
        try:
            when = datetime.fromisoformat(since_time.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:  # RFC 3339 always says which zone
            raise UsageError(f'--since-time: "{since_time}" is not an RFC 3339 time (2026-11-29T14:00:00Z)')
        return when.timestamp()
    return 0.0


def logs(
    c: Client, name: str, follow: bool, tail: int, timestamps: bool, since: float = 0.0, previous: bool = False
) -> None:
    follow = follow and not previous  # the previous incarnation has ended: nothing more will come
    req = pb.LogsRequest(name=name, follow=follow, tail=tail, since=since, previous=previous)

    def stream(stub: OrchStub) -> None:
        # No deadline when following: it ends with the instance or Ctrl-C.
        for e in stub.Logs(req, timeout=None if follow else c.timeout * 6):
            c.output_started = True
            prefix = f"[{e.instance}] " if e.instance != name else ""
            stamp = f"{e.time} " if timestamps else ""
            click.echo(f"{prefix}{stamp}{e.text}", err=e.stream == "stderr")

    c.call(stream)


def events(c: Client, watch: bool, limit: int) -> None:
    seen: set[tuple[int, str, str]] = set()

    def show() -> None:
        evs = c.call(lambda s: s.ListEvents(api.ListEventsRequest(limit=limit), timeout=c.timeout)).events
        for e in evs:
            key = (e.time.ToNanoseconds(), e.object, e.reason)
            if key not in seen:
                seen.add(key)
                click.echo(
                    f"{e.time.ToJsonString()}  {e.type:<7}  {e.kind:<8}  {e.object:<24}  {e.reason:<14}  {e.message}"
                )

    if watch:
        watch_changes(c, show)
    else:
        show()


def parse_resources(text: str, what: str) -> pb.Resources | None:
    if not text:
        return None
    res = pb.Resources()
    for item in text.split(","):
        key, sep, value = item.partition("=")
        try:
            if key == "cpu" and sep:
                res.cpu_millis = parse_cpu(value)
            elif key == "memory" and sep:
                res.memory_bytes = parse_memory(value)
            elif key == "pids" and sep and value.isdigit():
                res.pids = int(value)
            else:
                raise CliError(f'--{what}: "{item}" is not cpu=..., memory=... or pids=N')
        except QuantityError as e:
            raise CliError(f"--{what} {key}: {e}") from None
    return res


def parse_labels(labels: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f'--label "{item}" is not KEY=VALUE')
        out[key] = value
    return out


def agent_config(
    name: str,
    state_dir: Path,
    schedulers: tuple[str, ...],
    labels: Sequence[str],
    capacity: str,
    reserve: str,
    bridge: str,
    subnet: str,
    metrics_listen: str,
    cgroup_parent: str = "",
    listen: str = "127.0.0.1:0",
    *,
    userns_range: str = "",
    publish_address: str = "",
    host_port_range: str = "",
    tls: Credentials | None = None,
    default_pids_limit: int | None = None,
    seccomp_profile: Path | None = None,
    cluster_domain: str = "orch",
    resolv_conf: Path = Path("/etc/resolv.conf"),
    node_ip: str = "",
    allow_host_paths: Sequence[str] = (),
) -> AgentConfig:
    from node.agent import AgentConfig
    from node.dns import DomainError, check_domain
    from node.network import ConfigError, PortRange
    from node.runtime.seccomp import DEFAULT_PROFILE, SeccompError, check_profile
    from node.runtime.security import CAPS, DEFAULT_CAPS
    from node.runtime.userns import IdRange
    from node.worker import DEFAULT_PIDS_LIMIT

    if subnet and not bridge:
        raise CliError("--subnet needs --bridge (the bridge that carries the subnet's gateway)")
    for option, value in (("--subnet", subnet), ("--node-ip", node_ip)):
        try:
            if value:
                (ipaddress.IPv4Network if option == "--subnet" else ipaddress.IPv4Address)(value)
        except ValueError as e:
            raise CliError(f"{option} {value!r}: {e}") from None
    try:
        userns_ids = IdRange.parse(userns_range) if userns_range else IdRange()
    except ValueError as e:
        raise CliError(f"--userns-range: {e}") from None
    if publish_address:
        try:
            ipaddress.IPv4Address(publish_address)
        except ValueError:
            raise CliError(f'--publish-address "{publish_address}" is not an IPv4 address') from None
    try:
        port_range = PortRange.parse(host_port_range) if host_port_range else PortRange()
    except ConfigError as e:
        raise CliError(f"--host-port-range: {e}") from None
    try:
        cluster_domain = check_domain(cluster_domain)
    except DomainError as e:
        raise CliError(f"--cluster-domain: {e}") from None
    try:  # compiled for the default and for every capability: a bad profile fails now, not at a start
        check_profile(seccomp_profile or DEFAULT_PROFILE, [DEFAULT_CAPS, CAPS])
    except SeccompError as e:
        raise CliError(f"--seccomp-profile: {e}") from None
    return AgentConfig(
        name=name,
        state_dir=state_dir.resolve(),
        schedulers=schedulers,
        labels=parse_labels(labels),
        capacity=parse_resources(capacity, "capacity"),
        reserve=parse_resources(reserve, "reserve") or pb.Resources(),
        bridge=bridge,
        subnet=subnet,
        node_ip=node_ip,
        metrics_listen=metrics_listen,
        cgroup=cgroup_parent,
        listen=listen,
        userns_ids=userns_ids,
        publish_address=publish_address,
        host_port_range=port_range,
        tls=tls,
        default_pids_limit=DEFAULT_PIDS_LIMIT if default_pids_limit is None else default_pids_limit,
        seccomp_profile=(seccomp_profile or DEFAULT_PROFILE).resolve(),
        cluster_domain=cluster_domain,
        resolv_conf=resolv_conf,
        allowed_host_paths=allowed_host_paths(allow_host_paths),
    )


def allowed_host_paths(paths: Sequence[str]) -> tuple[str, ...]:
    """--allow-host-path: absolute, canonical (the scheduler and the node compare them as text)."""
    from orch.volumes import host_path_problem

    out: list[str] = []
    for path in paths:
        canonical = path if path == "/" else path.rstrip("/")
        if (problem := host_path_problem(canonical)) is not None:
            raise CliError(f'--allow-host-path "{path}": {problem}')
        if canonical not in out:
            out.append(canonical)
    return tuple(out)


def versions(c: Client | None, fmt: str) -> None:
    """Like `kubectl version`: the client's, then the server's (and here each agent's)."""
    out: dict[str, object] = {"client": version()}
    if c is not None:
        info = c.call(lambda s: s.Version(api.VersionRequest(), timeout=c.timeout))
        out |= {"scheduler": info.scheduler, "api": info.api, "nodes": dict(sorted(info.nodes.items()))}
    if fmt == "json":
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"Client version: {out['client']}")
    if c is not None:
        click.echo(f"Scheduler version: {out['scheduler']} (API {out['api']})")
        for node, v in sorted(info.nodes.items()):
            click.echo(f"Node {node}: {v or 'unknown'}")


def explain(c: Client, instance: str, fmt: str) -> None:
    """Why INSTANCE is where it is: every node's verdict (filters, then scores) and its events."""
    e = c.call(lambda s: s.Explain(api.ExplainRequest(instance=instance), timeout=c.timeout))
    if fmt == "json":
        nodes = [
            {"node": v.node, "rejected": v.rejected or None, "scores": {s.name: s.value for s in v.scores}}
            for v in e.nodes
        ]
        events = [{"time": ev.time.ToJsonString(), "reason": ev.reason, "message": ev.message} for ev in e.events]
        doc = {"instance": instance, "node": e.instance.node or None, "summary": e.summary, "nodes": nodes}
        moved = {"replaces": move_row(e.instance.replaces), "replacedBy": e.replaced_by or None}
        click.echo(json.dumps(doc | moved | {"avoided": list(e.avoided), "events": events}, indent=2))
        return
    click.echo(f"instance/{instance}: {e.summary}")
    if e.instance.replaces.instance:
        click.echo(move_line(e.instance.replaces))
    if e.replaced_by:
        click.echo(f"replaced by {e.replaced_by}")
    if e.avoided:
        click.echo(f"avoids (this slot kept crashing there): {', '.join(e.avoided)}")
    headers = ["NODE", "", "VERDICT"]
    table_rows = []
    for v in e.nodes:
        verdict = "rejected: " + v.rejected if v.rejected else ", ".join(f"{s.name} {s.value:g}" for s in v.scores)
        table_rows.append([v.node, "*" if v.node == e.instance.node else "", verdict])
    click.echo("nodes, judged now (fitting best first; * its node):")
    click.echo("\n".join("  " + line for line in table(headers, table_rows).splitlines()))
    click.echo("events:" if e.events else "events: <none>")
    for ev in e.events:
        click.echo(f"  {ev.time.ToJsonString()}  {ev.type:<7}  {ev.reason:<14}  {ev.message}")
