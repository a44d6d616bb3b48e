"""Named clusters for the CLI, as kubectl's contexts: `~/.config/orch/config.yaml`
($ORCH_CONFIG, or $XDG_CONFIG_HOME/orch/config.yaml).

    current-context: prod
    contexts:
      - name: prod
        scheduler: m1.example.com:7070,m2.example.com:7070
        tlsDir: /home/me/.config/orch/prod
        tlsUser: admin

A context is used when neither a flag nor an environment variable says otherwise
(cli/client.py has the order). The file is written atomically, 0600.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from cli.client import Client, CliError, load_credentials, scheduler_addresses, tls_files
from orch.files import write_atomic

FIELDS = {"scheduler": "scheduler", "tlsDir": "tls_dir", "tlsUser": "tls_user"}


@dataclass(frozen=True, slots=True)
class Context:
    name: str
    scheduler: str = ""
    tls_dir: str = ""
    tls_user: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    current: str = ""
    contexts: tuple[Context, ...] = field(default=())

    def get(self, name: str) -> Context | None:
        return next((c for c in self.contexts if c.name == name), None)

    def put(self, ctx: Context) -> Config:
        others = tuple(c for c in self.contexts if c.name != ctx.name)
        return replace(self, contexts=tuple(sorted((*others, ctx), key=lambda c: c.name)))

    def delete(self, name: str) -> Config:
        return Config("" if self.current == name else self.current, tuple(c for c in self.contexts if c.name != name))


def config_path() -> Path:
    if explicit := os.environ.get("ORCH_CONFIG"):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "orch" / "config.yaml"


def load(path: Path | None = None) -> Config:
    """The config, or an empty one when there is no file; a broken file is an error naming it."""
    path = path or config_path()
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return Config()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CliError(f"{path}: cannot read the CLI config: {e}") from None
    return _parse(doc or {}, path)


def _parse(doc: Any, path: Path) -> Config:
    if not isinstance(doc, dict):
        raise CliError(f"{path}: expected a mapping with current-context and contexts")
    contexts = []
    for i, item in enumerate(doc.get("contexts") or []):
        where = f"{path}: contexts[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise CliError(f"{where}: each context needs a name")
        unknown = sorted(set(item) - {"name", *FIELDS})
        if unknown:
            raise CliError(f"{where}: unknown field {unknown[0]} (known: name, {', '.join(FIELDS)})")
        values = {attr: item.get(key) or "" for key, attr in FIELDS.items()}
        if not all(isinstance(v, str) for v in values.values()):
            raise CliError(f"{where}: scheduler, tlsDir and tlsUser are strings")
        contexts.append(Context(item["name"], **values))
    current = doc.get("current-context") or ""
    if not isinstance(current, str):
        raise CliError(f"{path}: current-context must be a context's name")
    return Config(current, tuple(contexts))


def save(config: Config, path: Path | None = None) -> Path:
    path = path or config_path()
    doc = {
        "current-context": config.current,
        "contexts": [
            {"name": c.name, **{key: getattr(c, attr) for key, attr in FIELDS.items() if getattr(c, attr)}}
            for c in config.contexts
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode(), mode=0o600)
    return path


def active(name: str | None) -> Context | None:
    """The context asked for (--context, $ORCH_CONTEXT) or the current one; None without any."""
    config = load()
    wanted = name or os.environ.get("ORCH_CONTEXT") or config.current
    if not wanted:
        return None
    ctx = config.get(wanted)
    if ctx is None:
        known = ", ".join(c.name for c in config.contexts) or "none"
        raise CliError(f'no context "{wanted}" in {config_path()} (known: {known}); orch config get-contexts')
    return ctx


def connector(
    scheduler: str | None, timeout: float, tls_dir: str | None, tls_user: str | None, context: str | None
) -> Callable[[], Client]:
    """What connects the CLI to its cluster: the global options, then the environment, then the
    context (cli/client.py has the whole order). Nothing is read until it is called."""

    def connect() -> Client:
        named = active(context) or Context("")
        addresses = scheduler_addresses(scheduler, named.scheduler)
        files = tls_files(tls_dir, addresses, tls_user, named.tls_dir, named.tls_user)
        return Client(addresses, timeout, load_credentials(files))

    return connect
