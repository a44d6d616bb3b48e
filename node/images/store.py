"""The node's image store: content-addressed blobs, shared unpacked layers, image records, a ref index.

    <root>/blobs/sha256/<hex>     manifests and configs (layer blobs are dropped once unpacked)
    <root>/layers/<diff_id hex>/  one unpacked layer, shared by every image that has it (overlay lowerdir)
    <root>/images/<hex>.json      one record per image: refs, digest, diff_ids bottom-first, process config
    <root>/refs.json              normalised reference -> image digest
    <root>/tmp/                   downloads and extractions in flight; emptied when a store opens

Every digest that becomes a name here (layer dir, blob, record) has passed node.images.digest,
including the records and refs read back from disk: a record naming `sha256:/etc` is never a layer.
Everything lands with a rename after verification, so a failed or interrupted pull leaves nothing
half-written. Concurrency: one lock per reference (the second prepare() of the same image waits and
then finds it stored) and one per layer (images sharing a base download it once). Pulls pin their
layers until the record is written, so gc() can never delete a layer an in-flight pull relies on.
One process owns a store root; the locks are not shared across processes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from node.images.archive import DockerArchiveSource, OciLayoutSource
from node.images.auth import default_auth_file, load_credentials
from node.images.digest import digest_hex, sha256_digest
from node.images.errors import DigestMismatch, ImageNotFound, LayerRejected
from node.images.extract import extract_layer
from node.images.manifest import Descriptor, Platform, host_platform
from node.images.process import ImageConfig
from node.images.record import ImageRecord, refs_from_json
from node.images.reference import Reference, parse_reference
from node.images.source import Resolved, Source
from node.images.usage import DiskUsage, GcResult, tree_bytes
from orch.files import write_atomic
from orch.trees import remove_tree

if TYPE_CHECKING:
    from node.images.registry import RegistryClient

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    ref: str
    digest: str
    lower_dirs: tuple[Path, ...]  # top layer FIRST: overlayfs lowerdir order
    config: ImageConfig


class ImageStore:
    def __init__(
        self,
        root: Path,
        *,
        auth_file: Path | None = None,
        insecure: Sequence[str] = (),
        platform: Platform | None = None,
        max_parallel: int = 4,
    ) -> None:
        self.root = root
        self.platform = platform or host_platform()
        self._parallel = max_parallel
        self._credentials = load_credentials(auth_file or default_auth_file())  # a bad file fails now
        self._insecure = tuple(insecure)
        self._registry: RegistryClient | None = None  # at the first registry pull (_registry_client)
        for sub in ("blobs/sha256", "layers", "images"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        _discard(root / "tmp")  # leftovers of a crash: never complete
        (root / "tmp").mkdir(exist_ok=True)
        self._state = threading.Lock()  # refs index, records, pins, gc
        self._locks_guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._pins: Counter[str] = Counter()
        self._refs: dict[str, str] = self._load_refs()

    def close(self) -> None:
        """Close the registry connections (the store stays usable: they reopen on the next pull)."""
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> ImageStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prepare(self, image: str) -> PreparedImage:
        """The image's layers and config, pulling or importing it first if it is not stored (blocking)."""
        ref = parse_reference(image)
        if ref.transport == "rootfs":
            return PreparedImage(str(ref), "", (_rootfs_dir(ref, image),), ImageConfig())
        key = str(ref)
        with self._lock(f"ref:{key}"):
            found = self._lookup(ref)
            if found is not None:
                return found
            return self._pull(ref, key)

    def is_present(self, image: str) -> bool:
        """Whether prepare() would need no network or archive read."""
        ref = parse_reference(image)
        if ref.transport == "rootfs":
            return Path(ref.path).is_dir()
        return self._lookup(ref) is not None

    def gc(self, keep: set[str]) -> GcResult:
        """Remove images not named in `keep`, then every layer and blob no remaining image uses."""
        keep_keys = {str(r) for r in _parse_all(keep)}
        with self._state:
            paths = {p.stem: p for p in (self.root / "images").glob("*.json")}
            records = {h: r for h, p in paths.items() if (r := _read_record(p)) is not None}
            kept = {digest_hex(self._refs[k]) for k in keep_keys if k in self._refs}
            kept |= {digest_hex(r.digest) for r in _parse_all(keep) if r.digest}
            freed, removed_images = 0, 0
            for hexd in set(paths) - (kept & set(records)):  # unwanted, or unreadable: pulled again if needed
                paths[hexd].unlink()
                removed_images += 1
            self._refs = {k: d for k, d in self._refs.items() if digest_hex(d) in kept}
            self._save_refs()
            live = {name for h in kept & set(records) for name in records[h].files()}
            freed_layers, removed_layers = _sweep(self.root / "layers", live | set(self._pins))
            freed_blobs, removed_blobs = _sweep(self.root / "blobs" / "sha256", live)
            freed += freed_layers + freed_blobs
        return GcResult(freed, removed_images, removed_layers, removed_blobs)

    def disk_usage(self) -> DiskUsage:
        with self._state:
            layers = tree_bytes(self.root / "layers")
            blobs = tree_bytes(self.root / "blobs")
            images = sum(1 for _ in (self.root / "images").glob("*.json"))
            n_layers = sum(1 for _ in (self.root / "layers").iterdir())
        return DiskUsage(layers + blobs, layers, blobs, images, n_layers)

    # -- pulling --------------------------------------------------------------------------------

    def _pull(self, ref: Reference, key: str) -> PreparedImage:
        source = self._source(ref)
        pinned: list[str] = []
        try:
            res = source.resolve()
            pinned = [digest_hex(d) for d in res.diff_ids]
            with self._state:
                self._pins.update(pinned)
            self._fetch_layers(source, res, key)
            return self._commit(res, key)
        finally:
            source.close()
            with self._state:
                self._pins.subtract(pinned)
                self._pins = +self._pins  # drop zero counts

    def _registry_client(self) -> RegistryClient:
        # Imported at the first registry pull: httpx (and what its __init__ drags in: its CLI's
        # click and pygments) is 1-2 MiB RSS the agent need not hold while it runs local images.
        from node.images.registry import RegistryClient

        with self._state:
            if self._registry is None:
                self._registry = RegistryClient(self._credentials, self._insecure)
            return self._registry

    def _source(self, ref: Reference) -> Source:
        image = str(ref)
        if ref.transport == "docker":
            from node.images.registry import RegistrySource

            return RegistrySource(self._registry_client(), ref, self.platform)
        if ref.transport == "oci":
            return OciLayoutSource.from_dir(Path(ref.path), image, ref.tag, self.platform)
        if ref.transport == "oci-archive":
            return OciLayoutSource.from_archive(Path(ref.path), image, ref.tag, self.platform)
        return DockerArchiveSource(Path(ref.path), image)

    def _fetch_layers(self, source: Source, res: Resolved, image: str) -> None:
        # Threads, not asyncio: the work is blocking I/O and extraction, and prepare() is itself blocking.
        with ThreadPoolExecutor(max_workers=self._parallel, thread_name_prefix="orch-pull") as pool:
            futures = [
                pool.submit(self._ensure_layer, source, desc, diff_id, image)
                for desc, diff_id in zip(res.layers, res.diff_ids, strict=True)
            ]
        for future in futures:  # every thread has finished (and cleaned up) before the first error is raised
            future.result()

    def _ensure_layer(self, source: Source, desc: Descriptor, diff_id: str, image: str) -> None:
        hexid = digest_hex(diff_id, "diff_id")
        final = self.root / "layers" / hexid
        with self._lock(f"layer:{hexid}"):
            if final.is_dir():
                return
            work = Path(tempfile.mkdtemp(prefix=f"layer-{hexid[:12]}-", dir=self.root / "tmp"))
            try:
                source.fetch_layer(desc, diff_id, work / "blob")
                (work / "rootfs").mkdir()
                extract_layer(work / "blob", work / "rootfs", desc.digest or diff_id, diff_id)
                os.chmod(work / "rootfs", 0o755)
                os.rename(work / "rootfs", final)
            except LayerRejected as exc:
                raise LayerRejected(exc.digest, exc.member, exc.why, image) from exc
            except DigestMismatch as exc:
                if str(exc).startswith("pull "):
                    raise
                raise DigestMismatch(f"pull {image}: {exc}") from exc
            finally:
                _discard(work)

    def _commit(self, res: Resolved, key: str) -> PreparedImage:
        path = self.root / "images" / f"{digest_hex(res.manifest_digest)}.json"
        manifest, config = _put_blob(self.root, res.manifest_raw), _put_blob(self.root, res.config_raw)
        with self._state:
            old = _read_record(path)
            refs = {key} | set(old.refs if old is not None else ())
            record = ImageRecord(tuple(refs), res.manifest_digest, manifest, config, res.diff_ids, res.config)
            write_atomic(path, json.dumps(record.to_json(), indent=1).encode(), mode=0o600)
            self._refs[key] = res.manifest_digest
            self._save_refs()
        return self._prepared(key, record)

    # -- lookups ----------------------------------------------------------------------------------

    def _lookup(self, ref: Reference) -> PreparedImage | None:
        key = str(ref)
        with self._state:
            digest = self._refs.get(key) or ref.digest  # both checked: refs when loaded, ref.digest when parsed
            record = _read_record(self.root / "images" / f"{digest_hex(digest)}.json") if digest else None
            if record is None:
                return None
            prepared = self._prepared(key, record)
        if not all(d.is_dir() for d in prepared.lower_dirs):
            return None  # a layer went missing (manual cleanup): pull again
        return prepared

    def _prepared(self, key: str, record: ImageRecord) -> PreparedImage:
        layers = tuple(self.root / "layers" / digest_hex(d) for d in reversed(record.diff_ids))
        return PreparedImage(key, record.digest, layers, record.config)

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            yield

    def _load_refs(self) -> dict[str, str]:
        path = self.root / "refs.json"
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("image store: ignoring unreadable %s (its images are pulled again): %s", path, exc)
            return {}
        refs, dropped = refs_from_json(doc)
        for problem in dropped:
            log.warning("image store: %s: dropped %s", path, problem)
        return refs

    def _save_refs(self) -> None:
        write_atomic(self.root / "refs.json", json.dumps(self._refs, indent=1, sort_keys=True).encode(), mode=0o600)


def _rootfs_dir(ref: Reference, image: str) -> Path:
    path = Path(ref.path)
    if not path.is_dir():
        raise ImageNotFound(f'image "{image}": {path} is not a directory')
    return path


def _parse_all(images: set[str]) -> list[Reference]:
    refs = []
    for image in images:
        try:
            refs.append(parse_reference(image))
        except ValueError:
            continue  # an invalid name keeps nothing
    return refs


def _sweep(directory: Path, live: set[str]) -> tuple[int, int]:
    """Remove what is not live; one entry that cannot be removed is logged and the sweep goes on."""
    freed = removed = 0
    for entry in directory.iterdir():
        if entry.name not in live:
            try:
                size = tree_bytes(entry)
                remove_tree(entry)
            except Exception as exc:
                log.warning("image gc: cannot remove %s: %s", entry, exc)
                continue
            freed += size
            removed += 1
    return freed, removed


def _discard(path: Path) -> None:
    """Remove a tree of ours that an image shaped (an extraction); a failure is only logged:
    its name is unique, so what is left can be in no one's way."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("image store: cannot remove %s: %s", path, exc)


def _put_blob(root: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    path = root / "blobs" / "sha256" / digest_hex(digest)
    if not path.exists():
        write_atomic(path, data, mode=0o600)
    return digest


def _read_record(path: Path) -> ImageRecord | None:
    """The record at `path`; None when there is none or it cannot be trusted (logged)."""
    try:
        doc = json.loads(path.read_bytes())
        return ImageRecord.from_json(doc, str(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ImageError is a ValueError
        log.warning("image store: ignoring %s: %s", path, exc)
        return None
