"""How `orch scheduler` and `orch node` secure their connections, decided at start.

Every certificate is read and checked before anything listens (a missing
file fails now, naming it). Plaintext is refused unless asked for: without
TLS anyone who can connect to a scheduler may run any container as root on
every node, and anyone who can connect to etcd may write such an app there.
`--insecure` (gRPC) and `--insecure-etcd` start anyway, with a warning.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from cli.client import CliError
from orch.identity import Role, node_identity
from orch.tls import Credentials, TlsError, TlsFiles

__all__ = ["etcd_credentials", "node_credentials", "scheduler_credentials"]


def _warn(lines: Sequence[str]) -> None:
    bar = "!" * 78
    click.echo("\n".join([bar, *(f"!! {line}" for line in lines), bar]), err=True)


def _load(
    files: TlsFiles, roles: Sequence[Role] = (), identity: str = "", serve: bool = False, apart: bool = False
) -> Credentials:
    try:
        return files.load(roles=roles, identity=identity, serve=serve, apart=apart)
    except TlsError as e:
        raise CliError(str(e)) from None


def _files(ca: str, cert: str, key: str, prefix: str) -> TlsFiles | None:
    try:
        return TlsFiles.from_options(ca, cert, key, prefix)
    except TlsError as e:
        raise CliError(str(e)) from None


def _plaintext(command: str, where: str, danger: str, insecure: bool) -> None:
    risk = [f"{command}: no TLS (--tls-ca/--tls-cert/--tls-key): plaintext gRPC {where}.", danger]
    if not insecure:
        _warn([*risk, "Refusing to start. Pass the certificates (orch pki), or --insecure to run anyway."])
        raise CliError(f"{command}: refusing plaintext without --insecure")
    _warn([*risk, "Running anyway (--insecure): only for tests or a machine nobody else uses."])


def scheduler_credentials(ca: str, cert: str, key: str, listen: str, insecure: bool) -> Credentials | None:
    files = _files(ca, cert, key, "--tls")
    if files is None:
        danger = "Nobody is authenticated: whoever can connect may run any container as root on every node."
        _plaintext("orch scheduler", f"on {listen}", danger, insecure)
        return None
    return _load(files, roles=(Role.SCHEDULER,), serve=True)


def node_credentials(ca: str, cert: str, key: str, name: str, insecure: bool) -> Credentials | None:
    files = _files(ca, cert, key, "--tls")
    if files is None:
        danger = "Whoever answers at the scheduler's address may run any container as root here."
        _plaintext(f"orch node {name}", "to the scheduler and on the agent's API", danger, insecure)
        return None
    # Checked in a child: the agent runs for months and would keep cryptography's ~8.5 MiB (orch/tls.py).
    return _load(files, identity=node_identity(name), serve=True, apart=True)


def etcd_credentials(ca: str, cert: str, key: str, endpoints: Sequence[str], insecure: bool) -> Credentials | None:
    from scheduler.store import parse_endpoints  # only a scheduler needs etcd's client

    files = _files(ca, cert, key, "--etcd")
    try:
        parse_endpoints(endpoints, tls=files is not None)
    except ValueError as e:
        raise CliError(f"--etcd: {e}") from None
    if files is not None:
        return _load(files)
    risk = [
        f"orch scheduler: plaintext etcd at {', '.join(endpoints)}, without a client certificate.",
        "Whoever can reach etcd can write an app that runs as root on every node.",
    ]
    if not insecure:
        _warn([*risk, "Refusing to start. Pass --etcd-ca/--etcd-cert/--etcd-key (https://), or --insecure-etcd."])
        raise CliError("orch scheduler: refusing plaintext etcd without --insecure-etcd")
    _warn([*risk, "Running anyway (--insecure-etcd): only for tests or a machine nobody else uses."])
    return None
