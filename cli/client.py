"""Finding and calling the scheduler from the CLI.

The address comes from --scheduler, then $ORCH_SCHEDULER, then the context
(--context, $ORCH_CONTEXT or the config's current one: cli/contexts.py), then the
cluster.json of the default `orch up` state dir, then 127.0.0.1:7070.
Several addresses (comma-separated) are tried in turn.

TLS (mutual, orch/tls.py): the client certificate is <dir>/<user>.crt with
<dir>/<user>.key and <dir>/ca.crt, where <dir> comes from --tls-dir, then
$ORCH_TLS_DIR, then the context's tlsDir, then the default cluster.json's tlsDir
when the scheduler address is one of that cluster's; otherwise plaintext. <user>
comes from --tls-user, then $ORCH_TLS_USER, then the context's, then "admin". The certificate is checked
before the first call, and the scheduler must prove its role (orch/identity.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from orch.identity import Role
from orch.tls import SCHEDULER, Credentials, TlsError, TlsFiles, channel
from orch.v1 import api_pb2, api_pb2_grpc

T = TypeVar("T")
DEFAULT_STATE_DIR = Path(os.environ.get("ORCH_STATE_DIR") or Path.home() / ".local/state/orch/up")
DEFAULT_ADDRESS = "127.0.0.1:7070"
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class CliError(Exception):
    """A message for the user; the CLI prints it and exits with `code` (1)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """The command line itself is wrong (exit 2, as click's own usage errors): nothing was asked
    of the cluster. Errors from the cluster or its answers exit 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=2)


def _default_cluster() -> dict[str, Any]:
    try:
        doc = json.loads((DEFAULT_STATE_DIR / "cluster.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def scheduler_addresses(option: str | None, context: str = "") -> list[str]:
    raw = option or os.environ.get("ORCH_SCHEDULER", "") or context
    if not raw:
        try:
            raw = ",".join(_default_cluster()["schedulers"])
        except (KeyError, TypeError):
            raw = DEFAULT_ADDRESS
    return [a.strip() for a in raw.split(",") if a.strip()]


def tls_files(
    option: str | None, addresses: list[str], user: str | None = None, context_dir: str = "", context_user: str = ""
) -> TlsFiles | None:
    directory = option or os.environ.get("ORCH_TLS_DIR", "") or context_dir
    if not directory:
        cluster = _default_cluster()
        if not cluster.get("tlsDir") or not set(addresses) & set(cluster.get("schedulers", [])):
            return None
        directory = str(cluster["tlsDir"])
    return TlsFiles.in_dir(Path(directory), user or os.environ.get("ORCH_TLS_USER") or context_user or "admin")


def load_credentials(files: TlsFiles | None) -> Credentials | None:
    """The CLI's certificate, checked now: a person's or a tool's (admin or viewer)."""
    if files is None:
        return None
    try:
        return files.load(roles=(Role.ADMIN, Role.VIEWER))
    except TlsError as e:
        raise CliError(str(e)) from None


def describe_rpc_error(e: grpc.RpcError, address: str) -> str:
    code: grpc.StatusCode = e.code()
    details: str = e.details() or ""
    if code in RETRYABLE:
        hint = "is it running? (--scheduler, $ORCH_SCHEDULER; if it requires TLS: --tls-dir, $ORCH_TLS_DIR)"
        return f"cannot reach the scheduler at {address} ({code.name.lower()}: {details}); {hint}"
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED):
        return f"Error: {details}"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return "Error: the scheduler rejected the request:\n  " + details.replace("; ", "\n  ")
    return f"Error from scheduler ({code.name}): {details}"


class Client:
    def __init__(self, addresses: list[str], timeout: float = 10.0, tls: Credentials | None = None) -> None:
        self.addresses = addresses
        self.timeout = timeout
        self.tls = tls
        # Set by streaming commands once they printed something: a stream that
        # breaks halfway is not retried on the next scheduler (lines would repeat,
        # a drain would start over).
        self.output_started = False

    def watch(self, until: float | None = None) -> Iterator[int]:
        """The revisions of the first scheduler that streams its changes (Watch); a grpc.RpcError
        when the stream breaks or none answers (the caller decides: retry, or poll instead).
        until: time.monotonic() when the stream ends (DEADLINE_EXCEEDED), None for never."""
        error: grpc.RpcError | None = None
        for address in self.addresses:
            with channel(address, self.tls, peer=SCHEDULER) as opened:
                timeout = None if until is None else max(0.0, until - time.monotonic())
                try:
                    for change in api_pb2_grpc.OrchStub(opened).Watch(api_pb2.WatchRequest(), timeout=timeout):
                        yield change.revision
                except grpc.RpcError as e:
                    if e.code() not in RETRYABLE:
                        raise
                    error = e
        if error is not None:
            raise error

    def call(self, fn: Callable[[api_pb2_grpc.OrchStub], T]) -> T:
        """Run fn against each scheduler in turn until one answers."""
        last = ""
        for address in self.addresses:
            with channel(address, self.tls, peer=SCHEDULER) as opened:
                try:
                    return fn(api_pb2_grpc.OrchStub(opened))
                except grpc.RpcError as e:
                    last = describe_rpc_error(e, address)
                    if e.code() not in RETRYABLE or self.output_started:
                        raise CliError(last) from None
        raise CliError(last)
