"""`orch pki init|issue`: the certificates of a cluster (cli/pki.py does the work)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import click

from cli.client import CliError

__all__ = ["pki"]

# What `issue` issues (cli/pki.py's issue_for). cli/pki.py itself is imported only when a pki
# command runs: it imports cryptography (~8.5 MiB RSS), and `orch node` runs from this CLI.
ROLES = ("scheduler", "admin", "viewer", "node", "etcd")


@click.group()
def pki() -> None:
    """Certificates for a cluster: `orch pki init DIR`, `orch pki issue DIR ROLE NAME`, then
    `orch pki bundle DIR OUT NAME...` for each machine (docs/deploy.md)."""


@pki.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def pki_init(directory: Path) -> None:
    """Create the cluster's CA and etcd's CA in DIRECTORY (kept if they exist)."""
    made = _pki(lambda ca: ca.init(directory))
    for path in made:
        click.echo(f"created {path}")
    if not made:
        click.echo(f"{directory}: the CAs exist; kept")


@pki.command("issue")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("role", type=click.Choice(ROLES))
@click.argument("name")
@click.option("--host", "hosts", multiple=True, metavar="H", help="IP or DNS name it serves on (repeat).")
def pki_issue(directory: Path, role: str, name: str, hosts: tuple[str, ...]) -> None:
    """Issue NAME.crt/NAME.key for ROLE (a scheduler also gets etcd/NAME.crt, an etcd member etcd/NAME.crt)."""
    issued = _pki(lambda ca: ca.issue_for(directory, role, name, hosts))
    for path in issued:
        click.echo(f"issued {path}")
    if not issued:
        click.echo(f"{name}: the certificates are current; kept")


@pki.command("bundle")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.argument("names", nargs=-1, required=True)
def pki_bundle(directory: Path, out: Path, names: tuple[str, ...]) -> None:
    """Copy to OUT what one machine needs: both CA certificates and NAME.crt/NAME.key of each NAME
    (from DIRECTORY and DIRECTORY/etcd), never a CA key. Then copy OUT to the machine's /etc/orch/pki."""
    for path in _pki(lambda ca: ca.bundle(directory, out, names)):
        click.echo(f"wrote {path}")


def _pki(fn: Callable[[ModuleType], list[Path]]) -> list[Path]:
    from cli import pki as ca

    try:
        return fn(ca)
    except (ca.PkiError, OSError) as e:
        raise CliError(f"orch pki: {e}") from None
