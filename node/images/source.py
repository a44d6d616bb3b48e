"""Where an image comes from: a Source resolves to a manifest + config and hands out verified blobs.

The store does the rest (layer dedup, concurrency, extraction), the same for every transport.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from node.images.errors import DigestMismatch, ImageError
from node.images.manifest import Descriptor
from node.images.process import ImageConfig, parse_image_config

CHUNK = 1 << 20
MAX_SMALL_BLOB = 16 << 20  # manifests, indexes and configs are read into memory: no bigger than this


@dataclass(frozen=True, slots=True)
class Resolved:
    """What an image is, before any layer is fetched."""

    manifest_digest: str  # the record key; docker-archive has no manifest and uses the config digest
    manifest_raw: bytes
    config_raw: bytes
    config: ImageConfig
    diff_ids: tuple[str, ...]
    layers: tuple[Descriptor, ...]  # bottom layer first, same order as diff_ids


class Source(Protocol):
    def resolve(self) -> Resolved: ...

    def close(self) -> None: ...

    def fetch_layer(self, desc: Descriptor, diff_id: str, dest: Path) -> None:
        """Write the layer blob to `dest` (a fresh temp path) and verify its digest (if it has one)."""


def resolved(
    image: str, digest: str, manifest_raw: bytes, config_raw: bytes, layers: tuple[Descriptor, ...]
) -> Resolved:
    config, diff_ids = parse_image_config(config_raw, f"pull {image}")
    if len(diff_ids) != len(layers):
        raise ImageError(
            f"pull {image}: manifest has {len(layers)} layers but the config lists {len(diff_ids)} diff_ids"
        )
    return Resolved(digest, manifest_raw, config_raw, config, diff_ids, layers)


def copy_verified(src: IO[bytes], dest: Path, desc: Descriptor, what: str) -> None:
    """Stream `src` into `dest`, checking size and sha256 against `desc`."""
    digest = hashlib.sha256()
    size = 0
    with dest.open("xb") as out:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    check_digest(what, desc, "sha256:" + digest.hexdigest(), size)


def check_digest(what: str, desc: Descriptor, got: str, size: int) -> None:
    if got != desc.digest:
        raise DigestMismatch(f"{what}: blob {desc.digest} hashes to {got}")
    if desc.size >= 0 and size != desc.size:
        raise DigestMismatch(f"{what}: blob {desc.digest} has {size} bytes, the manifest says {desc.size}")
