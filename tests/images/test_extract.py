"""Layer extraction: malicious members are refused with nothing written outside (or half inside) the
store; whiteouts and opaque dirs become what overlayfs expects, checked with a real overlay mount."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.images import LayerRejected
from node.images.build import Entry, ImageSpec, tar_entries, write_layout
from node.images.extract import MAX_DEPTH, extract_layer
from node.runtime.imagefs import OPAQUE_XATTR
from tests.unit.test_trees import chain

pytestmark = pytest.mark.root  # whiteouts are char devices (mknod) and opaque markers trusted.* xattrs


MakeStore = Callable[..., Any]


def _layer(tmp_path: Path, entries: list[Entry], name: str = "layer.tar") -> Path:
    path = tmp_path / name
    path.write_bytes(tar_entries(entries))
    return path


OUTSIDE = "pwned-by-layer"

MALICIOUS = {
    "dotdot": ([Entry(f"../../{OUTSIDE}", data=b"x")], "path traversal"),
    "dotdot-inner": ([Entry(f"a/../../{OUTSIDE}", data=b"x")], "path traversal"),
    "absolute": ([Entry(f"/tmp/{OUTSIDE}", data=b"x")], "absolute path"),
    "symlink-escape": (
        [Entry("escape", link="/tmp"), Entry(f"escape/{OUTSIDE}", data=b"x")],
        "goes through the symlink",
    ),
    "symlink-relative-escape": (
        [Entry("up", link="../../../../../../tmp"), Entry(f"up/{OUTSIDE}", data=b"x")],
        "goes through the symlink",
    ),
    "hardlink-escape": ([Entry("h", hardlink="../../../etc/passwd")], "path traversal"),
    "hardlink-absolute": ([Entry("h", hardlink="/etc/passwd")], "absolute path"),
    "hardlink-missing": ([Entry("h", hardlink="etc/shadow")], "not in this layer"),
    "hardlink-via-symlink": (
        [Entry("etc", link="/etc"), Entry("h", hardlink="etc/passwd")],
        "goes through the symlink",
    ),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_layer_rejected(tmp_path: Path, case: str) -> None:
    entries, why = MALICIOUS[case]
    dest = tmp_path / "deep" / "er" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(LayerRejected, match=why):
        extract_layer(_layer(tmp_path, entries), dest, "sha256:test")
    assert not list(Path("/tmp").glob(OUTSIDE)) and not list(tmp_path.rglob(OUTSIDE))
    assert os.stat("/etc/passwd").st_nlink == 1


def test_device_nodes_skipped_fifo_kept(tmp_path: Path) -> None:
    entries = [
        Entry("dev", is_dir=True, mode=0o755),
        Entry("dev/sda", kind=tarfile.BLKTYPE, device=(8, 0)),
        Entry("dev/mem", kind=tarfile.CHRTYPE, device=(1, 1)),
        Entry("dev/fifo", kind=tarfile.FIFOTYPE),
        Entry("ok", data=b"fine"),
    ]
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_layer(_layer(tmp_path, entries), dest, "sha256:test")
    assert sorted(p.name for p in (dest / "dev").iterdir()) == ["fifo"]
    assert stat.S_ISFIFO(os.lstat(dest / "dev" / "fifo").st_mode)
    assert (dest / "ok").read_bytes() == b"fine"


def test_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    entries = [
        Entry("etc/.wh.removeme"),
        Entry("data/.wh..wh..opq"),
        Entry("data/c", data=b"c"),
        Entry("ro", is_dir=True, mode=0o555),
        Entry("ro/file", data=b"inside a read-only dir", mode=0o444),
        Entry("hl", hardlink="data/c"),
        Entry("abs-link", link="/bin/busybox"),  # absolute symlinks are fine: resolved in the container
    ]
    dest = tmp_path / "dest"
    dest.mkdir()
    extract_layer(_layer(tmp_path, entries), dest, "sha256:test")
    st = os.lstat(dest / "etc" / "removeme")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
    assert os.getxattr(dest / "data", OPAQUE_XATTR) == b"y"
    assert not (dest / "data" / ".wh..wh..opq").exists()
    assert stat.S_IMODE(os.stat(dest / "ro").st_mode) == 0o555
    assert os.stat(dest / "hl").st_ino == os.stat(dest / "data" / "c").st_ino
    assert os.readlink(dest / "abs-link") == "/bin/busybox"


def test_failed_pull_leaves_nothing_half_written(make_store: MakeStore, tmp_path: Path) -> None:
    good = tar_entries([Entry("good", data=b"ok")])
    bad = tar_entries([Entry("big", data=b"x" * 100_000), Entry("escape", link="/tmp"), Entry("escape/x", data=b"x")])
    write_layout(tmp_path / "layout", "bad", ImageSpec(layers=(good, bad), cmd=("sh",)))
    store = make_store(tmp_path / "store")
    with pytest.raises(LayerRejected) as info:
        store.prepare(f"oci:{tmp_path / 'layout'}:bad")
    assert str(info.value).startswith(f"pull oci:{tmp_path / 'layout'}:bad: layer sha256:")
    assert "escape/x" in str(info.value)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert list((tmp_path / "store" / "images").iterdir()) == []
    # only the complete, verified good layer may remain (unreferenced, for gc)
    assert [p.name for p in (tmp_path / "store" / "layers").iterdir()] == [
        __import__("hashlib").sha256(good).hexdigest()
    ]
    assert not store.is_present(f"oci:{tmp_path / 'layout'}:bad")
    assert store.gc(set()).removed_layers == 1


def test_overlay_of_two_layers_applies_whiteouts(make_store: MakeStore, tmp_path: Path, busybox_layout: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    store = make_store(tmp_path / "store")
    image = store.prepare(f"oci:{busybox_layout}:1")
    assert len(image.lower_dirs) == 2
    merged = tmp_path / "merged"
    merged.mkdir()
    lower = ":".join(str(d) for d in image.lower_dirs)
    script = f"mount -t overlay overlay -o lowerdir={lower} {merged} && ls -a {merged}/etc {merged}/data"
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.split()
    assert "motd" in listed and "removeme" not in listed  # deleted by the whiteout
    assert "c" in listed and "a" not in listed and "b" not in listed  # /data is opaque in the top layer
    assert not any(merged.iterdir())  # the mount lived only in the private namespace


def _ordered_tar(members: list[tuple[str, bytes]]) -> bytes:
    """A tar with its members in this order (tar_entries sorts them)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_depth_is_limited(tmp_path: Path) -> None:
    """A member's path may be MAX_DEPTH components long, not one more."""
    dest = tmp_path / "dest"
    dest.mkdir()
    deepest = "/".join(["d"] * (MAX_DEPTH - 1) + ["f"])
    extract_layer(_layer(tmp_path, [Entry(deepest, data=b"x")]), dest, "sha256:test")
    with pytest.raises(LayerRejected, match=f"more than {MAX_DEPTH} directories deep"):
        extract_layer(_layer(tmp_path, [Entry("d/" + deepest, data=b"x")], "deeper.tar"), dest, "sha256:test")


def test_a_deep_hostile_layer_is_rejected_and_leaves_nothing(make_store: MakeStore, tmp_path: Path) -> None:
    """A tree deeper than Python's recursion limit, then a member that is refused: the refusal is
    what the pull reports (no RecursionError from the cleanup), and tmp/ ends empty."""
    layer = _ordered_tar([("/".join(["d"] * 1100) + "/f", b"x"), (f"../{OUTSIDE}", b"x")])
    write_layout(tmp_path / "layout", "deep", ImageSpec(layers=(layer,), cmd=("sh",)))
    store = make_store(tmp_path / "store")
    with pytest.raises(LayerRejected, match=f"more than {MAX_DEPTH} directories deep"):
        store.prepare(f"oci:{tmp_path / 'layout'}:deep")
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert list((tmp_path / "store" / "layers").iterdir()) == []


def test_a_store_opens_over_deep_leftovers_and_gc_removes_a_deep_layer(make_store: MakeStore, tmp_path: Path) -> None:
    """What an older agent may have left: a deep extraction in tmp/ (it crashed), a deep layer.
    The next store opens (the agent starts), and gc removes the layer."""
    root = tmp_path / "store"
    make_store(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    depth = sys.getrecursionlimit() + 200  # what made shutil.rmtree raise RecursionError
    chain(root / "tmp" / "layer-crashed", depth, outside)
    chain(root / "layers" / ("a" * 64), depth, outside)
    store = make_store(root)
    assert list((root / "tmp").iterdir()) == []
    assert store.disk_usage().layers == 1
    assert store.gc(set()).removed_layers == 1
    assert list((root / "layers").iterdir()) == [] and list(outside.iterdir()) == []
