"""Numbers for docs/images.md: `python -m tests.images.measure` (as root; starts and stops its own registry).

Cold pull = a fresh store pulling the two-layer busybox test image from a loopback docker-registry;
warm = prepare() of the same reference again; disk = store usage with one image, then with a
second image that shares the base layer.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from node.images import ImageStore
from node.images.build import ImageSpec, write_layout
from tests.fixtures.oci_image import base_layer, busybox_spec, top_layer
from tests.fixtures.registry import start_registry


def main(runs: int = 7) -> None:
    work = Path(tempfile.mkdtemp(prefix="orch-measure-"))
    layout = work / "layout"
    write_layout(layout, "a", busybox_spec())
    write_layout(layout, "b", ImageSpec(layers=(base_layer(), top_layer("image b\n")), cmd=("sh",)))
    reg = start_registry()
    try:
        reg.push(layout, "a", "busybox")
        reg.push(layout, "b", "busybox")
        cold, warm = [], []
        for i in range(runs):
            with ImageStore(work / f"store{i}") as store:
                t0 = time.perf_counter()
                store.prepare(f"{reg.host}/busybox:a")
                t1 = time.perf_counter()
                store.prepare(f"{reg.host}/busybox:a")
                cold.append(t1 - t0)
                warm.append(time.perf_counter() - t1)
        with ImageStore(work / "disk") as store:
            store.prepare(f"{reg.host}/busybox:a")
            one = store.disk_usage()
            store.prepare(f"{reg.host}/busybox:b")
            two = store.disk_usage()
        blob_bytes = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
    finally:
        reg.stop()
    ms = sorted(round(c * 1000) for c in cold)
    print(f"cold pull: median {statistics.median(ms):.0f} ms (min {ms[0]}, max {ms[-1]}, n={runs})")
    print(f"warm prepare: median {statistics.median(warm) * 1e6:.0f} us")
    print(f"store with image a: {one.total_bytes / 1024:.0f} KiB ({one.layers} layers)")
    added = (two.total_bytes - one.total_bytes) / 1024
    print(f"store with a and b: {two.total_bytes / 1024:.0f} KiB ({two.layers} layers; b adds {added:.0f} KiB)")
    print(f"(layout with both images, compressed blobs: {blob_bytes / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
