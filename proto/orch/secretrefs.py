"""What an app may say about secrets: the rules for secret names, keys and the files a secret
volume makes, one place for the API, the CLI, the scheduler and the node's re-check.

Keys and item paths become file names on the node: they are hostile until checked here.
Pure; the node writes the files beneath a fresh tmpfs (node/runtime/secret_mounts.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the runtime (zygote, PID 1) does not load protobuf
    from orch.v1 import types_pb2

__all__ = [
    "DEFAULT_MODE",
    "MAX_ITEM_PATH",
    "MAX_KEY",
    "file_mode_problem",
    "item_path_problem",
    "referenced_secrets",
    "secret_key_problem",
    "secret_name_problem",
    "secret_volume_problems",
]

DEFAULT_MODE = 0o400  # a secret file's mode unless defaultMode or the item's mode says otherwise
MAX_KEY = 253  # Kubernetes' bound for a secret's keys
MAX_ITEM_PATH = 1024
_KEY = re.compile(r"[-._a-zA-Z0-9]+")  # Kubernetes' secret keys: file names, too
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def secret_name_problem(name: str) -> str | None:
    if len(name) > 253 or not _SECRET_NAME.fullmatch(name):
        return 'is not a secret name (a DNS subdomain: lowercase letters, digits, "-" and ".")'
    return None


def secret_key_problem(key: str) -> str | None:
    """A key is one file name: letters, digits, "-", "_", "." (no "/"), never "." or ".."."""
    if len(key) > MAX_KEY:
        return f"must be at most {MAX_KEY} characters, got {len(key)}"
    if not _KEY.fullmatch(key) or key in (".", ".."):
        return 'is not a secret key (letters, digits, "-", "_" and ".", not "." or "..")'
    return None


def item_path_problem(path: str) -> str | None:
    """A file below the volume's mountPath: relative, components that are keys, no ".."."""
    if not path:
        return "must not be empty"
    if len(path) > MAX_ITEM_PATH:
        return f"must be at most {MAX_ITEM_PATH} characters, got {len(path)}"
    if path.startswith("/"):
        return "must be a relative path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return 'must not contain "..", "." or empty components'
    if any(secret_key_problem(part) for part in path.split("/")):
        return 'may hold only letters, digits, "-", "_", "." and "/"'
    return None


def file_mode_problem(mode: int) -> str | None:
    if not 0 <= mode <= 0o777:
        return f"must be between 0 and 0777 (511), got {mode}"
    return None


def referenced_secrets(spec: types_pb2.AppSpec) -> set[str]:
    """The secrets an app needs on its nodes: those of its variables and of its volumes."""
    names = {var.secret for var in spec.secret_env}
    names.update(v.secret.secret_name for v in spec.volumes if v.HasField("secret"))
    return names


def secret_volume_problems(path: str, secret: types_pb2.SecretVolume) -> Iterator[tuple[str, str]]:
    """(field path, message) for a volume's `secret:` source; `path` is spec.volumes[i].secret."""
    if (problem := secret_name_problem(secret.secret_name)) is not None:
        yield f"{path}.secretName", f'"{_printable(secret.secret_name)}" {problem}'
    if secret.HasField("default_mode") and (problem := file_mode_problem(secret.default_mode)) is not None:
        yield f"{path}.defaultMode", problem
    paths: dict[str, int] = {}
    for i, item in enumerate(secret.items):
        here = f"{path}.items[{i}]"
        if (problem := secret_key_problem(item.key)) is not None:
            yield f"{here}.key", f'"{_printable(item.key)}" {problem}'
        if (problem := item_path_problem(item.path)) is not None:
            yield f"{here}.path", f'"{_printable(item.path)}" {problem}'
        elif (clash := _clash(item.path, paths)) is not None:
            yield f"{here}.path", f"clashes with items[{clash}].path (a file cannot also be a directory)"
        paths.setdefault(item.path, i)
        if item.HasField("mode") and (problem := file_mode_problem(item.mode)) is not None:
            yield f"{here}.mode", problem


def _clash(path: str, seen: dict[str, int]) -> int | None:
    """The item whose path equals `path`, or is a directory of it, or has it as a directory."""
    for other, i in seen.items():
        if other == path or other.startswith(path + "/") or path.startswith(other + "/"):
            return i
    return None


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")
