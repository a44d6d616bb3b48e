"""The process an instance runs: image config defaults overridden by the manifest, with Docker's rules.

    command set      -> replaces Entrypoint AND drops the image's Cmd (Kubernetes `command`)
    args set         -> replaces Cmd (Kubernetes `args`)
    env              -> image Env, then the manifest's entries; the manifest wins on the same name
    workingDir/user  -> the manifest's if set, else the image's, else "/" and "" (root)

An empty list counts as "not set": protobuf cannot tell the two apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from node.images.digest import parse_digest
from node.images.errors import ImageError, NoCommand


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an OCI image config (`config` object) that shape the process."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "NAME=value", in the image's order
    working_dir: str = ""
    user: str = ""


@dataclass(frozen=True, slots=True)
class Process:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str = "/"
    user: str = ""


def effective_process(
    image_config: ImageConfig,
    command: Sequence[str] | None,
    args: Sequence[str] | None,
    env: Mapping[str, str] | None,
    working_dir: str | None = None,
    user: str | None = None,
) -> Process:
    """Merge the manifest's process fields over the image's defaults (see the module docstring)."""
    if command:
        entrypoint, cmd = tuple(command), tuple(args or ())
    else:
        entrypoint, cmd = image_config.entrypoint, tuple(args) if args else image_config.cmd
    argv = entrypoint + cmd
    if not argv:
        raise NoCommand("no command: the manifest sets no command/args and the image has no Entrypoint or Cmd")
    merged: dict[str, str] = {}
    for item in image_config.env:
        name, _, value = item.partition("=")
        merged[name] = value
    merged.update(env or {})
    return Process(
        argv=argv,
        env=merged,
        working_dir=working_dir or image_config.working_dir or "/",
        user=user or image_config.user,
    )


def parse_image_config(raw: bytes, what: str) -> tuple[ImageConfig, tuple[str, ...]]:
    """(ImageConfig, rootfs.diff_ids) from an OCI/Docker image config blob; `what` names it in errors.

    Every diff_id must be a sha256 digest: it names the layer's directory in the store.
    """
    try:
        doc = json.loads(raw)
        cfg: dict[str, Any] = doc.get("config") or {}
        ids = doc["rootfs"]["diff_ids"]
        if not isinstance(ids, list):
            raise TypeError(f"rootfs.diff_ids must be a list, got {ids!r}")
        config = ImageConfig(
            entrypoint=_strings(cfg.get("Entrypoint")),
            cmd=_strings(cfg.get("Cmd")),
            env=_strings(cfg.get("Env")),
            working_dir=str(cfg.get("WorkingDir") or ""),
            user=str(cfg.get("User") or ""),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(f"{what}: malformed image config: {exc!r}") from exc
    _refuse_nul(config, what)
    return config, tuple(parse_digest(d, f"{what}: config: diff_id") for d in ids)


def _refuse_nul(config: ImageConfig, what: str) -> None:
    """execve takes C strings: a NUL in the image's process fields would fail every start, unexplained."""
    fields = {"Entrypoint": config.entrypoint, "Cmd": config.cmd, "Env": config.env}
    fields |= {"WorkingDir": (config.working_dir,), "User": (config.user,)}
    for name, values in fields.items():
        for i, value in enumerate(values):
            if "\0" in value:
                where = f"{name}[{i}]" if name in ("Entrypoint", "Cmd", "Env") else name
                raise ImageError(f"{what}: config: {where} contains a NUL byte")


def config_to_json(config: ImageConfig) -> dict[str, Any]:
    return {
        "entrypoint": list(config.entrypoint),
        "cmd": list(config.cmd),
        "env": list(config.env),
        "working_dir": config.working_dir,
        "user": config.user,
    }


def config_from_json(doc: Mapping[str, Any]) -> ImageConfig:
    return ImageConfig(
        entrypoint=tuple(doc["entrypoint"]),
        cmd=tuple(doc["cmd"]),
        env=tuple(doc["env"]),
        working_dir=str(doc["working_dir"]),
        user=str(doc["user"]),
    )


def _strings(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return tuple(value)
