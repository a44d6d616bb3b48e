"""OCI / Docker schema 2 manifests and indexes (manifest lists), and the host's platform."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from typing import Any

from node.images.digest import parse_digest, sha256_digest
from node.images.errors import DigestMismatch, ImageError, ImageNotFound

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
# The registry answers 404 for an OCI manifest unless Accept names the OCI types (RECIPES §4).
ACCEPT = ", ".join(MANIFEST_TYPES + INDEX_TYPES)

_MACHINES = {"x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", ""), "arm64": ("arm64", "")}
_MACHINES |= {"armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", ""), "ppc64le": ("ppc64le", "")}
_MACHINES |= {"s390x": ("s390x", ""), "riscv64": ("riscv64", "")}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def host_platform(machine: str | None = None) -> Platform:
    arch, variant = _MACHINES.get(machine or platform.machine(), (machine or platform.machine(), ""))
    return Platform("linux", arch, variant)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def verify_bytes(data: bytes, digest: str, what: str) -> None:
    got = sha256_digest(data)
    if got != digest:
        raise DigestMismatch(f"{what}: content hashes to {got}, expected {digest}")


def load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ImageError(f"{what}: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: expected a JSON object")
    return doc


def media_type_of(doc: dict[str, Any], header: str = "") -> str:
    """The manifest's own mediaType, else the Content-Type, else guess from its shape."""
    declared = str(doc.get("mediaType") or header.split(";")[0].strip())
    if declared in MANIFEST_TYPES + INDEX_TYPES:
        return declared
    if doc.get("schemaVersion") == 1:
        raise ImageError("Docker schema 1 manifests are not supported; push the image again with a current tool")
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def parse_manifest(raw: bytes, digest: str, what: str) -> Manifest:
    doc = load_json(raw, what)
    config, layers = doc.get("config"), doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ImageError(f"{what}: malformed manifest: it needs a config object and a layers list")
    return Manifest(
        digest,
        descriptor(config, f"{what}: manifest: config"),
        tuple(descriptor(d, f"{what}: manifest: layers[{i}]") for i, d in enumerate(layers)),
    )


def select_platform(raw: bytes, want: Platform, what: str) -> Descriptor:
    """The index entry for `want`; an arm variant falls back to the entry without one.

    Every entry's digest is checked, not only the chosen one: an index naming a path is refused whole.
    """
    doc = load_json(raw, what)
    entries = doc.get("manifests") or []
    if not isinstance(entries, list):
        raise ImageError(f"{what}: index: manifests is not a list")
    seen: list[str] = []
    candidates: list[tuple[int, Descriptor]] = []
    for i, entry in enumerate(entries):
        desc = descriptor(entry, f"{what}: index: manifests[{i}]")
        plat = entry.get("platform")
        plat = plat if isinstance(plat, dict) else {}
        found = Platform(str(plat.get("os", "")), str(plat.get("architecture", "")), str(plat.get("variant", "")))
        seen.append(str(found))
        if (found.os, found.architecture) != (want.os, want.architecture):
            continue
        if found.variant == want.variant:
            candidates.append((0, desc))
        elif not found.variant:
            candidates.append((1, desc))
    if not candidates:
        raise ImageNotFound(f"{what}: no manifest for {want} in the index (it has: {', '.join(seen) or 'none'})")
    return min(candidates, key=lambda c: c[0])[1]


def descriptor(doc: object, what: str) -> Descriptor:
    """An OCI descriptor ({mediaType, digest, size}); `what` names it in errors ("...: layers[0]")."""
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: expected a descriptor object")
    size = doc.get("size", -1)
    if not isinstance(size, int) or isinstance(size, bool):
        raise ImageError(f"{what}: size {size!r} is not an integer")
    return Descriptor(str(doc.get("mediaType", "")), parse_digest(doc.get("digest"), f"{what} digest"), size)
