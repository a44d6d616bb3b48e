"""Container images on a node: references, registry pulls, archives, a shared layer store.

Vocabulary:
    reference     what `image:` says: a registry name (`busybox`, `127.0.0.1:5000/app:1`, `app@sha256:..`),
                  `oci:/layout[:tag]`, `oci-archive:/x.tar[:tag]`, `docker-archive:/x.tar` or `rootfs:/dir`
    blob          content-addressed bytes (manifest, config, compressed layer), always verified by sha256
    digest        `sha256:<64 hex>` and nothing else (node.images.digest): digests become file names
    layer         an unpacked layer tar, keyed by its diff_id, shared by every image that has it, used
                  read-only as an overlayfs lowerdir (whiteouts already in overlay's format)
    record        one stored image: its refs, manifest digest, diff_ids and process defaults

Typical use by the agent (blocking; call from a worker thread)::

    store = ImageStore(state_dir / "images", auth_file=..., insecure=["registry.lan:5000"])
    image = store.prepare(spec.image)          # pulls once, then served from the store
    process = effective_process(image.config, spec.command, spec.args, spec.env)
    # overlay: lowerdir=":".join(map(str, image.lower_dirs))  (top layer first)
    store.gc(keep={every image still wanted})

Errors (all ImageError, a ValueError): InvalidReference, ImageNotFound, Unauthorized, DigestMismatch,
InvalidDigest, RegistryUnreachable, LayerRejected, NoCommand; see node.images.errors.
"""

from __future__ import annotations

from pathlib import Path

from node.images.errors import (
    DigestMismatch,
    ImageError,
    ImageNotFound,
    InvalidDigest,
    InvalidReference,
    LayerRejected,
    NoCommand,
    RegistryUnreachable,
    Unauthorized,
)
from node.images.manifest import Platform, host_platform
from node.images.process import ImageConfig, Process, effective_process
from node.images.reference import Reference, parse_reference
from node.images.store import ImageStore, PreparedImage
from node.images.usage import DiskUsage, GcResult


def rootfs_for(image: str) -> Path:
    """The pre-store resolver: `rootfs:/abs/dir` only (kept until the agent uses ImageStore.prepare)."""
    scheme, sep, rest = image.partition(":")
    if sep and scheme == "rootfs":
        path = Path(rest)
        if not path.is_absolute():
            raise InvalidReference(f'image "{image}": rootfs path must be absolute')
        if not path.is_dir():
            raise ImageNotFound(f'image "{image}": {path} is not a directory')
        return path
    raise ImageError(f'image "{image}": only rootfs:/dir images are supported by this agent yet')


__all__ = [
    "DigestMismatch",
    "DiskUsage",
    "GcResult",
    "ImageConfig",
    "ImageError",
    "ImageNotFound",
    "ImageStore",
    "InvalidDigest",
    "InvalidReference",
    "LayerRejected",
    "NoCommand",
    "Platform",
    "PreparedImage",
    "Process",
    "Reference",
    "RegistryUnreachable",
    "Unauthorized",
    "effective_process",
    "host_platform",
    "parse_reference",
    "rootfs_for",
]
