"""Hand-made malicious images: OCI layouts and docker-archives whose JSON says what an attacker wants.

`crafted_layout` writes a valid one-image OCI layout and lets a test rewrite the config, the manifest
or index.json on the way (blobs stay content-addressed, so only the edited field is wrong).
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from node.images.build import CONFIG, LAYER_GZIP, LAYER_TAR
from node.images.digest import sha256_digest
from node.images.manifest import OCI_INDEX, OCI_MANIFEST

Edit = Callable[[dict[str, Any]], None]
HEX = "ab" * 32


def _nothing(doc: dict[str, Any]) -> None:
    pass


def put_blob(layout: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = sha256_digest(data)
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def config_doc(layers: Sequence[bytes], cmd: Sequence[str] = ("sh",)) -> dict[str, Any]:
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for t in layers]},
    }


def crafted_layout(
    layout: Path,
    tag: str,
    layers: Sequence[bytes],
    *,
    config: Edit = _nothing,
    manifest: Edit = _nothing,
    index: Edit = _nothing,
    compress: bool = False,
) -> Path:
    """An OCI layout holding one image of `layers` (uncompressed tars), with the given edits applied."""
    cfg = config_doc(layers)
    config(cfg)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": put_blob(layout, json.dumps(cfg).encode(), CONFIG),
        "layers": [
            put_blob(layout, gzip.compress(t, mtime=0), LAYER_GZIP) if compress else put_blob(layout, t, LAYER_TAR)
            for t in layers
        ],
    }
    manifest(doc)
    entry = put_blob(layout, json.dumps(doc).encode(), OCI_MANIFEST)
    entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    idx = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
    index(idx)
    (layout / "index.json").write_text(json.dumps(idx))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return layout


def docker_archive(
    path: Path,
    layers: Sequence[bytes],
    *,
    config: Edit = _nothing,
    entry: Edit = _nothing,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """What `docker save` writes (skopeo's names: <hex>.json, <hex>.tar), with the given edits and members."""
    cfg = config_doc(layers)
    config(cfg)
    raw = json.dumps(cfg).encode()
    members = {f"{sha256_digest(raw).removeprefix('sha256:')}.json": raw}
    names = []
    for layer in layers:
        names.append(f"{sha256_digest(layer).removeprefix('sha256:')}.tar")
        members[names[-1]] = layer
    doc = {"Config": next(iter(members)), "RepoTags": ["evil:1"], "Layers": names}
    entry(doc)
    members["manifest.json"] = json.dumps([doc]).encode()
    members |= extra or {}
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def point_tag_at_index(layout: Path, tag: str, entries: list[dict[str, Any]]) -> None:
    """Make `tag` an image index (manifest list) of `entries` (descriptors with a platform)."""
    top = put_blob(
        layout, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode(), OCI_INDEX
    )
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]}))


def tag_entry(layout: Path, tag: str) -> dict[str, Any]:
    """index.json's entry for `tag`."""
    index = json.loads((layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    return dict(entry)
