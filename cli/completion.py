"""Shell completion (`orch completion bash|zsh|fish`): click completes commands and flags;
the functions here complete apps, nodes and instances by asking the scheduler, quickly and
quietly (no cluster reachable: no names, never an error in the user's shell)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import click
from click.shell_completion import CompletionItem, get_completion_class

from cli.client import Client
from cli.contexts import connector
from orch.v1 import api_pb2 as api

TIMEOUT = 1.0  # s: a completion that waits longer is worse than none
SHELLS = ("bash", "zsh", "fish")


def script(group: click.Group, shell: str) -> str:
    """The shell's completion script: source it (e.g. `source <(orch completion bash)`)."""
    cls = get_completion_class(shell)
    if cls is None:
        raise click.BadParameter(f"{shell}: one of {', '.join(SHELLS)}")
    return cls(group, {}, "orch", "_ORCH_COMPLETE").source()


def _names(ctx: click.Context, list_names: Callable[[Client], list[str]], incomplete: str) -> list[CompletionItem]:
    # While completing, click parses the line but runs no callback: connect from the options.
    p = ctx.find_root().params
    connect = connector(p.get("scheduler"), TIMEOUT, p.get("tls_dir"), p.get("tls_user"), p.get("context"))
    with contextlib.suppress(Exception):  # nothing to offer beats a traceback in a shell
        c = connect()
        c.timeout = TIMEOUT
        return [CompletionItem(n) for n in sorted(list_names(c)) if n.startswith(incomplete)]
    return []


def _apps(c: Client) -> list[str]:
    return [a.app.spec.name for a in c.call(lambda s: s.ListApps(api.ListAppsRequest(), timeout=TIMEOUT)).apps]


def _nodes(c: Client) -> list[str]:
    return [n.node.name for n in c.call(lambda s: s.ListNodes(api.ListNodesRequest(), timeout=TIMEOUT)).nodes]


def _instances(c: Client) -> list[str]:
    req = api.ListInstancesRequest()
    return [i.name for i in c.call(lambda s: s.ListInstances(req, timeout=TIMEOUT)).instances]


def apps(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, _apps, incomplete)


def nodes(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, _nodes, incomplete)


def instances(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, _instances, incomplete)


def apps_or_instances(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _names(ctx, lambda c: _apps(c) + _instances(c), incomplete)


def by_kind(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """NAME after KIND (`get`, `describe`): names of that kind."""
    kind = str(ctx.params.get("kind") or "")
    lister = {"app": _apps, "apps": _apps, "node": _nodes, "nodes": _nodes}.get(kind, _instances)
    return _names(ctx, lister, incomplete)
