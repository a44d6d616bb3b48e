"""The one grammar of `image:` strings: Docker references plus the oci/oci-archive/docker-archive/rootfs
transports. The scheduler validates with it at apply, the node parses with it before a pull.

busybox                          -> docker.io/library/busybox:latest
127.0.0.1:5000/team/app:v1       -> registry 127.0.0.1:5000, repository team/app, tag v1
app@sha256:<64 hex>              -> pinned by digest (a tag next to it is kept for display only)
oci:/layout[:tag]  oci-archive:/x.tar[:tag]  docker-archive:/x.tar  rootfs:/dir
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DIGEST_PATTERN", "DIGEST_SHAPE", "DOCKER_HUB", "BadReference", "Reference", "parse_reference"]

DOCKER_HUB = "docker.io"
DIGEST_SHAPE = "sha256:<64 hex>"
# Digests become file and URL path names: only this shape, everywhere (node/images/digest.py).
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)"
_REPO = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN = re.compile(rf"{_HOST}(?::[0-9]{{1,5}})?")
_TAG = re.compile(r"\w[\w.-]{0,127}")
_FILE_TRANSPORTS = ("oci-archive", "docker-archive", "oci", "rootfs")


class BadReference(ValueError):
    def __init__(self, image: str, reason: str) -> None:
        super().__init__(f'image "{image}": {reason}')
        self.image = image
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed image reference. `transport` is "docker" for registry images, else the prefix."""

    transport: str
    registry: str = ""
    repository: str = ""
    tag: str = ""
    digest: str = ""
    path: str = ""  # file transports only

    def __str__(self) -> str:
        if self.transport != "docker":
            return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        return out + (f"@{self.digest}" if self.digest else "")

    @property
    def remote_reference(self) -> str:
        """What goes into /v2/<repo>/manifests/<reference>: the digest when pinned, else the tag."""
        return self.digest or self.tag


def parse_reference(image: str) -> Reference:
    """Parse and normalise `image`; BadReference with the reason."""
    if not image:
        raise BadReference(image, "empty")
    if any(c.isspace() for c in image):
        raise BadReference(image, "contains whitespace")
    transport, colon, rest = image.partition(":")
    if colon and transport in _FILE_TRANSPORTS:
        return _parse_file(image, transport, rest)
    return _parse_docker(image)


def _parse_file(image: str, transport: str, rest: str) -> Reference:
    if not rest.startswith("/"):
        raise BadReference(image, f'the path after "{transport}:" must be absolute')
    path, tag = rest, ""
    if transport in ("oci", "oci-archive"):
        head, sep, tail = rest.rpartition(":")
        if sep and "/" not in tail:  # a colon inside the last path element is a tag
            if not _TAG.fullmatch(tail):
                raise BadReference(image, f'"{tail}" is not a valid tag')
            path, tag = head, tail
    return Reference(transport, path=path.rstrip("/") or "/", tag=tag)


def _parse_docker(image: str) -> Reference:
    name, at, digest = image.partition("@")
    if at and not DIGEST_PATTERN.fullmatch(digest):
        raise BadReference(image, f'the digest after "@" must be {DIGEST_SHAPE} (lowercase)')
    registry, repo = DOCKER_HUB, name
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, repo = first, remainder
        if not _DOMAIN.fullmatch(registry):
            raise BadReference(image, f'"{registry}" is not a valid registry host[:port]')
    tag = ""
    last_slash = repo.rfind("/")
    base, colon, maybe_tag = repo[last_slash + 1 :].partition(":")
    if colon:
        if not _TAG.fullmatch(maybe_tag):
            raise BadReference(image, f'"{maybe_tag}" is not a valid tag')
        repo, tag = repo[: last_slash + 1] + base, maybe_tag
    if not _REPO.fullmatch(repo):
        raise BadReference(image, f'"{repo}" is not a valid repository (lowercase letters, digits, ".", "_", "-", "/")')
    if registry == DOCKER_HUB and "/" not in repo:
        repo = f"library/{repo}"
    if not tag and not digest:
        tag = "latest"
    return Reference("docker", registry=registry, repository=repo, tag=tag, digest=digest)
