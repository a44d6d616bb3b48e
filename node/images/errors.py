"""Errors of the image store; every message names the image and what happened.

ImageError (ValueError, so existing `except ValueError` callers still catch it)
├── InvalidReference     the `image:` string does not parse
├── ImageNotFound        manifest 404 / unknown tag / no manifest for this platform / missing file
├── Unauthorized         401/403 after trying the configured credentials
├── DigestMismatch       a manifest, config, blob or layer diff_id does not hash to what was promised
├── InvalidDigest        a digest, diff_id or blob name is not sha256:<64 hex> (it would become a path)
├── RegistryUnreachable  connection errors or 5xx after the retries
├── LayerRejected        an unsafe tar member (path traversal, link escape, ...)
└── NoCommand            neither the manifest nor the image config gives a command
"""

from __future__ import annotations


class ImageError(ValueError):
    """The image reference cannot be turned into a root filesystem."""


class InvalidReference(ImageError):
    pass


class ImageNotFound(ImageError):
    pass


class Unauthorized(ImageError):
    pass


class DigestMismatch(ImageError):
    pass


class InvalidDigest(ImageError):
    def __init__(self, message: str, value: object = None) -> None:
        super().__init__(message)
        self.value = value


class RegistryUnreachable(ImageError):
    pass


class NoCommand(ImageError):
    pass


class LayerRejected(ImageError):
    def __init__(self, digest: str, member: str, why: str, image: str = "") -> None:
        where = f"pull {image}: " if image else ""
        super().__init__(f"{where}layer {digest}: member {member!r} rejected: {why}")
        self.image = image
        self.digest = digest
        self.member = member
        self.why = why
