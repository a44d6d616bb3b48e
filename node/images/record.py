"""The store's own files, as data: one image record (`images/<hex>.json`) and the ref index (`refs.json`).

Both are read back from disk, where a file written by an older orch (or by hand) may hold anything.
Their digests become layer and blob paths, so they pass the same check as a digest from a registry:
a record that fails it raises ImageError (the store sets it aside and pulls again); a bad ref entry
is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from node.images.digest import digest_hex, parse_digest
from node.images.errors import ImageError
from node.images.process import ImageConfig, config_from_json, config_to_json

__all__ = ["ImageRecord", "refs_from_json"]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    refs: tuple[str, ...]
    digest: str  # the manifest's (docker-archive: the config's): the record's file name
    manifest: str  # blob digests kept in blobs/sha256/
    config_digest: str
    diff_ids: tuple[str, ...]  # bottom layer first
    config: ImageConfig

    def to_json(self) -> dict[str, Any]:
        return {
            "refs": sorted(self.refs),
            "digest": self.digest,
            "manifest": self.manifest,
            "config_digest": self.config_digest,
            "diff_ids": list(self.diff_ids),
            "config": config_to_json(self.config),
        }

    @classmethod
    def from_json(cls, doc: object, what: str) -> ImageRecord:
        """Raises ImageError (InvalidDigest for a digest that is not sha256:<64 hex>)."""
        if not isinstance(doc, dict):
            raise ImageError(f"{what}: not a JSON object")
        try:
            refs, ids, config = doc["refs"], doc["diff_ids"], doc["config"]
            if not isinstance(refs, list) or not isinstance(ids, list) or not isinstance(config, Mapping):
                raise TypeError("refs and diff_ids must be lists, config an object")
            return cls(
                refs=tuple(str(r) for r in refs),
                digest=parse_digest(doc["digest"], f"{what}: digest"),
                manifest=parse_digest(doc["manifest"], f"{what}: manifest"),
                config_digest=parse_digest(doc["config_digest"], f"{what}: config_digest"),
                diff_ids=tuple(parse_digest(d, f"{what}: diff_id") for d in ids),
                config=config_from_json(config),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ImageError):
                raise
            raise ImageError(f"{what}: malformed image record: {exc!r}") from exc

    def files(self) -> set[str]:
        """Hex names of the layers and blobs this image keeps alive."""
        return {digest_hex(d) for d in (*self.diff_ids, self.manifest, self.config_digest)}


def refs_from_json(doc: object) -> tuple[dict[str, str], list[str]]:
    """(reference -> image digest, the entries dropped because their digest is not sha256:<64 hex>)."""
    if not isinstance(doc, dict):
        return {}, ["refs.json is not a JSON object"]
    refs: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in doc.items():
        try:
            refs[str(key)] = parse_digest(value, f"refs.json: {key}")
        except ImageError as exc:
            dropped.append(str(exc))
    return refs, dropped
