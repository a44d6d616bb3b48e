"""The API's secret calls, blocking (OrchService runs them in a thread): create, list, delete,
and the leader's reseal after a key rotation. Values go in and are never returned."""

from __future__ import annotations

import logging
import time

from orch.secretrefs import referenced_secrets
from orch.v1 import api_pb2 as api
from orch.v1 import types_pb2 as pb
from scheduler.errors import Conflict, NotFound, Refused
from scheduler.secrets import KeyRing, SecretsDisabled, SecretUnreadable, check_secret
from scheduler.store import Delete, Put, Store
from scheduler.timeutil import seconds

log = logging.getLogger(__name__)


def users(apps: list[pb.App], name: str) -> list[str]:
    """The apps whose spec refers to secret `name`."""
    return sorted(a.spec.name for a in apps if name in referenced_secrets(a.spec))


def info(secret: pb.Secret, apps: list[pb.App]) -> api.SecretInfo:
    out = api.SecretInfo(name=secret.name, keys=secret.keys, apps=users(apps, secret.name))
    out.created_at.CopyFrom(secret.created_at)
    out.updated_at.CopyFrom(secret.updated_at)
    return out


def create(store: Store, keys: KeyRing | None, request: api.CreateSecretRequest) -> api.SecretInfo:
    if keys is None:
        raise SecretsDisabled()
    check_secret(request.name, request.data)
    key = store.keys.secret(request.name)
    existing = store.get(pb.Secret, key)
    if existing is not None and not request.replace:
        raise Refused("AlreadyExists", f'secret "{request.name}" already exists (--replace to change its data)')
    now = time.time()
    created = seconds(existing.value.created_at) if existing is not None else None
    secret = keys.seal(request.name, request.data, now, created)
    store.commit([Put(key, secret, existing.mod_revision if existing is not None else 0)])
    return info(secret, _apps(store))


def list_all(store: Store) -> api.ListSecretsResponse:
    apps = _apps(store)
    secrets = store.list_prefix(pb.Secret, store.keys.secrets())
    return api.ListSecretsResponse(secrets=[info(s.value, apps) for s in sorted(secrets, key=lambda s: s.value.name)])


def delete(store: Store, name: str) -> api.DeleteSecretResponse:
    key = store.keys.secret(name)
    existing = store.get(pb.Secret, key)
    if existing is None:
        raise NotFound("secret", name)
    store.commit([Delete(key, existing.mod_revision)])
    return api.DeleteSecretResponse()


def reseal_all(store: Store, keys: KeyRing) -> int:
    """Seal again under the primary key whatever another key sealed; how many. A secret that does
    not open stays as it is (logged): it may belong to a key only another scheduler has."""
    done = 0
    for found in store.list_prefix(pb.Secret, store.keys.secrets()):
        try:
            again = keys.reseal(found.value, time.time())
        except SecretUnreadable as e:
            log.warning("%s", e)
            continue
        if again is None:
            continue
        try:
            store.commit([Put(store.keys.secret(again.name), again, found.mod_revision)])
            done += 1
        except Conflict:
            pass  # changed meanwhile: sealed under the primary key by that write
    return done


def _apps(store: Store) -> list[pb.App]:
    return [a.value for a in store.list_prefix(pb.App, store.keys.app(""))]
