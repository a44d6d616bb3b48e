"""Who is who in a cluster: the identities certificates carry, and their roles.

A certificate's common name is its identity:

    scheduler        a scheduler (every scheduler of a cluster shares the role)
    node:<name>      the agent of node <name>
    admin:<name>     a person or tool that may do everything ("admin" alone too)
    viewer:<name>    read-only: lists, gets, logs, usage, events

A server also proves its role with a DNS name in its certificate, which its
clients ask for instead of the address they dialled: `scheduler.orch.invalid`
for schedulers, `<name>.node.orch.invalid` for node <name>'s agent. `.invalid`
never resolves (RFC 6761), so a role name can never be taken for a host name,
and a node's certificate (valid for its own host, maybe the scheduler's too)
cannot pass for a scheduler's.
"""

from __future__ import annotations

import enum
import re

__all__ = [
    "SCHEDULER",
    "IdentityError",
    "Role",
    "identity_for",
    "node_identity",
    "role_of",
    "server_name",
]

SCHEDULER = "scheduler"
ROLE_DOMAIN = "orch.invalid"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # a DNS label: it becomes part of a DNS name


class IdentityError(ValueError):
    """A name that cannot be part of an identity."""


class Role(enum.Enum):
    SCHEDULER = "scheduler"
    NODE = "node"
    ADMIN = "admin"
    VIEWER = "viewer"


def node_identity(name: str) -> str:
    return f"node:{name}"


def identity_for(role: Role, name: str) -> str:
    """The common name to issue for role and name (a scheduler's name is only its file's)."""
    if not _NAME.fullmatch(name) or len(name) > 63:
        raise IdentityError(f'"{name}" is not a valid name: use lowercase letters, digits and "-" (at most 63)')
    return SCHEDULER if role is Role.SCHEDULER else f"{role.value}:{name}"


def role_of(identity: str) -> Role | None:
    """The role of a verified identity; None for anything else (it may do nothing)."""
    if identity in (SCHEDULER, Role.ADMIN.value):
        return Role(identity)
    kind, sep, name = identity.partition(":")
    if sep and name and kind in (Role.NODE.value, Role.ADMIN.value, Role.VIEWER.value):
        return Role(kind)
    return None


def server_name(identity: str) -> str:
    """The DNS name a server with this identity proves, and its clients ask for."""
    role = role_of(identity)
    if role is Role.SCHEDULER:
        return f"{SCHEDULER}.{ROLE_DOMAIN}"
    if role is Role.NODE:
        return f"{identity.partition(':')[2]}.node.{ROLE_DOMAIN}"
    raise IdentityError(f'"{identity}" is not a server identity (scheduler or node:<name>)')
