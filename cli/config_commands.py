"""`orch config`: named clusters (contexts), as `kubectl config` (cli/contexts.py holds them)."""

from __future__ import annotations

import click

from cli import contexts
from cli.client import CliError, UsageError

__all__ = ["config"]


@click.group()
def config() -> None:
    """Named clusters: set-context, use-context, get-contexts, current-context, delete-context."""


@config.command("get-contexts")
def get_contexts() -> None:
    """List the contexts; * marks the current one."""
    cfg = contexts.load()
    if not cfg.contexts:
        click.echo(f"No contexts in {contexts.config_path()} (orch config set-context NAME --scheduler ADDR).")
        return
    rows = [("CURRENT", "NAME", "SCHEDULER", "TLS DIR", "USER")]
    rows += [("*" if c.name == cfg.current else "", c.name, c.scheduler, c.tls_dir, c.tls_user) for c in cfg.contexts]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@config.command("current-context")
def current_context() -> None:
    cfg = contexts.load()
    if not cfg.current:
        raise CliError("no current context (orch config use-context NAME)")
    click.echo(cfg.current)


@config.command("use-context")
@click.argument("name")
def use_context(name: str) -> None:
    """Make NAME the context used when no flag or variable says otherwise."""
    cfg = contexts.load()
    if cfg.get(name) is None:
        known = ", ".join(c.name for c in cfg.contexts) or "none"
        raise CliError(f'no context "{name}" (known: {known}); orch config set-context {name} --scheduler ADDR')
    contexts.save(contexts.Config(name, cfg.contexts))
    click.echo(f'Switched to context "{name}".')


@config.command("set-context")
@click.argument("name")
@click.option("--scheduler", metavar="ADDR[,ADDR...]", help="Scheduler address(es).")
@click.option("--tls-dir", metavar="DIR", help="Where ca.crt and USER.crt/.key are.")
@click.option("--tls-user", metavar="USER", help="Whose certificate (default admin).")
@click.option("--use", is_flag=True, help="Also make it the current context.")
def set_context(name: str, scheduler: str | None, tls_dir: str | None, tls_user: str | None, use: bool) -> None:
    """Create or change the context NAME: the options given replace its values, the rest stay."""
    if not name.strip() or name != name.strip():
        raise UsageError(f'context name "{name}": empty or surrounded by spaces')
    cfg = contexts.load()
    existing = cfg.get(name)
    old = existing or contexts.Context(name)
    new = contexts.Context(
        name,
        scheduler if scheduler is not None else old.scheduler,
        tls_dir if tls_dir is not None else old.tls_dir,
        tls_user if tls_user is not None else old.tls_user,
    )
    cfg = cfg.put(new)
    path = contexts.save(contexts.Config(name if use else cfg.current, cfg.contexts))
    click.echo(f'Context "{name}" {"modified" if existing else "created"} in {path}.')


@config.command("delete-context")
@click.argument("name")
def delete_context(name: str) -> None:
    cfg = contexts.load()
    if cfg.get(name) is None:
        raise CliError(f'no context "{name}"')
    contexts.save(cfg.delete(name))
    click.echo(f'Deleted context "{name}".')
