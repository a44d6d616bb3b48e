"""Digests are names, never paths (issue 9 item 1): every digest, diff_id and blob name an image
declares must be sha256:<64 hex>, or the pull fails naming the image and the value, with nothing
written; each diff_id is checked against the uncompressed layer."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.images import DigestMismatch, ImageError, ImageStore, InvalidDigest
from node.images.build import Entry, tar_entries
from node.images.digest import digest_hex, quote, sha256_digest
from node.images.source import MAX_SMALL_BLOB
from tests.fixtures.oci_image import tar_layout
from tests.images.crafted import HEX, config_doc, crafted_layout, docker_archive, point_tag_at_index, tag_entry
from tests.images.fake_registry import FakeRegistry

MakeStore = Callable[..., ImageStore]
LAYER = tar_entries([Entry("bin", is_dir=True, mode=0o755), Entry("bin/hello", data=b"hi\n")])
SHAPE = "is not sha256:<64 hex>"
BAD = ["sha256:/etc", "sha256:../../../../etc", "sha256:" + HEX.upper(), "sha512:" + HEX * 2, "sha256:" + HEX[:-1], 7]


def nothing_written(root: Path) -> None:
    for sub in ("layers", "images", "tmp", "blobs/sha256"):
        assert list((root / sub).iterdir()) == [], sub
    assert json.loads((root / "refs.json").read_text()) == {} if (root / "refs.json").exists() else True


def set_diff_ids(*ids: object) -> Callable[[dict[str, Any]], None]:
    return lambda cfg: cfg["rootfs"].__setitem__("diff_ids", list(ids))


@pytest.mark.parametrize("bad", BAD, ids=str)
def test_config_diff_id_must_be_a_digest(make_store: MakeStore, tmp_path: Path, bad: object) -> None:
    layout = crafted_layout(tmp_path / "layout", "evil", [LAYER], config=set_diff_ids(bad))
    store = make_store(tmp_path / "store")
    image = f"oci:{layout}:evil"
    with pytest.raises(InvalidDigest) as info:
        store.prepare(image)
    assert str(info.value) == f"pull {image}: config: diff_id {quote(bad)} {SHAPE}"
    nothing_written(tmp_path / "store")


def test_path_diff_id_never_makes_a_host_dir_a_layer(make_store: MakeStore, tmp_path: Path) -> None:
    # The attack as found: a real layer, but its diff_id names /etc, which exists: it was used as is.
    layout = crafted_layout(tmp_path / "layout", "evil", [LAYER], config=set_diff_ids("sha256:/etc"))
    store = make_store(tmp_path / "store")
    with pytest.raises(InvalidDigest, match='config: diff_id "sha256:/etc" is not sha256:<64 hex>'):
        store.prepare(f"oci-archive:{tar_layout(layout, tmp_path / 'evil.tar')}:evil")
    assert not store.is_present(f"oci:{layout}:evil")
    nothing_written(tmp_path / "store")


@pytest.mark.parametrize("field", ["config", "layers"])
def test_manifest_digest_with_dotdot_from_a_registry(make_store: MakeStore, tmp_path: Path, field: str) -> None:
    bad = "sha256:../../../../../../etc/passwd"

    def edit(doc: dict[str, Any]) -> None:
        (doc["config"] if field == "config" else doc["layers"][0])["digest"] = bad

    layout = crafted_layout(tmp_path / "layout", "evil", [LAYER], manifest=edit)
    with FakeRegistry(layout) as reg:
        store = make_store(tmp_path / "store")
        where = "config" if field == "config" else "layers[0]"
        with pytest.raises(InvalidDigest) as info:
            store.prepare(f"{reg.host}/evil:evil")
        assert str(info.value) == f"pull {reg.host}/evil:evil: manifest: {where} digest {quote(bad)} {SHAPE}"
        assert not reg.blob_gets(), "no blob may be requested for a manifest with a bad digest"
    nothing_written(tmp_path / "store")


def test_registry_config_diff_id(make_store: MakeStore, tmp_path: Path) -> None:
    layout = crafted_layout(tmp_path / "layout", "evil", [LAYER], config=set_diff_ids("sha256:/etc"))
    with FakeRegistry(layout) as reg:
        with pytest.raises(InvalidDigest, match=f'pull {reg.host}/evil:evil: config: diff_id "sha256:/etc"'):
            make_store(tmp_path / "store").prepare(f"{reg.host}/evil:evil")
        assert len(reg.blob_gets()) == 1  # the config; no layer
    nothing_written(tmp_path / "store")


def test_registry_index_with_a_bad_digest(make_store: MakeStore, tmp_path: Path) -> None:
    layout = crafted_layout(tmp_path / "layout", "good", [LAYER])
    good = tag_entry(layout, "good")
    good.pop("annotations")
    evil = {"mediaType": good["mediaType"], "digest": "sha256:/etc", "size": 1}
    point_tag_at_index(
        layout,
        "evil",
        [
            good | {"platform": {"os": "linux", "architecture": "amd64"}},
            evil | {"platform": {"os": "linux", "architecture": "arm64"}},
        ],
    )
    with FakeRegistry(layout) as reg:
        with pytest.raises(InvalidDigest) as info:
            make_store(tmp_path / "store").prepare(f"{reg.host}/evil:evil")
        assert str(info.value) == f'pull {reg.host}/evil:evil: index: manifests[1] digest "sha256:/etc" {SHAPE}'
    nothing_written(tmp_path / "store")


@pytest.mark.parametrize("transport", ["oci", "oci-archive"])
def test_layout_index_json_with_a_bad_digest(make_store: MakeStore, tmp_path: Path, transport: str) -> None:
    bad = "sha256:../../../etc/passwd"
    layout = crafted_layout(
        tmp_path / "layout", "evil", [LAYER], index=lambda i: i["manifests"][0].__setitem__("digest", bad)
    )
    path = layout if transport == "oci" else tar_layout(layout, tmp_path / "evil.tar")
    image = f"{transport}:{path}:evil"
    with pytest.raises(InvalidDigest) as info:
        make_store(tmp_path / "store").prepare(image)
    assert str(info.value) == f"pull {image}: index.json: manifests[0] digest {quote(bad)} {SHAPE}"
    nothing_written(tmp_path / "store")


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "sha256:/etc", "config.json", f"{HEX}.json/../x", f"{HEX.upper()}.json"]
)
def test_docker_archive_config_name_must_be_its_digest(make_store: MakeStore, tmp_path: Path, name: str) -> None:
    archive = docker_archive(tmp_path / "evil.tar", [LAYER], entry=lambda e: e.__setitem__("Config", name))
    image = f"docker-archive:{archive}"
    with pytest.raises(InvalidDigest) as info:
        make_store(tmp_path / "store").prepare(image)
    assert str(info.value) == (
        f"pull {image}: manifest.json: Config {quote(name)} is not <64 hex>.json or blobs/sha256/<64 hex>"
    )
    nothing_written(tmp_path / "store")


def test_docker_archive_config_must_hash_to_its_name(make_store: MakeStore, tmp_path: Path) -> None:
    real = json.dumps(config_doc([LAYER])).encode()
    archive = docker_archive(
        tmp_path / "evil.tar",
        [LAYER],
        entry=lambda e: e.__setitem__("Config", f"{HEX}.json"),
        extra={f"{HEX}.json": real},
    )
    with pytest.raises(DigestMismatch, match=f"manifest.json: Config {HEX}.json hashes to sha256:"):
        make_store(tmp_path / "store").prepare(f"docker-archive:{archive}")
    nothing_written(tmp_path / "store")


def test_docker_archive_diff_id_and_layer_names(make_store: MakeStore, tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    archive = docker_archive(tmp_path / "a.tar", [LAYER], config=set_diff_ids("sha256:/etc"))
    with pytest.raises(InvalidDigest, match=f'pull docker-archive:{archive}: config: diff_id "sha256:/etc" {SHAPE}'):
        store.prepare(f"docker-archive:{archive}")
    archive = docker_archive(tmp_path / "b.tar", [LAYER], entry=lambda e: e.__setitem__("Layers", ["/etc/passwd"]))
    with pytest.raises(ValueError, match=r'manifest.json: Layers\[0\] "/etc/passwd" is not a relative name'):
        store.prepare(f"docker-archive:{archive}")
    nothing_written(tmp_path / "store")


@pytest.mark.parametrize("transport", ["oci", "docker-archive"])
def test_diff_id_must_match_the_uncompressed_layer(make_store: MakeStore, tmp_path: Path, transport: str) -> None:
    other = sha256_digest(b"another layer")
    if transport == "oci":
        layout = crafted_layout(tmp_path / "layout", "evil", [LAYER], config=set_diff_ids(other))
        image = f"oci:{layout}:evil"
    else:
        image = f"docker-archive:{docker_archive(tmp_path / 'evil.tar', [LAYER], config=set_diff_ids(other))}"
    with pytest.raises(DigestMismatch) as info:
        make_store(tmp_path / "store").prepare(image)
    assert str(info.value).startswith(f"pull {image}: layer ")
    assert f"uncompressed content hashes to {sha256_digest(LAYER)}, config says {other}" in str(info.value)
    nothing_written(tmp_path / "store")


def test_diff_id_of_the_compressed_blob_is_refused(make_store: MakeStore, tmp_path: Path) -> None:
    # A diff_id is the digest of the *uncompressed* tar: the gzip blob's own digest must not pass.
    layout = crafted_layout(tmp_path / "layout", "gz", [LAYER], compress=True)
    blob = json.loads((layout / "blobs/sha256" / digest_hex(tag_entry(layout, "gz")["digest"])).read_text())
    compressed = blob["layers"][0]["digest"]
    assert make_store(tmp_path / "ok").prepare(f"oci:{layout}:gz").lower_dirs  # the honest image pulls
    evil = crafted_layout(tmp_path / "evil", "gz", [LAYER], compress=True, config=set_diff_ids(compressed))
    with pytest.raises(DigestMismatch, match=f"config says {compressed}"):
        make_store(tmp_path / "store").prepare(f"oci:{evil}:gz")
    nothing_written(tmp_path / "store")


def test_records_and_refs_read_back_are_checked(make_store: MakeStore, tmp_path: Path) -> None:
    """A store written by an older orch may hold a record naming a path: it is set aside and pulled again."""
    layout = crafted_layout(tmp_path / "layout", "ok", [LAYER])
    image = f"oci:{layout}:ok"
    root = tmp_path / "store"
    good = make_store(root).prepare(image)
    [record_path] = (root / "images").iterdir()
    record = json.loads(record_path.read_text())
    record["diff_ids"] = ["sha256:/etc"]
    record_path.write_text(json.dumps(record))
    refs = json.loads((root / "refs.json").read_text())
    (root / "refs.json").write_text(json.dumps(refs | {"oci:/x:y": "sha256:../../etc"}))

    again = make_store(root).prepare(image)
    assert again.lower_dirs == good.lower_dirs
    assert all(root / "layers" in d.parents for d in again.lower_dirs)
    assert "oci:/x:y" not in json.loads((root / "refs.json").read_text())

    record_path.write_text(json.dumps(record))  # corrupt again: gc removes it instead of trusting it
    store = make_store(root)
    assert store.gc({image}).removed_images == 1
    assert list((root / "images").iterdir()) == [] and Path("/etc/passwd").exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "huge"])
def test_layout_files_are_regular_and_capped(make_store: MakeStore, tmp_path: Path, kind: str) -> None:
    # index.json -> /dev/zero would fill the agent's memory, a FIFO would hang its pull thread.
    layout = crafted_layout(tmp_path / "layout", "evil", [LAYER])
    index = layout / "index.json"
    index.unlink()
    if kind == "symlink":
        index.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(index)
    else:
        with index.open("wb") as f:
            f.truncate(MAX_SMALL_BLOB + 1)
    why = {"symlink": "a symlink", "fifo": "is not a regular file", "huge": f"larger than {MAX_SMALL_BLOB} bytes"}
    with pytest.raises(ImageError, match=f"pull oci:{layout}:evil: {index}.*{why[kind]}"):
        make_store(tmp_path / "store").prepare(f"oci:{layout}:evil")
    nothing_written(tmp_path / "store")


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [("Env", ["A=x\0y"], "Env[0]"), ("Cmd", ["sh", "-c\0"], "Cmd[1]"), ("WorkingDir", "/a\0", "WorkingDir")],
)
def test_nul_in_the_image_process_is_refused_at_pull(
    make_store: MakeStore, tmp_path: Path, field: str, value: object, where: str
) -> None:
    # Issue 9 item 8, from the image's side: the manifest's fields are checked at apply, the image's here.
    layout = crafted_layout(
        tmp_path / "layout", "evil", [LAYER], config=lambda c: c["config"].__setitem__(field, value)
    )
    with pytest.raises(ImageError, match=rf"pull oci:{layout}:evil: config: {re.escape(where)} contains a NUL byte"):
        make_store(tmp_path / "store").prepare(f"oci:{layout}:evil")
    nothing_written(tmp_path / "store")
