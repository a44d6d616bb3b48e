"""An instance's variables from secrets, out of the latest desired set's secrets (in memory only).

A secret or key that is missing, or a value that is not UTF-8 text, fails the start with
Kubernetes' reason, CreateContainerConfigError, and a message naming what is missing; the
start is tried again (a later desired set may carry the secret).
"""

from __future__ import annotations

from collections.abc import Callable

from orch.v1 import types_pb2 as pb

CONFIG_ERROR = "CreateContainerConfigError"

Lookup = Callable[[str], pb.SecretData | None]


class SecretEnvError(ValueError):
    reason = CONFIG_ERROR


def secret_env(spec: pb.AppSpec, lookup: Lookup) -> dict[str, str]:
    """Variable -> value; SecretEnvError naming the first problem."""
    out = {}
    for var in spec.secret_env:
        data = lookup(var.secret)
        if data is None:
            raise SecretEnvError(f'env {var.name}: secret "{var.secret}" not found')
        if var.key not in data.data:
            raise SecretEnvError(f'env {var.name}: secret "{var.secret}" has no key "{var.key}"')
        try:
            out[var.name] = data.data[var.key].decode()
        except UnicodeDecodeError:
            raise SecretEnvError(
                f'env {var.name}: key "{var.key}" of secret "{var.secret}" is not UTF-8 text'
            ) from None
        if "\0" in out[var.name]:
            raise SecretEnvError(f'env {var.name}: key "{var.key}" of secret "{var.secret}" holds a NUL byte')
    return out
