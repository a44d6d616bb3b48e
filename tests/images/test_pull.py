"""Pulls from a real docker-registry (distribution 2.8) and imports from archives and layouts."""

from __future__ import annotations

import json
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.images import DigestMismatch, ImageNotFound, RegistryUnreachable
from tests.fixtures.etcd import free_port
from tests.fixtures.oci_image import tar_layout
from tests.fixtures.registry import Registry

MakeStore = Callable[..., Any]


def _manifest(layout: Path, tag: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    return json.loads((layout / "blobs/sha256" / entry["digest"].removeprefix("sha256:")).read_text()) | {
        "digest": entry["digest"]
    }


def test_pull_by_tag_then_from_store(
    make_store: MakeStore, tmp_path: Path, registry: Registry, busybox_layout: Path
) -> None:
    store = make_store(tmp_path / "store")
    ref = f"{registry.host}/busybox:1"
    assert not store.is_present(ref)
    image = store.prepare(ref)
    manifest = _manifest(busybox_layout, "1")
    assert image.digest == manifest["digest"]
    assert image.ref == ref
    assert image.config.cmd == ("sh", "-c", "echo hi")
    assert image.config.env == ("PATH=/bin", "GREETING=hello")
    assert image.config.working_dir == "/data"
    top, base = image.lower_dirs
    assert (base / "bin" / "busybox").stat().st_size > 100_000
    assert (top / "etc" / "motd").read_text() == "hello from layer 2\n"
    assert store.is_present(ref)
    # a fresh store object on the same root finds it without the network
    registry_free = make_store(tmp_path / "store", insecure=())
    assert registry_free.prepare(ref) == image


def test_pull_by_digest_and_runs(
    make_store: MakeStore, tmp_path: Path, registry: Registry, busybox_layout: Path
) -> None:
    digest = _manifest(busybox_layout, "1")["digest"]
    image = make_store(tmp_path / "store").prepare(f"{registry.host}/busybox@{digest}")
    assert image.digest == digest
    busybox = image.lower_dirs[-1] / "bin" / "busybox"
    assert subprocess.run([busybox, "echo", "ok"], capture_output=True, text=True).stdout == "ok\n"


def test_pull_index_chooses_host_platform(
    make_store: MakeStore, tmp_path: Path, registry: Registry, busybox_layout: Path
) -> None:
    store = make_store(tmp_path / "store")
    image = store.prepare(f"{registry.host}/busybox:multi")
    index = json.loads((busybox_layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == "multi"]
    doc = json.loads((busybox_layout / "blobs/sha256" / entry["digest"].removeprefix("sha256:")).read_text())
    amd64 = [m["digest"] for m in doc["manifests"] if m["platform"]["architecture"] == "amd64"]
    assert image.digest == amd64[0]
    assert len(image.lower_dirs) == 2


def test_unknown_tag_and_repo(make_store: MakeStore, tmp_path: Path, registry: Registry) -> None:
    store = make_store(tmp_path / "store")
    with pytest.raises(ImageNotFound, match=rf"pull {registry.host}/busybox:9: manifest unknown \(404\)"):
        store.prepare(f"{registry.host}/busybox:9")
    with pytest.raises(ImageNotFound, match="manifest unknown"):
        store.prepare(f"{registry.host}/nothere:1")


def test_unreachable_registry(make_store: MakeStore, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    started = time.monotonic()
    with pytest.raises(RegistryUnreachable, match=r"pull 127\.0\.0\.1:\d+/busybox:1: .*gave up after 4 attempts"):
        store.prepare(f"127.0.0.1:{free_port()}/busybox:1")
    assert time.monotonic() - started < 10


def test_corrupt_blob_in_registry_is_detected(
    make_store: MakeStore, tmp_path: Path, registry: Registry, busybox_layout: Path
) -> None:
    layer = _manifest(busybox_layout, "1")["layers"][1]["digest"]
    path = registry.blob_path(layer)
    original = path.read_bytes()
    path.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
    try:
        store = make_store(tmp_path / "store")
        with pytest.raises(DigestMismatch, match=f"blob {layer} hashes to"):
            store.prepare(f"{registry.host}/busybox:1")
    finally:
        path.write_bytes(original)
    assert list((tmp_path / "store" / "images").iterdir()) == []
    assert list((tmp_path / "store" / "tmp").iterdir()) == []


def test_oci_layout_and_oci_archive(make_store: MakeStore, tmp_path: Path, busybox_layout: Path) -> None:
    store = make_store(tmp_path / "store")
    from_dir = store.prepare(f"oci:{busybox_layout}:1")
    archive = tar_layout(busybox_layout, tmp_path / "busybox.tar")
    from_archive = store.prepare(f"oci-archive:{archive}:1")
    assert from_dir.digest == from_archive.digest == _manifest(busybox_layout, "1")["digest"]
    assert from_dir.lower_dirs == from_archive.lower_dirs  # layers are shared, not unpacked twice
    with pytest.raises(ImageNotFound, match='needs tag "nope"'):
        store.prepare(f"oci:{busybox_layout}:nope")
    with pytest.raises(ImageNotFound, match="does not exist"):
        store.prepare(f"oci-archive:{tmp_path}/missing.tar")


def test_docker_archive(make_store: MakeStore, tmp_path: Path, busybox_layout: Path) -> None:
    archive = tmp_path / "docker.tar"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{busybox_layout}:1", f"docker-archive:{archive}:busybox:1"],
        check=True,
        capture_output=True,
    )
    with tarfile.open(archive) as tar:
        assert "manifest.json" in tar.getnames()
    store = make_store(tmp_path / "store")
    image = store.prepare(f"docker-archive:{archive}")
    assert image.config.cmd == ("sh", "-c", "echo hi")
    same = store.prepare(f"oci:{busybox_layout}:1")
    assert image.lower_dirs == same.lower_dirs  # keyed by diff_id: shared across transports
    assert store.is_present(f"docker-archive:{archive}")


def test_rootfs_passthrough(make_store: MakeStore, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    image = store.prepare(f"rootfs:{tmp_path}")
    assert image.lower_dirs == (tmp_path,)
    assert image.config.cmd == () and image.digest == ""
    with pytest.raises(ImageNotFound, match="is not a directory"):
        store.prepare(f"rootfs:{tmp_path}/nope")
