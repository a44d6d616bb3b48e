"""Content digests: the one grammar for every digest, diff_id and blob name the store meets.

A digest becomes a file name (`layers/<hex>`, `blobs/sha256/<hex>`, `images/<hex>.json`) and a URL
path (`/v2/<repo>/blobs/<digest>`), so only `sha256:` followed by 64 lowercase hex digits is
accepted; anything else ("sha256:/etc", "sha256:../..", other algorithms) is refused where it
enters: references, registry manifests and indexes, image configs, OCI layouts, docker-archives,
and the store's own files read back from disk.
"""

from __future__ import annotations

import hashlib
import json

from node.images.errors import InvalidDigest
from orch.imageref import DIGEST_PATTERN, DIGEST_SHAPE

__all__ = ["DIGEST_SHAPE", "digest_hex", "is_digest", "parse_digest", "quote", "sha256_digest"]


_SHOWN = 120  # characters of a bad value shown in an error


def is_digest(value: object) -> bool:
    return isinstance(value, str) and DIGEST_PATTERN.fullmatch(value) is not None


def parse_digest(value: object, what: str) -> str:
    """`value` itself when it is a sha256 digest; else InvalidDigest `WHAT "VALUE" is not sha256:<64 hex>`."""
    if is_digest(value):
        assert isinstance(value, str)
        return value
    raise InvalidDigest(f"{what} {quote(value)} is not {DIGEST_SHAPE}", value)


def digest_hex(digest: str, what: str = "digest") -> str:
    """The hex part of a valid digest: the only way a digest becomes a file name."""
    return parse_digest(digest, what).removeprefix("sha256:")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def quote(value: object) -> str:
    """A value from an image, for one line of an error message: quoted, escaped, shortened."""
    text = json.dumps(value if isinstance(value, str) else repr(value), ensure_ascii=True)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 4] + '..."'
