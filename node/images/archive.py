"""Local image sources: an OCI layout directory (`oci:`), a tar of one (`oci-archive:`) and what
`docker save` / `skopeo copy ... docker-archive:` write (`docker-archive:`).

Archives are read member by member through tarfile, never extracted to disk as they are, so the
archive's own paths cannot escape anything; every blob is still verified like a registry blob.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import threading
from pathlib import Path
from typing import IO, Any, Protocol

from node.images.errors import ImageError, ImageNotFound
from node.images.manifest import (
    INDEX_TYPES,
    Descriptor,
    Platform,
    load_json,
    media_type_of,
    parse_manifest,
    select_platform,
    sha256_digest,
    verify_bytes,
)
from node.images.source import Resolved, copy_verified, resolved

_REF_NAME = "org.opencontainers.image.ref.name"


class _Files(Protocol):
    def read(self, name: str) -> bytes: ...

    def close(self) -> None: ...

    def copy_to(self, name: str, dest: Path, desc: Descriptor, what: str) -> None: ...


class _DirFiles:
    def __init__(self, root: Path, image: str) -> None:
        if not root.is_dir():
            raise ImageNotFound(f"pull {image}: {root} is not a directory")
        self.root, self.image = root, image

    def _path(self, name: str) -> Path:
        path = self.root / name
        if ".." in Path(name).parts or not path.is_file():
            raise ImageNotFound(f"pull {self.image}: {name} is missing from {self.root}")
        return path

    def read(self, name: str) -> bytes:
        return self._path(name).read_bytes()

    def close(self) -> None:
        pass

    def copy_to(self, name: str, dest: Path, desc: Descriptor, what: str) -> None:
        with self._path(name).open("rb") as src:
            _copy(src, dest, desc, what)


class _TarFiles:
    """Members by normalised name; one lock because a TarFile has a single read position."""

    def __init__(self, path: Path, image: str) -> None:
        if not path.is_file():
            raise ImageNotFound(f"pull {image}: {path} does not exist")
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - open for the whole pull; close() closes it
        except tarfile.TarError as exc:
            raise ImageError(f"pull {image}: {path} is not a tar archive: {exc}") from exc
        self.members = {m.name.removeprefix("./"): m for m in self.tar.getmembers() if m.isreg()}
        self.path, self.image = path, image
        self.lock = threading.Lock()

    def _open(self, name: str) -> IO[bytes]:
        member = self.members.get(name.removeprefix("./"))
        src = self.tar.extractfile(member) if member else None
        if src is None:
            raise ImageNotFound(f"pull {self.image}: {name} is missing from {self.path}")
        return src

    def read(self, name: str) -> bytes:
        with self.lock:
            return self._open(name).read()

    def close(self) -> None:
        self.tar.close()

    def copy_to(self, name: str, dest: Path, desc: Descriptor, what: str) -> None:
        with self.lock:
            _copy(self._open(name), dest, desc, what)


def _copy(src: IO[bytes], dest: Path, desc: Descriptor, what: str) -> None:
    if desc.digest:
        copy_verified(src, dest, desc, what)
    else:  # docker-archive layers: checked against the config's diff_id while extracting
        with dest.open("xb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


def _blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


class OciLayoutSource:
    def __init__(self, files: _Files, image: str, tag: str, want: Platform) -> None:
        self.files, self.image, self.tag, self.want = files, image, tag, want

    @classmethod
    def from_dir(cls, path: Path, image: str, tag: str, want: Platform) -> OciLayoutSource:
        return cls(_DirFiles(path, image), image, tag, want)

    @classmethod
    def from_archive(cls, path: Path, image: str, tag: str, want: Platform) -> OciLayoutSource:
        return cls(_TarFiles(path, image), image, tag, want)

    def resolve(self) -> Resolved:
        desc = self._pick(load_json(self.files.read("index.json"), f"pull {self.image}: index.json"))
        raw = self._blob(desc)
        if media_type_of(load_json(raw, f"pull {self.image}: {desc.digest}"), desc.media_type) in INDEX_TYPES:
            desc = select_platform(raw, self.want, f"pull {self.image}")
            raw = self._blob(desc)
        manifest = parse_manifest(raw, desc.digest, f"pull {self.image}")
        return resolved(self.image, desc.digest, raw, self._blob(manifest.config), manifest.layers)

    def close(self) -> None:
        self.files.close()

    def fetch_layer(self, desc: Descriptor, diff_id: str, dest: Path) -> None:
        self.files.copy_to(_blob_name(desc.digest), dest, desc, f"pull {self.image}")

    def _blob(self, desc: Descriptor) -> bytes:
        raw = self.files.read(_blob_name(desc.digest))
        verify_bytes(raw, desc.digest, f"pull {self.image}: blob")
        return raw

    def _pick(self, index: dict[str, Any]) -> Descriptor:
        entries: list[dict[str, Any]] = index.get("manifests") or []
        tags = [str((e.get("annotations") or {}).get(_REF_NAME, "")) for e in entries]
        if self.tag:
            matches = [e for e, t in zip(entries, tags, strict=True) if t == self.tag]
        else:
            matches = entries if len(entries) == 1 else []
        if not matches:
            want = f'tag "{self.tag}"' if self.tag else "a tag (the layout holds several images)"
            raise ImageNotFound(f"pull {self.image}: needs {want}; the layout has tags {sorted(t for t in tags if t)}")
        e = matches[0]
        return Descriptor(str(e.get("mediaType", "")), str(e["digest"]), int(e.get("size", -1)))


class DockerArchiveSource:
    """`docker save` format: manifest.json lists Config and Layers (uncompressed tars) by path."""

    def __init__(self, path: Path, image: str) -> None:
        self.files = _TarFiles(path, image)
        self.image = image
        self.layer_paths: dict[str, str] = {}

    def resolve(self) -> Resolved:
        try:
            entry = json.loads(self.files.read("manifest.json"))[0]
            config_path, layer_paths = str(entry["Config"]), [str(p) for p in entry["Layers"]]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ImageError(f"pull {self.image}: malformed docker-archive manifest.json: {exc!r}") from exc
        config_raw = self.files.read(config_path)
        # The config's own digest is the Docker image ID: the record key, as there is no registry manifest.
        digest = sha256_digest(config_raw)
        layers = tuple(Descriptor("application/vnd.docker.image.rootfs.diff.tar", "", -1) for _ in layer_paths)
        result = resolved(self.image, digest, json.dumps(entry).encode(), config_raw, layers)
        self.layer_paths = dict(zip(result.diff_ids, layer_paths, strict=True))
        return result

    def close(self) -> None:
        self.files.close()

    def fetch_layer(self, desc: Descriptor, diff_id: str, dest: Path) -> None:
        """Docker-archive layers have no blob digest (desc.digest == ""): found and checked by diff_id."""
        self.files.copy_to(self.layer_paths[diff_id], dest, desc, f"pull {self.image}")
