"""Registry credentials (Docker's config.json `auths` format) and WWW-Authenticate challenges.

    {"auths": {"127.0.0.1:5000": {"auth": "<base64 user:password>"},
               "registry.example.com": {"username": "u", "password": "p"},
               "https://index.docker.io/v1/": {"auth": "..."}}}

Keys may carry a scheme and a path (Docker writes both forms); only the host[:port] matters.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from node.images.errors import ImageError

_DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io")
_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # "bearer" or "basic", lower case
    params: dict[str, str]


def default_auth_file() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"


def load_credentials(path: Path | None) -> dict[str, Credentials]:
    """host[:port] -> Credentials; a missing file means no credentials, a broken one is an error."""
    if path is None or not path.exists():
        return {}
    try:
        auths = json.loads(path.read_text()).get("auths") or {}
        return {_host_of(key): _entry(value) for key, value in auths.items() if _entry_ok(value)}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ImageError(f"registry credentials {path}: {exc}") from exc


def credentials_for(creds: dict[str, Credentials], registry: str) -> Credentials | None:
    if registry in _DOCKER_HUB_KEYS:
        return next((creds[k] for k in _DOCKER_HUB_KEYS if k in creds), None)
    return creds.get(registry)


def parse_challenge(header: str) -> Challenge | None:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "basic"):
        return None
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in _PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def _host_of(key: str) -> str:
    key = key.split("://", 1)[-1]
    return key.split("/", 1)[0]


def _entry_ok(value: object) -> bool:
    return isinstance(value, dict) and ("auth" in value or "username" in value)


def _entry(value: dict[str, str]) -> Credentials:
    if value.get("auth"):
        user, sep, password = base64.b64decode(value["auth"]).decode().partition(":")
        if not sep:
            raise ValueError('an "auth" entry must be base64 of "user:password"')
        return Credentials(user, password)
    return Credentials(str(value["username"]), str(value.get("password", "")))
