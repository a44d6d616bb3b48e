"""`orch secret create|get|delete|keygen`: secrets that apps read as variables (docs/cli.md#secrets).

Values go to the scheduler and never come back: `get` shows names, keys and the apps using them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from google.protobuf.json_format import MessageToDict

from cli.client import Client, CliError, UsageError
from cli.output import age, table
from orch.files import write_atomic
from orch.v1 import api_pb2 as api

__all__ = ["secret"]

MAX_FILE = 1 << 20  # as the scheduler's limit for a whole secret


def _client(ctx: click.Context) -> Client:
    c: Client = ctx.obj()
    return c


@click.group()
def secret() -> None:
    """Secrets: values apps read as variables (`env: [{name, valueFrom: {secretKeyRef: {name, key}}}]`),
    stored encrypted in etcd, never shown again."""


@secret.command("create")
@click.argument("name")
@click.option("--from-literal", "literals", multiple=True, metavar="KEY=VALUE", help="A key and its value (repeat).")
@click.option("--from-file", "files", multiple=True, metavar="[KEY=]PATH", help="A key (default: the file's name) "
              "whose value is the file's content (repeat).")  # fmt: skip
@click.option("--replace", is_flag=True, help="Change an existing secret's data (new starts see it).")
@click.pass_context
def create(ctx: click.Context, name: str, literals: tuple[str, ...], files: tuple[str, ...], replace: bool) -> None:
    """Create secret NAME from literals and files."""
    data: dict[str, bytes] = {}
    for item in literals:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--from-literal {item!r}: expected KEY=VALUE")
        _add(data, key, value.encode(), f"--from-literal {key}")
    for item in files:
        key, eq, path = item.partition("=") if "=" in item else ("", "", item)
        key = key or os.path.basename(path)
        _add(data, key, _read(path), f"--from-file {item}")
    if not data:
        raise UsageError("orch secret create: give --from-literal KEY=VALUE or --from-file [KEY=]PATH")
    request = api.CreateSecretRequest(name=name, data=data, replace=replace)
    made = _client(ctx).call(lambda stub: stub.CreateSecret(request))
    click.echo(f"secret/{made.name} {'configured' if replace else 'created'} ({len(made.keys)} keys)")


def _add(data: dict[str, bytes], key: str, value: bytes, where: str) -> None:
    if key in data:
        raise UsageError(f"{where}: key {key!r} given twice")
    data[key] = value


def _read(path: str) -> bytes:
    try:
        if os.path.getsize(path) > MAX_FILE:
            raise CliError(f"--from-file {path}: larger than {MAX_FILE} bytes")
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CliError(f"--from-file {path}: {e.strerror or e}") from None


@secret.command("get")
@click.argument("name", required=False)
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def get(ctx: click.Context, name: str | None, fmt: str) -> None:
    """List secrets: names, keys, age and the apps that use them (never values)."""
    found = list(_client(ctx).call(lambda stub: stub.ListSecrets(api.ListSecretsRequest())).secrets)
    if name is not None:
        found = [s for s in found if s.name == name]
        if not found:
            raise CliError(f'secret "{name}" not found')
    if fmt == "json":
        click.echo(json.dumps([MessageToDict(s) for s in found], indent=2))
        return
    rows = [[s.name, ",".join(s.keys), age(MessageToDict(s).get("createdAt")), ",".join(s.apps) or "-"] for s in found]
    click.echo(table(["NAME", "KEYS", "AGE", "USED-BY"], rows))


@secret.command("delete")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def delete(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Delete secrets (running instances keep their variables; new starts fail without it)."""
    for name in names:
        request = api.DeleteSecretRequest(name=name)
        _client(ctx).call(lambda stub: stub.DeleteSecret(request))  # noqa: B023 (called at once)
        click.echo(f"secret/{name} deleted")


@secret.command("keygen")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rotate", is_flag=True, help="Put a new key first in an existing file (the old ones still open).")
@click.option("--name", default="", help="The key's name (default key-<timestamp>).")
def keygen(path: Path, rotate: bool, name: str) -> None:
    """Write a new key file for `orch scheduler --secret-key-file` (mode 0600), or rotate one."""
    from scheduler.secrets import SecretKeyError, generate_key_line, load_key_file

    if path.exists() and not rotate:
        raise CliError(f"{path} exists: --rotate to put a new key first, or choose another path")
    old = ""
    if rotate:
        try:
            old = load_key_file(path)
        except SecretKeyError as e:
            raise CliError(str(e)) from None
    line = generate_key_line(name)
    write_atomic(path, f"{line}\n{old}".encode(), mode=0o600)
    click.echo(f"{path}: key {line.split()[0]} {'first, seals from the next scheduler start' if rotate else 'created'}")
