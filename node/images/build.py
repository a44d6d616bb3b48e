"""Write deterministic OCI image layouts without docker (the demo's build step and the tests' images).

Same input, same bytes, same digests: tar members sorted, owned by 0:0, mtime 0; gzip with mtime 0.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.images.digest import sha256_digest
from node.images.manifest import OCI_INDEX, OCI_MANIFEST

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"


@dataclass(frozen=True, slots=True)
class Entry:
    """One tar member: a file (data), a directory (is_dir), a symlink (link) or a hardlink (hardlink)."""

    name: str
    data: bytes = b""
    mode: int = 0o644
    is_dir: bool = False
    link: str = ""
    hardlink: str = ""
    kind: bytes = b""  # raw tarfile type for anything else (tests: devices)
    device: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True)
class ImageSpec:
    layers: Sequence[bytes]  # uncompressed tars, bottom first
    cmd: Sequence[str] = ()
    entrypoint: Sequence[str] = ()
    env: Sequence[str] = ("PATH=/bin:/usr/bin",)
    working_dir: str = ""
    architecture: str = "amd64"
    extra_platforms: Sequence[str] = field(default_factory=tuple)  # e.g. ("arm64",): write an index
    gzip: bool = True


def tar_entries(entries: Iterable[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in sorted(entries, key=lambda e: e.name):
            info = tarfile.TarInfo(e.name)
            info.mode, info.mtime, info.uid, info.gid = e.mode, 0, 0, 0
            if e.is_dir:
                info.type = tarfile.DIRTYPE
            elif e.link:
                info.type, info.linkname = tarfile.SYMTYPE, e.link
            elif e.hardlink:
                info.type, info.linkname = tarfile.LNKTYPE, e.hardlink
            elif e.kind:
                info.type, (info.devmajor, info.devminor) = e.kind, e.device
            else:
                info.size = len(e.data)
            tar.addfile(info, io.BytesIO(e.data) if info.isreg() else None)
    return buf.getvalue()


def directory_entries(root: Path) -> list[Entry]:
    """Files, directories and symlinks under `root` (modes kept, owners and times dropped)."""
    out: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out.append(Entry(rel, link=os.readlink(path), mode=0o777))
            elif stat.S_ISDIR(st.st_mode):
                out.append(Entry(rel, is_dir=True, mode=mode))
            elif stat.S_ISREG(st.st_mode):
                out.append(Entry(rel, data=path.read_bytes(), mode=mode))
    return out


def write_layout(layout: Path, tag: str, spec: ImageSpec) -> str:
    """Write (or add `tag` to) an OCI layout; return the digest that index.json points to for `tag`."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layer_descs = [_put(layout, _compress(t, spec.gzip), LAYER_GZIP if spec.gzip else LAYER_TAR) for t in spec.layers]
    diff_ids = [sha256_digest(t) for t in spec.layers]
    manifests = [
        _manifest(layout, spec, arch, layer_descs, diff_ids) for arch in (spec.architecture, *spec.extra_platforms)
    ]
    top = manifests[0]
    if spec.extra_platforms:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        top = _put(layout, _json(index), OCI_INDEX)
    top = dict(top, annotations={"org.opencontainers.image.ref.name": tag})
    top.pop("platform", None)
    index_path = layout / "index.json"
    old = json.loads(index_path.read_text())["manifests"] if index_path.exists() else []
    keep = [m for m in old if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") != tag]
    index_path.write_bytes(_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*keep, top]}))
    return str(top["digest"])


def _manifest(
    layout: Path, spec: ImageSpec, arch: str, layers: list[dict[str, Any]], diff_ids: list[str]
) -> dict[str, Any]:
    config: dict[str, Any] = {"Env": list(spec.env)}
    if spec.cmd:
        config["Cmd"] = list(spec.cmd)
    if spec.entrypoint:
        config["Entrypoint"] = list(spec.entrypoint)
    if spec.working_dir:
        config["WorkingDir"] = spec.working_dir
    doc = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        # umoci 0.4.7 stat segfaults on history entries without "created" (RECIPES §4)
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "orch build"} for _ in diff_ids],
    }
    config_desc = _put(layout, _json(doc), CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": layers}
    return dict(_put(layout, _json(manifest), OCI_MANIFEST), platform={"os": "linux", "architecture": arch})


def _compress(data: bytes, use_gzip: bool) -> bytes:
    return gzip.compress(data, mtime=0) if use_gzip else data


def _json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _put(layout: Path, data: bytes, media_type: str) -> dict[str, Any]:
    digest = sha256_digest(data)
    (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}
