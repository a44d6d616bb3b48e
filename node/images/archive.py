"""Local image sources: an OCI layout directory (`oci:`), a tar of one (`oci-archive:`) and what
`docker save` / `skopeo copy ... docker-archive:` write (`docker-archive:`).

Archives are read member by member through tarfile, never extracted to disk as they are, so the
archive's own paths cannot escape anything; every blob is still verified like a registry blob.
Blob names come only from validated digests (`blobs/sha256/<hex>`); a layout directory's files are
opened without following a final symlink and must be regular files, and the ones read into memory
(index.json, manifests, configs) are size-capped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tarfile
import threading
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from node.images.digest import digest_hex, quote, sha256_digest
from node.images.errors import DigestMismatch, ImageError, ImageNotFound, InvalidDigest
from node.images.manifest import (
    INDEX_TYPES,
    Descriptor,
    Platform,
    descriptor,
    load_json,
    media_type_of,
    parse_manifest,
    select_platform,
    verify_bytes,
)
from node.images.source import MAX_SMALL_BLOB, Resolved, copy_verified, resolved

_REF_NAME = "org.opencontainers.image.ref.name"
# docker-archive names its config after the config's own digest: `<hex>.json` (docker save, skopeo)
# or `blobs/sha256/<hex>` (docker save since 25); layers are members named by the archive's writer.
_CONFIG_NAME = re.compile(r"blobs/sha256/(?P<a>[0-9a-f]{64})|(?P<b>[0-9a-f]{64})\.json")
_MEMBER_NAME = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")


class _Files(Protocol):
    def read(self, name: str) -> bytes: ...

    def close(self) -> None: ...

    def copy_to(self, name: str, dest: Path, desc: Descriptor, what: str) -> None: ...


class _DirFiles:
    def __init__(self, root: Path, image: str) -> None:
        if not root.is_dir():
            raise ImageNotFound(f"pull {image}: {root} is not a directory")
        self.root, self.image = root, image

    def _open(self, name: str) -> BinaryIO:
        """The layout's file `name`, a regular file (no final symlink, no FIFO or device)."""
        path = self.root / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageNotFound(f"pull {self.image}: {name} is missing from {self.root}") from None
        except OSError as exc:
            raise ImageError(f"pull {self.image}: {path}: {exc.strerror} (a symlink?)") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ImageError(f"pull {self.image}: {path} is not a regular file")
        return os.fdopen(fd, "rb")

    def read(self, name: str) -> bytes:
        with self._open(name) as src:
            data = src.read(MAX_SMALL_BLOB + 1)
        if len(data) > MAX_SMALL_BLOB:
            raise ImageError(f"pull {self.image}: {self.root / name} is larger than {MAX_SMALL_BLOB} bytes")
        return data

    def close(self) -> None:
        pass

    def copy_to(self, name: str, dest: Path, desc: Descriptor, what: str) -> None:
        with self._open(name) as src:
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
        member = self.members.get(name.removeprefix("./"))
        if member is not None and member.size > MAX_SMALL_BLOB:
            raise ImageError(f"pull {self.image}: {name} in {self.path} is larger than {MAX_SMALL_BLOB} bytes")
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
    return "blobs/sha256/" + digest_hex(digest)


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
        entries: list[Any] = index.get("manifests") or []
        if not isinstance(entries, list):
            raise ImageError(f"pull {self.image}: index.json: manifests is not a list")
        # Every entry is checked, not only the wanted tag's: a layout naming a path is refused whole.
        descs = [descriptor(e, f"pull {self.image}: index.json: manifests[{i}]") for i, e in enumerate(entries)]
        tags = [str((e.get("annotations") or {}).get(_REF_NAME, "")) for e in entries]
        if self.tag:
            matches = [d for d, t in zip(descs, tags, strict=True) if t == self.tag]
        else:
            matches = descs if len(descs) == 1 else []
        if not matches:
            want = f'tag "{self.tag}"' if self.tag else "a tag (the layout holds several images)"
            raise ImageNotFound(f"pull {self.image}: needs {want}; the layout has tags {sorted(t for t in tags if t)}")
        return matches[0]


class DockerArchiveSource:
    """`docker save` format: manifest.json lists Config and Layers (uncompressed tars) by path."""

    def __init__(self, path: Path, image: str) -> None:
        self.files = _TarFiles(path, image)
        self.image = image
        self.layer_paths: dict[str, str] = {}

    def resolve(self) -> Resolved:
        try:
            entry = json.loads(self.files.read("manifest.json"))[0]
            config_path, layer_paths = entry["Config"], list(entry["Layers"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ImageError(f"pull {self.image}: malformed docker-archive manifest.json: {exc!r}") from exc
        promised = _config_digest(config_path, f"pull {self.image}: manifest.json: Config")
        for i, name in enumerate(layer_paths):
            _member_name(name, f"pull {self.image}: manifest.json: Layers[{i}]")
        config_raw = self.files.read(config_path)
        # The config's own digest is the Docker image ID: the record key, as there is no registry manifest.
        digest = sha256_digest(config_raw)
        if digest != promised:
            raise DigestMismatch(f"pull {self.image}: manifest.json: Config {config_path} hashes to {digest}")
        layers = tuple(Descriptor("application/vnd.docker.image.rootfs.diff.tar", "", -1) for _ in layer_paths)
        result = resolved(self.image, digest, json.dumps(entry).encode(), config_raw, layers)
        self.layer_paths = dict(zip(result.diff_ids, layer_paths, strict=True))
        return result

    def close(self) -> None:
        self.files.close()

    def fetch_layer(self, desc: Descriptor, diff_id: str, dest: Path) -> None:
        """Docker-archive layers have no blob digest (desc.digest == ""): found and checked by diff_id."""
        self.files.copy_to(self.layer_paths[diff_id], dest, desc, f"pull {self.image}")


def _config_digest(name: object, what: str) -> str:
    """The digest a docker-archive's Config name promises (its content is checked against it)."""
    found = _CONFIG_NAME.fullmatch(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidDigest(f"{what} {quote(name)} is not <64 hex>.json or blobs/sha256/<64 hex>", name)
    return "sha256:" + (found["a"] or found["b"])


def _member_name(name: object, what: str) -> str:
    """A member name inside the archive: relative, no `..`, plain characters."""
    if not isinstance(name, str) or not _MEMBER_NAME.fullmatch(name) or ".." in name.split("/"):
        raise ImageError(f"{what} {quote(name)} is not a relative name inside the archive")
    return name
