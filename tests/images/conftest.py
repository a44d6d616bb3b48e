"""Image fixtures: one real registry per session with the busybox test image pushed, and layouts."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node.images import ImageStore
from tests.fixtures.oci_image import BUSYBOX, build_busybox_layout
from tests.fixtures.registry import Registry, start_registry


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    layout = tmp_path_factory.mktemp("oci") / "layout"
    build_busybox_layout(layout, "1")
    build_busybox_layout(layout, "multi", extra_platforms=("arm64",))
    return layout


@pytest.fixture(scope="session")
def registry(busybox_layout: Path) -> Iterator[Registry]:
    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        pytest.skip("docker-registry and skopeo are not installed")
    reg = start_registry()
    try:
        reg.push(busybox_layout, "1", "busybox")
        reg.push(busybox_layout, "multi", "busybox", all_platforms=True)
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def make_store() -> Iterator[Callable[..., ImageStore]]:
    """ImageStore factory whose stores are closed after the test (open sockets fail the run)."""
    stores: list[ImageStore] = []

    def make(root: Path, **kwargs: Any) -> ImageStore:
        stores.append(ImageStore(root, **kwargs))
        return stores[-1]

    yield make
    for store in stores:
        store.close()
