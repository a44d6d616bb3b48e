"""Auth, retries, corruption, concurrency and GC against a stdlib fake registry serving the test layout."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.images import DigestMismatch, ImageStore, RegistryUnreachable, Unauthorized
from node.images.build import ImageSpec, write_layout
from tests.fixtures.oci_image import base_layer, busybox_spec, top_layer
from tests.images.fake_registry import Behaviour, FakeRegistry

MakeStore = Callable[..., Any]


def _auth_file(tmp_path: Path, host: str, user: str = "alice", password: str = "secret") -> Path:
    path = tmp_path / "config.json"
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {f"http://{host}/v2/": {"auth": auth}}}))
    return path


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
def test_auth_with_credentials(make_store: MakeStore, tmp_path: Path, busybox_layout: Path, scheme: str) -> None:
    with FakeRegistry(busybox_layout, Behaviour(auth=scheme)) as reg:
        store: ImageStore = make_store(tmp_path / "store", auth_file=_auth_file(tmp_path, reg.host))
        image = store.prepare(f"{reg.host}/busybox:1")
        assert len(image.lower_dirs) == 2
        if scheme == "bearer":  # one token for the whole pull
            assert reg.behaviour.requests["/token"] == 1


@pytest.mark.parametrize("scheme", ["bearer", "basic"])
def test_auth_refused(make_store: MakeStore, tmp_path: Path, busybox_layout: Path, scheme: str) -> None:
    with FakeRegistry(busybox_layout, Behaviour(auth=scheme)) as reg:
        wrong = make_store(tmp_path / "a", auth_file=_auth_file(tmp_path, reg.host, password="wrong"))
        with pytest.raises(Unauthorized, match=f"pull {reg.host}/busybox:1"):
            wrong.prepare(f"{reg.host}/busybox:1")
        anonymous = make_store(tmp_path / "b", auth_file=tmp_path / "none.json")
        with pytest.raises(Unauthorized, match="no credentials configured" if scheme == "basic" else "refused"):
            anonymous.prepare(f"{reg.host}/busybox:1")


def test_retries_after_503(make_store: MakeStore, tmp_path: Path, busybox_layout: Path) -> None:
    with FakeRegistry(busybox_layout, Behaviour(fail_first=2)) as reg:
        assert make_store(tmp_path / "s").prepare(f"{reg.host}/busybox:1").digest.startswith("sha256:")
    with (
        FakeRegistry(busybox_layout, Behaviour(fail_first=100)) as reg,
        pytest.raises(RegistryUnreachable, match="503"),
    ):
        make_store(tmp_path / "t").prepare(f"{reg.host}/busybox:1")


def test_corrupt_blob_served(make_store: MakeStore, tmp_path: Path, busybox_layout: Path) -> None:
    manifest_digest = json.loads((busybox_layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((busybox_layout / "blobs/sha256" / manifest_digest.removeprefix("sha256:")).read_text())
    layer = manifest["layers"][0]["digest"]
    with FakeRegistry(busybox_layout, Behaviour(corrupt={layer})) as reg:
        store = make_store(tmp_path / "s")
        with pytest.raises(DigestMismatch, match=f"blob {layer} hashes to"):
            store.prepare(f"{reg.host}/busybox:1")
    assert list((tmp_path / "s" / "images").iterdir()) == []
    assert list((tmp_path / "s" / "tmp").iterdir()) == []


def test_concurrent_prepare_downloads_each_blob_once(
    make_store: MakeStore, tmp_path: Path, busybox_layout: Path
) -> None:
    with FakeRegistry(busybox_layout, Behaviour(blob_delay=0.2)) as reg:
        store = make_store(tmp_path / "s")
        results: list[Any] = []
        threads = [
            threading.Thread(target=lambda: results.append(store.prepare(f"{reg.host}/busybox:1"))) for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 6 and len({r.digest for r in results}) == 1
        gets = reg.blob_gets()
        assert len(gets) == 3 and set(gets.values()) == {1}  # config + 2 layers, once each


def test_images_sharing_a_layer_and_gc(make_store: MakeStore, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_layout(layout, "a", busybox_spec())
    write_layout(layout, "b", ImageSpec(layers=(base_layer(), top_layer("image b\n")), cmd=("sh",)))
    write_layout(layout, "c", ImageSpec(layers=(base_layer("other base"),), cmd=("sh",)))
    with FakeRegistry(layout) as reg:
        store = make_store(tmp_path / "s")
        a, b, c = (store.prepare(f"{reg.host}/busybox:{t}") for t in "abc")
        gets = reg.blob_gets()
    assert a.lower_dirs[1] == b.lower_dirs[1]  # the shared base is unpacked once...
    base_blob = json.loads(
        (
            layout / "blobs/sha256" / json.loads((layout / "index.json").read_text())["manifests"][0]["digest"][7:]
        ).read_text()
    )["layers"][0]["digest"]
    assert gets[base_blob] == 1  # ...and downloaded once
    assert store.disk_usage().layers == 4 and store.disk_usage().images == 3
    before = store.disk_usage().total_bytes
    result = store.gc({f"{reg.host}/busybox:a", f"{reg.host}/busybox:c"})
    assert (result.removed_images, result.removed_layers, result.removed_blobs) == (
        1,
        1,
        2,
    )  # b's top, manifest, config
    assert result.freed_bytes > 0 and store.disk_usage().total_bytes == before - result.freed_bytes
    assert store.is_present(f"{reg.host}/busybox:a") and not store.is_present(f"{reg.host}/busybox:b")
    assert all(d.is_dir() for d in a.lower_dirs + c.lower_dirs)
    result = store.gc(set())
    assert result.removed_layers == 3 and store.disk_usage().total_bytes < 100_000
