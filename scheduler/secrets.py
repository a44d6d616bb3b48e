"""Secrets sealed at rest: what `orch secret create` stores in etcd, and how it is opened again.

Values are sealed with AES-256-GCM under a key the schedulers read from `--secret-key-file`;
etcd, its snapshots and its backups hold only ciphertext. The file names one or more keys,
one per line, `NAME BASE64(32 random bytes)` (`orch secret keygen` prints one); the first
seals, every one opens. Rotation, as Kubernetes' EncryptionConfiguration: put a new key first
on every scheduler and restart them; the leader then reseals whatever another key sealed
(`reseal`); drop the old key once `orch get secrets -o wide` shows none under it.

The secret's name is bound in as associated data: a record copied to another key does not open.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from orch.secretrefs import referenced_secrets, secret_key_problem
from orch.v1 import types_pb2 as pb
from scheduler.errors import InvalidRequest, SchedulerError
from scheduler.snapshot import Versioned
from scheduler.timeutil import seconds, ts

log = logging.getLogger(__name__)

__all__ = ["KeyRing", "Opener", "SecretKeyError", "SecretsDisabled", "check_secret", "generate_key_line"]

KEY_BYTES = 32
NONCE_BYTES = 12
MAX_SECRET_BYTES = 1 << 20  # as Kubernetes: a secret is small; etcd's requests are 1.5 MiB
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class SecretKeyError(SchedulerError):
    """--secret-key-file cannot be used; names the file and what is wrong."""


class SecretsDisabled(SchedulerError):
    def __init__(self) -> None:
        super().__init__("secrets are disabled: this scheduler was started without --secret-key-file")


class SecretUnreadable(SchedulerError):
    def __init__(self, name: str, why: str) -> None:
        super().__init__(f'secret "{name}" cannot be opened: {why}')
        self.name = name


def generate_key_line(name: str = "") -> str:
    """A new key for the file: `NAME BASE64`."""
    name = name or time.strftime("key-%Y%m%d%H%M%S")
    return f"{name} {base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


@dataclass(frozen=True, slots=True)
class KeyRing:
    keys: tuple[tuple[str, bytes], ...]  # (name, 32 bytes); the first seals

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        try:
            st = path.stat()
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise SecretKeyError(f"--secret-key-file {path}: {getattr(e, 'strerror', None) or e}") from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise SecretKeyError(
                f"--secret-key-file {path} is readable by its group or other users "
                f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600"
            )
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str, where: str = "--secret-key-file") -> KeyRing:
        keys: list[tuple[str, bytes]] = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, encoded = line.partition(" ")
            if not _KEY_NAME.fullmatch(name):
                raise SecretKeyError(f"{where}:{n}: {name!r} is not a key name (letters, digits, . _ -)")
            try:
                key = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise SecretKeyError(f"{where}:{n}: key {name} is not base64") from None
            if len(key) != KEY_BYTES:
                raise SecretKeyError(f"{where}:{n}: key {name} has {len(key)} bytes, not {KEY_BYTES}")
            if any(name == k for k, _ in keys):
                raise SecretKeyError(f"{where}:{n}: key {name} is named twice")
            keys.append((name, key))
        if not keys:
            raise SecretKeyError(f"{where}: no key (one line per key: NAME BASE64; `orch secret keygen` makes one)")
        return cls(tuple(keys))

    @property
    def primary(self) -> str:
        return self.keys[0][0]

    def seal(self, name: str, data: Mapping[str, bytes], now: float, created: float | None = None) -> pb.Secret:
        key_id, key = self.keys[0]
        nonce = os.urandom(NONCE_BYTES)
        plain = pb.SecretData(data=dict(data)).SerializeToString(deterministic=True)
        sealed = AESGCM(key).encrypt(nonce, plain, _aad(name))
        secret = pb.Secret(name=name, keys=sorted(data), key_id=key_id, nonce=nonce, sealed=sealed)
        secret.created_at.CopyFrom(ts(created if created is not None else now))
        secret.updated_at.CopyFrom(ts(now))
        return secret

    def open(self, secret: pb.Secret) -> pb.SecretData:
        key = dict(self.keys).get(secret.key_id)
        if key is None:
            raise SecretUnreadable(secret.name, f"sealed with key {secret.key_id}, which --secret-key-file lacks")
        try:
            plain = AESGCM(key).decrypt(secret.nonce, secret.sealed, _aad(secret.name))
        except (InvalidTag, ValueError):
            raise SecretUnreadable(secret.name, f"its ciphertext does not verify under key {secret.key_id}") from None
        return pb.SecretData.FromString(plain)

    def reseal(self, secret: pb.Secret, now: float) -> pb.Secret | None:
        """The record sealed under the primary key, None if it is already."""
        if secret.key_id == self.primary:
            return None
        data = self.open(secret)
        return self.seal(secret.name, data.data, now, created=seconds(secret.created_at))


def load_key_file(path: Path) -> str:
    """The file's text once it passed KeyRing.load's checks (for `orch secret keygen --rotate`)."""
    KeyRing.load(path)
    return path.read_text()


def _aad(name: str) -> bytes:
    return f"orch/secrets/{name}".encode()


def check_secret(name: str, data: Mapping[str, bytes]) -> None:
    """InvalidRequest naming every problem with a secret to be created."""
    problems = []
    if len(name) > 253 or not _SECRET_NAME.fullmatch(name):
        problems.append(f'name "{name}" is not a DNS subdomain (lowercase letters, digits, "-" and ".")')
    if not data:
        problems.append("no data: give at least one key (--from-literal KEY=VALUE or --from-file [KEY=]PATH)")
    for key in data:
        if (problem := secret_key_problem(key)) is not None:  # a key is a file name in a secret volume
            problems.append(f'key "{key}" {problem}')
    size = sum(len(k) + len(v) for k, v in data.items())
    if size > MAX_SECRET_BYTES:
        problems.append(f"{size} bytes, over the limit of {MAX_SECRET_BYTES}")
    if problems:
        raise InvalidRequest(problems)


class Opener:
    """Opens the secrets a desired set needs, each once per stored version."""

    def __init__(self, keys: KeyRing | None) -> None:
        self._keys = keys
        self._opened: dict[str, tuple[int, pb.SecretData | None]] = {}

    def needed(
        self, specs: Iterable[pb.AppSpec], stored: Mapping[str, Versioned[pb.Secret]]
    ) -> dict[str, tuple[int, pb.SecretData]]:
        """name -> (mod_revision, data) of every stored secret these specs (a desired set's
        templates) refer to. One that is missing or does not open is left out: the agent
        reports the instance's start failing."""
        out = {}
        for name in sorted({name for spec in specs for name in referenced_secrets(spec)}):
            found = stored.get(name)
            if found is None or self._keys is None:
                continue
            cached = self._opened.get(name)
            if cached is None or cached[0] != found.mod_revision:
                try:
                    cached = (found.mod_revision, self._keys.open(found.value))
                except SecretUnreadable as e:
                    log.warning("%s", e)
                    cached = (found.mod_revision, None)
                self._opened[name] = cached
            if cached[1] is not None:
                out[name] = (cached[0], cached[1])
        return out
