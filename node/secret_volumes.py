"""An instance's secret volumes, out of the latest desired set's secrets (in memory only).

Each volumeMount of a `secret:` volume becomes a runtime SecretMount: its files (items, or every
key as a file named by the key), their modes (item mode, else defaultMode, else 0400). Keys and
paths are checked again here, whatever the scheduler checked: they become file names.
A missing secret or key fails the start with CreateContainerConfigError, as a variable does.
"""

from __future__ import annotations

from node.runtime.model import SecretFile, SecretMount
from node.secret_env import Lookup, SecretEnvError
from orch.secretrefs import DEFAULT_MODE, file_mode_problem, item_path_problem, secret_key_problem
from orch.v1 import types_pb2 as pb

__all__ = ["SecretVolumeError", "secret_mounts"]


class SecretVolumeError(SecretEnvError):
    """A secret volume cannot be made: the same reason as a variable's (CreateContainerConfigError)."""


def secret_mounts(spec: pb.AppSpec, lookup: Lookup) -> tuple[SecretMount, ...]:
    """The mounts of the app's secret volumes, in volumeMounts order; SecretVolumeError."""
    files = {v.name: _files(v, lookup) for v in spec.volumes if v.HasField("secret")}
    return tuple(SecretMount(m.mount_path, files[m.name]) for m in spec.volume_mounts if m.name in files)


def _files(volume: pb.Volume, lookup: Lookup) -> tuple[SecretFile, ...]:
    source = volume.secret
    where = f'volume "{volume.name}": secret "{source.secret_name}"'
    data = lookup(source.secret_name)
    if data is None:
        raise SecretVolumeError(f"{where} not found")
    default = source.default_mode if source.HasField("default_mode") else DEFAULT_MODE
    if (problem := file_mode_problem(default)) is not None:
        raise SecretVolumeError(f"{where}: defaultMode {problem}")
    if not source.items:
        for key in sorted(data.data):
            if (problem := secret_key_problem(key)) is not None:  # a key is a file name here
                raise SecretVolumeError(f'{where}: key "{_printable(key)}" {problem}; refused')
        return tuple(SecretFile(key, default, data.data[key]) for key in sorted(data.data))
    out = []
    for item in source.items:
        problem = secret_key_problem(item.key) or item_path_problem(item.path)
        mode = item.mode if item.HasField("mode") else default
        problem = problem or file_mode_problem(mode)
        if problem is not None:
            raise SecretVolumeError(f'{where}: item "{_printable(item.key)}" -> "{_printable(item.path)}" {problem}')
        if item.key not in data.data:
            raise SecretVolumeError(f'{where} has no key "{item.key}"')
        out.append(SecretFile(item.path, mode, data.data[item.key]))
    return tuple(out)


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")
