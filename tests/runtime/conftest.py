"""Fixtures for the runtime tests: a busybox rootfs, a Runtime that always cleans up."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime
from node.runtime.logs import parse_log_line
from tests.fixtures.rootfs import BUSYBOX, build_busybox_rootfs

EXTRA_APPLETS = ("ping", "touch", "wc", "head", "seq")


@pytest.fixture(autouse=True)
def _skip_root_tests_unless_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal image: static busybox plus applet symlinks; used read-only by every container."""
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    root = build_busybox_rootfs(tmp_path_factory.mktemp("rootfs"))
    for name in EXTRA_APPLETS:
        (root / "bin" / name).symlink_to("busybox")
    (root / "etc" / "not-executable").write_text("data\n")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1001:1002::/:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1002:\nextra:x:1003:app\n")
    return root


@pytest.fixture
def cgroup_parent() -> str:
    return f"orch-test-{uuid.uuid4().hex[:8]}/node"


@pytest.fixture
def runtime(tmp_path: Path, cgroup_parent: str) -> Iterator[Runtime]:
    rt = Runtime(tmp_path / "state", cgroup_parent)
    try:
        yield rt
    finally:
        rt.cleanup_all()


@pytest.fixture
def make_config(rootfs: Path, tmp_path: Path) -> Callable[..., ContainerConfig]:
    def make(id: str, *argv: str, **kw: object) -> ContainerConfig:
        return ContainerConfig(
            id=id,
            rootfs=rootfs,
            argv=argv,
            env={},
            log_path=tmp_path / "logs" / f"{id}.log",
            **kw,  # type: ignore[arg-type]
        )

    return make


@pytest.fixture
def host_leftovers() -> Callable[[str, Path], list[str]]:
    return _host_leftovers


def log_text(path: Path) -> str:
    """The container's output from its CRI-format log (the text of each line)."""
    if not path.exists():
        return ""
    return "".join(parse_log_line(line).text + "\n" for line in path.read_text().splitlines())


def _host_leftovers(cgroup_parent: str, state_dir: Path) -> list[str]:
    """Anything of ours on the host: cgroup dirs, mounts, state entries."""
    top = cgroup_parent.split("/")[0]
    cgroups = Path("/sys/fs/cgroup")  # v1: one dir per hierarchy; pure v2: the one tree
    found = [str(p) for p in [*cgroups.glob(f"*/{top}"), *cgroups.glob(top)]]
    found += [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(state_dir) in line]
    if state_dir.exists():
        found += [str(p) for p in state_dir.iterdir()]
    return found
