"""`orch`: kubectl-like commands against the scheduler, plus the entry points
that run a scheduler (`orch scheduler`), an agent (`orch node`) or a whole
local cluster (`orch up`)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli import commands, completion, config_commands, contexts, logformat, pki_commands, secret_commands
from cli.client import Client, CliError, UsageError, scheduler_addresses
from cli.manifest import ManifestError
from cli.selector import parse_selector
from orch.validation import MAX_REPLICAS

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
OUTPUT = click.Choice(["table", "wide", "json", "yaml"])


def seconds_of(value: str) -> float:
    """A duration option ("30s", "2m") in seconds; a bad one is the user's error, not a traceback."""
    from orch.quantity import QuantityError, parse_duration

    try:
        return parse_duration(value) / 1000
    except QuantityError as e:
        raise click.BadParameter(str(e)) from e


_log_format = "text"  # set by --log-format before the command runs


def _set_log_format(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    global _log_format
    _log_format = value
    return value


def log_format_option(f: Callable[..., None]) -> Callable[..., None]:
    """--log-format text|json for a daemon; setup_logging applies it."""
    return click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        expose_value=False,
        callback=_set_log_format,
        help="json: one JSON object per line (ts, level, logger, msg, error).",
    )(f)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, handlers=[logformat.handler(_log_format)])
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per registry request
    if verbose:  # our own debug lines only; grpc's are noise
        for name in ("scheduler", "node", "cli"):
            logging.getLogger(name).setLevel(logging.DEBUG)


@click.group(context_settings=CONTEXT)
@click.option("--scheduler", "scheduler", metavar="ADDR[,ADDR...]", help="Scheduler address(es), tried in turn.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for each API call.")
@click.option("--tls-dir", metavar="DIR", help="ca.crt, USER.crt and USER.key for mutual TLS ($ORCH_TLS_DIR).")
@click.option("--tls-user", metavar="USER", help="Whose certificate in --tls-dir ($ORCH_TLS_USER; default admin).")
@click.option(
    "--context", "context", metavar="NAME", help="A context of `orch config` ($ORCH_CONTEXT; default: current)."
)
@click.pass_context
def cli(
    ctx: click.Context,
    scheduler: str | None,
    timeout: float,
    tls_dir: str | None,
    tls_user: str | None,
    context: str | None,
) -> None:
    """orch: a small container orchestrator."""
    ctx.obj = contexts.connector(scheduler, timeout, tls_dir, tls_user, context)


def client(ctx: click.Context) -> Client:
    c: Client = ctx.obj()
    return c


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-f", "--filename", "more", multiple=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--dry-run", is_flag=True, help="Validate on the scheduler and show the diff; store nothing.")
@click.option("--wait", is_flag=True, help="Wait until every applied app has all replicas ready.")
@click.option("--wait-timeout", default=300.0, show_default=True, help="Seconds --wait waits.")
@click.pass_context
def apply(
    ctx: click.Context, files: tuple[str, ...], more: tuple[str, ...], dry_run: bool, wait: bool, wait_timeout: float
) -> None:
    """Create or update the apps in FILE(s) (multi-document YAML; - for stdin)."""
    paths = list(files) + list(more)
    if not paths:
        raise UsageError("apply needs a manifest file: orch apply app.yaml")
    commands.apply(client(ctx), paths, dry_run=dry_run, wait=wait, wait_timeout=wait_timeout)


@cli.command()
@click.argument("instance", shell_complete=completion.instances)
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def explain(ctx: click.Context, instance: str, fmt: str) -> None:
    """Why INSTANCE is on its node, Pending, or leaving: each node's verdict and its events."""
    commands.explain(client(ctx), instance, fmt)


@cli.command("completion")
@click.argument("shell", type=click.Choice(completion.SHELLS))
def completion_cmd(shell: str) -> None:
    """Print the shell's completion script: `source <(orch completion bash)` (zsh and fish alike)."""
    click.echo(completion.script(cli, shell))


@cli.command("version")
@click.option("--client", "client_only", is_flag=True, help="Only this CLI's version; ask no server.")
@click.option("-o", "--output", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def version_cmd(ctx: click.Context, client_only: bool, fmt: str) -> None:
    """This CLI's version, the scheduler's and each node agent's."""
    commands.versions(None if client_only else client(ctx), fmt)


@cli.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-f", "--filename", "more", multiple=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.pass_context
def diff(ctx: click.Context, files: tuple[str, ...], more: tuple[str, ...]) -> None:
    """Show what applying the manifests would change. Exit status 0: nothing; 1: changes; 2: error."""
    paths = [*files, *more]
    try:
        if not paths:
            raise UsageError("diff needs a manifest file: orch diff app.yaml")
        changed = commands.diff(client(ctx), paths)
    except ManifestError as e:
        raise CliError("\n".join(e.problems), code=2) from e
    except CliError as e:
        raise CliError(str(e), code=2) from e
    sys.exit(1 if changed else 0)


@cli.command()
@click.argument("kind", type=click.Choice(["apps", "app", "nodes", "node", "instances", "instance", "inst"]))
@click.argument("name", required=False, shell_complete=completion.by_kind)
@click.option("-o", "--output", "fmt", type=OUTPUT, default="table", show_default=True)
@click.option("--app", "app", help="instances: only this app's.")
@click.option("--node", "node", help="instances: only those on this node.")
@click.option(
    "-l",
    "--selector",
    default="",
    metavar="K=V,K!=V,K,!K",
    help="Only objects whose labels match (instances: their app's).",
)
@click.option("-w", "--watch", is_flag=True, help="Print again whenever something changes.")
@click.pass_context
def get(
    ctx: click.Context,
    kind: str,
    name: str | None,
    fmt: str,
    app: str | None,
    node: str | None,
    selector: str,
    watch: bool,
) -> None:
    """List apps, nodes or instances (`get apps -o yaml`: manifests that apply again)."""
    wanted = parse_selector(selector) if selector else None
    commands.get(client(ctx), commands.plural(kind), name, fmt, app=app, node=node, watch=watch, selector=wanted)


@cli.command()
@click.argument("kind", type=click.Choice(["nodes", "node", "instances", "instance"]))
@click.option("--app", "app", help="instances: only this app's.")
@click.option("--node", "node", help="Only this node (and its instances).")
@click.option("-o", "--output", "fmt", type=OUTPUT, default="table", show_default=True)
@click.pass_context
def top(ctx: click.Context, kind: str, app: str | None, node: str | None, fmt: str) -> None:
    """CPU and memory in use now, per node or per instance (read from the cgroups)."""
    commands.top(client(ctx), commands.plural(kind), app, node, fmt)


@cli.command()
@click.argument("kind", type=click.Choice(["app", "node", "instance"]))
@click.argument("name", shell_complete=completion.by_kind)
@click.pass_context
def describe(ctx: click.Context, kind: str, name: str) -> None:
    """Show one object in detail, with its recent events."""
    click.echo(commands.describe(client(ctx), kind, name))


@cli.command()
@click.argument("args", nargs=-1, required=True)
@click.option("-f", "--filename", "files", multiple=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.pass_context
def delete(ctx: click.Context, args: tuple[str, ...], files: tuple[str, ...]) -> None:
    """Delete apps: `orch delete app NAME...` or `orch delete FILE...`; forget nodes that left
    (NotReady), freeing their subnets: `orch delete node NAME...`."""
    if args and args[0] == "node":
        if not args[1:]:
            raise CliError("delete node needs a name: orch delete node NAME")
        return commands.delete_nodes(client(ctx), list(args[1:]))
    if args and args[0] == "app":
        names = list(args[1:])
        if not names:
            raise UsageError("delete app needs a name: orch delete app NAME")
    else:
        names = [a.spec.name for a in commands.load(list(args) + list(files))]
    commands.delete(client(ctx), names)


@cli.command()
@click.argument("app", shell_complete=completion.apps)
@click.argument("replicas", type=click.IntRange(0, MAX_REPLICAS))
@click.pass_context
def scale(ctx: click.Context, app: str, replicas: int) -> None:
    """Set an app's replica count."""
    commands.scale(client(ctx), app, replicas)


@cli.group()
def rollout() -> None:
    """Follow, list and undo an app's rollouts (its generations), as kubectl rollout does."""


@rollout.command("status")
@click.argument("app", shell_complete=completion.apps)
@click.option(
    "--timeout",
    default="0s",
    show_default=True,
    metavar="DURATION",
    callback=lambda _ctx, _param, value: seconds_of(value),
    help="Give up after this long (0s: wait until done or stuck).",
)
@click.pass_context
def rollout_status(ctx: click.Context, app: str, timeout: float) -> None:
    """Follow APP's rollout until it is done.

    Exit 0 once it is done; 1 when it is stuck past its progressDeadline or --timeout passes first."""
    from cli import rollout as rollouts

    rollouts.status(client(ctx), app, timeout)


@rollout.command("history")
@click.argument("app", shell_complete=completion.apps)
@click.option("--generation", type=click.IntRange(min=1), default=None, help="Print that generation's manifest.")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def rollout_history(ctx: click.Context, app: str, generation: int | None, fmt: str) -> None:
    """List APP's last 10 generations: when, and what changed."""
    from cli import rollout as rollouts

    rollouts.history(client(ctx), app, generation or 0, fmt)


@rollout.command("undo")
@click.argument("app", shell_complete=completion.apps)
@click.option(
    "--to-generation", "to", type=click.IntRange(min=1), default=None, help="Default: the one before the current."
)
@click.pass_context
def rollout_undo(ctx: click.Context, app: str, to: int | None) -> None:
    """Roll APP back to an earlier generation's template.

    The template is applied again as a new generation, as kubectl does; replicas, labels,
    service and progressDeadline stay as they are."""
    from cli import rollout as rollouts

    rollouts.undo(client(ctx), app, to or 0)


@cli.command()
@click.argument("node", shell_complete=completion.nodes)
@click.pass_context
def cordon(ctx: click.Context, node: str) -> None:
    """Mark a node unschedulable (its instances keep running)."""
    commands.set_schedulable(client(ctx), node, False)


@cli.command()
@click.argument("node", shell_complete=completion.nodes)
@click.pass_context
def uncordon(ctx: click.Context, node: str) -> None:
    """Make a node schedulable again."""
    commands.set_schedulable(client(ctx), node, True)


@cli.command()
@click.argument("name", shell_complete=completion.apps_or_instances)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines.")
@click.option("--tail", default=-1, show_default=True, help="Only the last N lines (-1: all).")
@click.option("--timestamps", is_flag=True, help="Prefix each line with its RFC 3339 time.")
@click.option("--since", default="", metavar="DURATION", help="Only lines newer than this (5s, 2m, 3h).")
@click.option("--since-time", default="", metavar="RFC3339", help="Only lines at or after this time.")
@click.option(
    "-p", "--previous", is_flag=True, help="The previous incarnation's output, of an instance that restarted."
)
@click.pass_context
def logs(
    ctx: click.Context,
    name: str,
    follow: bool,
    tail: int,
    timestamps: bool,
    since: str,
    since_time: str,
    previous: bool,
) -> None:
    """Print an instance's output, or every instance's of an APP (prefixed with the instance)."""
    start = commands.since_of(since, since_time, time.time())
    commands.logs(client(ctx), name, follow=follow, tail=tail, timestamps=timestamps, since=start, previous=previous)


@cli.command("exec")
@click.argument("instance", shell_complete=completion.instances)
@click.argument("command", nargs=-1, required=True)
@click.option("-i", "--stdin", is_flag=True, help="Pass stdin to the command.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (raw mode here, resizes forwarded).")
@click.pass_context
def exec_cmd(ctx: click.Context, instance: str, command: tuple[str, ...], stdin: bool, tty: bool) -> None:
    """Run a command in a running instance: orch exec INSTANCE [-i] [-t] -- CMD [ARG...].

    Exits with the command's code; 121 no such instance, 122 not running, 123 its node cannot
    be reached, 125 another orch error."""
    from cli.exec import run_exec

    sys.exit(run_exec(client(ctx), instance, list(command), stdin=stdin, tty=tty))


@cli.command()
@click.argument("node", shell_complete=completion.nodes)
@click.option("--timeout", "timeout", default="5m", show_default=True, help="Then stop what is left anyway.")
@click.option("--dry-run", is_flag=True, help="Print the plan: what moves where, in which steps, what is blocked.")
@click.pass_context
def drain(ctx: click.Context, node: str, timeout: str, dry_run: bool) -> None:
    """Cordon NODE and move its instances elsewhere, replacement first."""
    commands.drain(client(ctx), node, timeout, dry_run)


@cli.command()
@click.option("-w", "--watch", is_flag=True)
@click.option("--limit", default=50, show_default=True)
@click.pass_context
def events(ctx: click.Context, watch: bool, limit: int) -> None:
    """Recent scheduling decisions and node changes."""
    commands.events(client(ctx), watch=watch, limit=limit)


@cli.command()
@click.option("--nodes", type=click.IntRange(1, 50), help="Agents, all in this network namespace [default: 3].")
@click.option(
    "--hosts",
    type=click.IntRange(1, 20),
    help="Instead of --nodes: N lab hosts (network namespaces on a lab bridge), each with an agent; "
    "etcd members and schedulers on different hosts (docs/cli.md).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where etcd data, agent state and cluster.json go (default ~/.local/state/orch/up).",
)
@click.option("--port", default=7070, show_default=True, help="Scheduler port (0 = any free port).")
@click.option("--lease-ttl", default=1, show_default=True, help="Node lease TTL in seconds.")
@click.option(
    "--schedulers", type=click.IntRange(1, 5), help="Schedulers (one leads) [default: 1; 2 with --hosts 2 or more]."
)
@click.option(
    "--cidr",
    default="",
    help="The scheduler's cluster CIDR (each node gets a /24 of it); with --hosts its first half, and the lab "
    "network its last /24 (default 10.88.0.0/16, or $ORCH_UP_CIDR).",
)
@click.option(
    "--service-cidr",
    default="",
    metavar="CIDR",
    help="Virtual IPs of apps with a service, apart from --cidr (default 10.96.0.0/16).",
)
@click.option(
    "--no-tls", is_flag=True, help="Plaintext gRPC and etcd instead of mutual TLS (certificates in STATE/pki)."
)
@click.option(
    "--allow-host-path",
    "allow_host_paths",
    multiple=True,
    metavar="DIR",
    help="Every node lets hostPath volumes use DIR and below (repeatable; orch node --allow-host-path).",
)
@log_format_option
@click.option("-v", "--verbose", is_flag=True)
def up(
    nodes: int | None,
    hosts: int | None,
    state_dir: Path | None,
    port: int,
    lease_ttl: int,
    schedulers: int | None,
    cidr: str,
    service_cidr: str,
    no_tls: bool,
    allow_host_paths: tuple[str, ...],
    verbose: bool,
) -> None:
    """Run a local cluster in the foreground: etcd, schedulers and agents. Ctrl-C stops it."""
    from cli.up import run_cluster

    if nodes is not None and hosts is not None:
        raise UsageError("orch up: --nodes or --hosts, not both (--hosts runs one agent per host)")
    if schedulers is None:
        schedulers = 2 if hosts is not None and hosts >= 2 else 1
    setup_logging(verbose)
    run_cluster(
        nodes=nodes or 3,
        state_dir=state_dir,
        port=port,
        lease_ttl=lease_ttl,
        cidr=cidr,
        service_cidr=service_cidr,
        schedulers=schedulers,
        tls=not no_tls,
        hosts=hosts or 0,
        allow_host_paths=commands.allowed_host_paths(allow_host_paths),
    )


def tls_options(f: Callable[..., None]) -> Callable[..., None]:
    """--tls-ca/--tls-cert/--tls-key: mutual TLS (all three, or none for plaintext)."""
    # Applied in reverse, so --help lists them as ca, cert, key.
    for name, what in (
        ("key", "this component's private key"),
        ("cert", "its certificate"),
        ("ca", "the cluster's CA"),
    ):
        f = click.option(f"--tls-{name}", default="", metavar="FILE", help=f"PEM file: {what}.")(f)
    return f


def etcd_tls_options(f: Callable[..., None]) -> Callable[..., None]:
    """--etcd-ca/--etcd-cert/--etcd-key: the scheduler's client certificate for etcd."""
    for name, what in (("key", "the etcd client key"), ("cert", "the etcd client certificate"), ("ca", "etcd's CA")):
        f = click.option(f"--etcd-{name}", default="", metavar="FILE", help=f"PEM file: {what}.")(f)
    return f


@cli.command("scheduler")
@click.option("--listen", default="127.0.0.1:7070", show_default=True)
@click.option("--etcd", default="127.0.0.1:2379", show_default=True, help="etcd endpoints, [https://]HOST:PORT,...")
@click.option("--prefix", default="/orch/", show_default=True)
@click.option("--lease-ttl", default=1, show_default=True, help="Node lease TTL in seconds.")
@click.option("--leader-ttl", default=3, show_default=True, help="Leader lease TTL in seconds.")
@click.option(
    "--restart-grace",
    default="30s",
    show_default=True,
    metavar="DURATION",
    callback=lambda _ctx, _param, value: seconds_of(value),
    help="How long a node whose agent is restarting (SIGTERM) keeps its instances before they are replaced.",
)
@click.option(
    "--cluster-cidr",
    default="10.88.0.0/16",
    show_default=True,
    help="Container addresses: each node gets a subnet of it; refused where it overlaps a node's host networks.",
)
@click.option(
    "--node-subnet-size", default=24, show_default=True, metavar="PREFIX", help="Prefix length of each node's subnet."
)
@click.option("--metrics-listen", default="", help="host:port for /metrics.")
@click.option(
    "--service-cidr",
    default="10.96.0.0/16",
    show_default=True,
    metavar="CIDR",
    help="Virtual IPs of apps with a service (docs/networking.md); apart from the containers' addresses.",
)
@click.option(
    "--dashboard-listen",
    default="",
    metavar="HOST:PORT",
    help="Serve the read-only web dashboard there (no login: keep it on loopback).",
)
@click.option(
    "--secret-key-file",
    default="",
    metavar="PATH",
    help="Keys that seal secrets in etcd, one `NAME BASE64` per line, the first seals (`orch secret keygen`); "
    "without it secrets are disabled.",
)
@click.option("--id", "identity", default="", help="Name of this scheduler (default host-pid).")
@click.option(
    "--etcd-page-size",
    default=2000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Keys per etcd range read: a big cluster is read in pages of this many.",
)
@tls_options
@etcd_tls_options
@click.option("--insecure", is_flag=True, help="Allow plaintext gRPC without TLS files (anyone is admin).")
@click.option("--insecure-etcd", is_flag=True, help="Allow plaintext etcd without a client certificate.")
@log_format_option
@click.option("-v", "--verbose", is_flag=True)
def scheduler_cmd(
    listen: str,
    etcd: str,
    prefix: str,
    lease_ttl: int,
    leader_ttl: int,
    restart_grace: float,
    cluster_cidr: str,
    node_subnet_size: int,
    metrics_listen: str,
    service_cidr: str,
    dashboard_listen: str,
    secret_key_file: str,
    identity: str,
    etcd_page_size: int,
    tls_ca: str,
    tls_cert: str,
    tls_key: str,
    etcd_ca: str,
    etcd_cert: str,
    etcd_key: str,
    insecure: bool,
    insecure_etcd: bool,
    verbose: bool,
) -> None:
    """Run a scheduler (production entry point)."""
    from cli.transport import etcd_credentials, scheduler_credentials
    from scheduler.server import SchedulerConfig, main
    from scheduler.services import ServiceCidrError, parse_service_cidr

    setup_logging(verbose)
    try:
        parse_service_cidr(service_cidr)
    except ServiceCidrError as e:
        raise CliError(f"orch scheduler: --service-cidr: {e}") from None
    endpoints = tuple(e.strip() for e in etcd.split(",") if e.strip())
    main(
        SchedulerConfig(
            listen=listen,
            etcd=endpoints,
            prefix=prefix,
            lease_ttl=lease_ttl,
            leader_ttl=leader_ttl,
            restart_grace=restart_grace,
            cluster_cidr=cluster_cidr,
            node_subnet_size=node_subnet_size,
            metrics_listen=metrics_listen,
            service_cidr=service_cidr,
            dashboard_listen=dashboard_listen,
            secret_key_file=secret_key_file,
            identity=identity,
            etcd_page=etcd_page_size,
            tls=scheduler_credentials(tls_ca, tls_cert, tls_key, listen, insecure),
            etcd_tls=etcd_credentials(etcd_ca, etcd_cert, etcd_key, endpoints, insecure_etcd),
        )
    )


@cli.command("node")
@click.option("--name", required=True, help="Node name (unique in the cluster).")
@click.option("--state-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--capacity", default="", metavar="cpu=2,memory=4Gi,pids=4096", help="Override detected capacity.")
@click.option("--reserve", default="", metavar="cpu=100m,memory=256Mi", help="Kept back from allocatable.")
@click.option(
    "--bridge",
    default="",
    help="Bridge for container networking; its subnet comes from the scheduler (empty: loopback only).",
)
@click.option(
    "--subnet",
    default="",
    help="Insist on this subnet of the cluster CIDR, e.g. 10.88.1.0/24 (default: the scheduler's pick).",
)
@click.option(
    "--node-ip",
    default="",
    metavar="ADDR",
    help="Where other nodes route this node's containers (default: --listen's address, else the one "
    "towards the scheduler).",
)
@click.option("--metrics-listen", default="", help="host:port for /metrics.")
@click.option("--listen", default="127.0.0.1:0", show_default=True, help="host:port of the agent's API (logs).")
@click.option("--cgroup-parent", default="", help="cgroup of this node's containers (default orch/NAME).")
@click.option(
    "--publish-address",
    default="",
    metavar="ADDR",
    help="Publish hostPorts only on this local address (default: every local address but loopback).",
)
@click.option(
    "--host-port-range",
    default="1024-65535",
    show_default=True,
    metavar="FIRST-LAST",
    help="hostPorts this node publishes; ports the host listens on are refused too.",
)
@click.option(
    "--userns-range",
    default="",
    metavar="FIRST:COUNT",
    help="Host ids for hostUsers: false containers, 65536 each (default 1073741824:67108864).",
)
@click.option(
    "--default-pids-limit",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="pids.max of containers whose app sets no resources.pids (default 4096; 0: unlimited).",
)
@click.option(
    "--seccomp-profile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="seccomp profile in Docker's JSON format (default: orch's, node/runtime/seccomp/default.json).",
)
@click.option(
    "--cluster-domain",
    default="orch",
    show_default=True,
    metavar="DOMAIN",
    help="DNS domain of the cluster's names, answered on the bridge gateway (<app>.DOMAIN).",
)
@click.option(
    "--resolv-conf",
    default="/etc/resolv.conf",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The node's resolvers: names outside the cluster domain are forwarded to them.",
)
@click.option(
    "--allow-host-path",
    "allow_host_paths",
    multiple=True,
    metavar="DIR",
    help="hostPath volumes may use DIR and what is below it (repeatable; default: none).",
)
@click.option("--cleanup", is_flag=True, help="Stop and remove every container and network of this node, then exit.")
@tls_options
@click.option("--insecure", is_flag=True, help="Allow plaintext gRPC without TLS files (anyone can pose as scheduler).")
@log_format_option
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def node_cmd(
    ctx: click.Context,
    name: str,
    state_dir: Path,
    labels: tuple[str, ...],
    capacity: str,
    reserve: str,
    bridge: str,
    subnet: str,
    node_ip: str,
    metrics_listen: str,
    listen: str,
    cgroup_parent: str,
    publish_address: str,
    host_port_range: str,
    userns_range: str,
    default_pids_limit: int | None,
    seccomp_profile: Path | None,
    cluster_domain: str,
    resolv_conf: Path,
    allow_host_paths: tuple[str, ...],
    cleanup: bool,
    tls_ca: str,
    tls_cert: str,
    tls_key: str,
    insecure: bool,
    verbose: bool,
) -> None:
    """Run a node agent (production entry point)."""
    from cli.transport import node_credentials
    from node.agent import cleanup as cleanup_node
    from node.agent import main

    setup_logging(verbose)
    # --cleanup talks to nobody: it needs no certificate.
    tls = None if cleanup else node_credentials(tls_ca, tls_cert, tls_key, name, insecure)
    schedulers = tuple(scheduler_addresses(ctx.parent.params.get("scheduler") if ctx.parent else None))
    config = commands.agent_config(
        name,
        state_dir,
        schedulers,
        labels,
        capacity,
        reserve,
        bridge,
        subnet,
        metrics_listen,
        cgroup_parent,
        listen,
        userns_range=userns_range,
        publish_address=publish_address,
        host_port_range=host_port_range,
        tls=tls,
        default_pids_limit=default_pids_limit,
        seccomp_profile=seccomp_profile,
        cluster_domain=cluster_domain,
        resolv_conf=resolv_conf,
        node_ip=node_ip,
        allow_host_paths=allow_host_paths,
    )
    if cleanup:
        cleanup_node(config)
        return
    main(config)


cli.add_command(pki_commands.pki)
cli.add_command(config_commands.config)
cli.add_command(secret_commands.secret)


def main(argv: list[str] | None = None) -> Any:
    try:
        return cli.main(args=argv, prog_name="orch", standalone_mode=False)
    except ManifestError as e:
        click.echo("\n".join(e.problems), err=True)
        click.echo("nothing was applied", err=True)
        sys.exit(1)
    except CliError as e:
        click.echo(str(e), err=True)
        sys.exit(e.code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # a bug: say so in one line; ORCH_DEBUG=1 shows the traceback
        if os.environ.get("ORCH_DEBUG"):
            raise
        click.echo(f"orch: internal error: {type(e).__name__}: {e} (ORCH_DEBUG=1 shows the traceback)", err=True)
        sys.exit(3)
