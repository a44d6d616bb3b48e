"""Image files read on the host (issue 9 item 7): resolved inside the image across its layers as
overlayfs merges them, symlinks clamped at the image root, regular files only, size-capped."""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from node.runtime.imagefs import MAX_FILE_BYTES, OPAQUE_XATTR, ImageFileError, read_image_file
from node.runtime.security import Identity, resolve_user

pytestmark = pytest.mark.root  # whiteouts and devices are mknod, opaque markers trusted.* xattrs

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002::/:/bin/sh\n"
GROUP = b"root:x:0:\napp:x:1002:\nextra:x:1003:app\n"
HOST_SECRET = b"host-secret:x:0:0::/:/bin/sh\n"


def layer(root: Path, files: dict[str, bytes | str]) -> Path:
    """A layer dir: bytes are files, "->X" a symlink to X, "dir", "fifo", "whiteout", "opaque", "zero"."""
    root.mkdir(parents=True)
    for name, what in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(what, bytes):
            path.write_bytes(what)
        elif what.startswith("->"):
            path.symlink_to(what[2:])
        elif what == "dir":
            path.mkdir()
        elif what == "fifo":
            os.mkfifo(path)
        elif what == "whiteout":
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        elif what == "opaque":
            path.mkdir()
            os.setxattr(path, OPAQUE_XATTR, b"y")
        elif what == "zero":
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))
    return root


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return layer(tmp_path / "base", {"etc/passwd": PASSWD, "etc/group": GROUP, "etc/shadow": b"image-shadow\n"})


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    """Stands for a host directory an image must not reach (a real /etc would do as well)."""
    return layer(tmp_path / "host", {"passwd": HOST_SECRET, "shadow": HOST_SECRET})


def test_user_defined_only_in_a_lower_layer_is_found(tmp_path: Path, base: Path) -> None:
    top = layer(tmp_path / "top", {"bin/app": b"#!/bin/sh\n"})
    assert resolve_user([top, base], "app") == Identity(1001, 1002, (1002, 1003))
    assert resolve_user(base, "app:extra") == Identity(1001, 1003, (1003,))  # a plain rootfs dir still works


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"etc/passwd": "whiteout"}, None),  # deleted by the top layer
        ({"etc": "opaque"}, None),  # /etc replaced as a whole: the base's files do not show through
        ({"etc": "whiteout", "etc2": "dir"}, None),
        ({"etc": b"a file where a directory was"}, None),
        ({"etc/passwd": b"top:x:5:5::/:/bin/sh\n"}, b"top:x:5:5::/:/bin/sh\n"),  # the topmost layer wins
        ({"etc/other": b"x"}, PASSWD),  # a plain directory merges with the one below
        ({"etc/passwd": "->../usr/share/passwd", "usr/share/passwd": b"moved\n"}, b"moved\n"),
    ],
    ids=["whiteout", "opaque", "dir-whiteout", "file-over-dir", "topmost", "merged", "relative-link"],
)
def test_overlay_rules(tmp_path: Path, base: Path, top: dict[str, bytes | str], expected: bytes | None) -> None:
    assert read_image_file([layer(tmp_path / "top", top), base], "/etc/passwd") == expected


def test_opaque_dir_in_a_middle_layer_hides_only_what_is_below(tmp_path: Path, base: Path) -> None:
    middle = layer(tmp_path / "middle", {"etc": "opaque", "etc/passwd": b"middle\n"})
    top = layer(tmp_path / "top", {"etc/group": b"top-group\n"})
    assert read_image_file([top, middle, base], "/etc/passwd") == b"middle\n"
    assert read_image_file([top, middle, base], "/etc/group") == b"top-group\n"
    assert read_image_file([top, middle, base], "/etc/shadow") is None


@pytest.mark.parametrize("target", ["/etc/shadow", "../../../../../../../etc/shadow", "/../../etc/./shadow"])
def test_symlinks_stay_inside_the_image(tmp_path: Path, base: Path, host_dir: Path, target: str) -> None:
    # Pointing at the host's file (absolute or by climbing out) reads the image's own file of that name.
    top = layer(tmp_path / "top", {"etc/passwd": f"->{target}"})
    assert read_image_file([top, base], "/etc/passwd") == b"image-shadow\n"
    assert read_image_file([top], "/etc/passwd") is None  # the image has no /etc/shadow: nothing to read


def test_a_symlinked_directory_to_the_host_is_resolved_in_the_image(tmp_path: Path, host_dir: Path) -> None:
    image = layer(tmp_path / "image", {"etc": f"->{host_dir}"})
    assert read_image_file([image], "/etc/passwd") is None
    with pytest.raises(ValueError, match="user 'host-secret' not found"):
        resolve_user(image, "host-secret")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"etc/passwd": "fifo"}, "/etc/passwd is a FIFO, not a regular file"),  # would hang a thread
        ({"etc/passwd": "->/dev/zero", "dev/zero": "zero"}, "resolved to /dev/zero) is a character device"),
        ({"etc/passwd": "dir"}, "/etc/passwd is a directory"),
        ({"etc/passwd": "->passwd"}, "/etc/passwd has too many levels of symbolic links"),
        ({"etc/passwd": "->a", "etc/a": "->b", "etc/b": "->passwd"}, "too many levels of symbolic links"),
    ],
    ids=["fifo", "dev-zero", "dir", "loop", "loop3"],
)
def test_unusable_passwd_is_an_error_naming_it(tmp_path: Path, files: dict[str, bytes | str], why: str) -> None:
    image = layer(tmp_path / "image", files)
    with pytest.raises(ImageFileError, match=why.replace("(", r"\(").replace(")", r"\)")):
        resolve_user([image], "")


def test_dev_zero_the_image_does_not_have_is_no_passwd(tmp_path: Path) -> None:
    # Inside the container /dev/zero is the real device, but on the host the image has none: no passwd.
    image = layer(tmp_path / "image", {"etc/passwd": "->/dev/zero", "etc/group": "->../dev/zero"})
    assert resolve_user([image], "") == Identity(0, 0, (0,))
    with pytest.raises(ValueError, match="user 'app' not found in the image's /etc/passwd"):
        resolve_user([image], "app")


def test_size_cap(tmp_path: Path) -> None:
    image = layer(tmp_path / "image", {"etc/group": GROUP})
    with (image / "etc" / "passwd").open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ImageFileError, match=rf"the image's /etc/passwd is larger than {MAX_FILE_BYTES} bytes"):
        resolve_user([image], "1000")
    os.truncate(image / "etc" / "passwd", MAX_FILE_BYTES)
    assert resolve_user([image], "1000") == Identity(1000, 0, (0,))  # exactly the cap is fine


def test_deep_nesting_is_bounded(tmp_path: Path) -> None:
    deep = "/".join(["d"] * 300)
    image = layer(tmp_path / "image", {f"{deep}/p": b"x", "etc/passwd": f"->/{deep}/p"})
    with pytest.raises(ImageFileError, match="/etc/passwd is nested too deeply"):
        read_image_file([image], "/etc/passwd")


def test_opaque_marker_on_a_layer_root_is_ignored_as_overlayfs_does(tmp_path: Path, base: Path) -> None:
    top = layer(tmp_path / "top", {"bin/x": b"x"})
    os.setxattr(top, OPAQUE_XATTR, b"y")  # checked against a real overlay mount: the base still shows
    assert read_image_file([top, base], "/etc/passwd") == PASSWD


def bouncing_image(tmp_path: Path, links: int) -> list[Path]:
    """Three layers that all have etc/a; passwd -> a/../a/../.../p1 -> ... -> passwd.real, each
    link 400 bounces (a symlink holds 4095 bytes)."""
    names = ["passwd", *(f"p{i}" for i in range(1, links)), "passwd.real"]
    files: dict[str, bytes | str] = {"etc/a": "dir", "etc/passwd.real": PASSWD}
    files |= {f"etc/{name}": "->" + "a/../" * 400 + after for name, after in itertools.pairwise(names)}
    top = layer(tmp_path / "top", files)
    return [top, layer(tmp_path / "mid", {"etc/a": "dir"}), layer(tmp_path / "low", {"etc/a": "dir"})]


READ_WITH_FEW_FDS = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    from node.runtime.imagefs import ImageFileError, read_image_file
    resource.setrlimit(resource.RLIMIT_NOFILE, (48, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    try:
        print(read_image_file([Path(p) for p in sys.argv[1:]], "/etc/passwd").decode().split(":")[0])
    except ImageFileError as exc:
        print(exc)
""")


def test_walking_up_and_down_holds_few_fds(tmp_path: Path) -> None:
    """Each `a` opens three directories: a walk that kept them all would need 1200 fds."""
    image = bouncing_image(tmp_path, 1)
    argv = [sys.executable, "-c", READ_WITH_FEW_FDS, *map(str, image)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == "root\n", done.stdout


def test_a_walk_that_opens_too_many_directories_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageFileError, match=r"/etc/passwd .* needs more than 4096 directory lookups"):
        read_image_file(bouncing_image(tmp_path, 2), "/etc/passwd")
