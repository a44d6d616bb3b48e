"""Root: volumes bound into real containers (ContainerConfig.mounts), seen from inside and from the host."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Mount, Runtime, RuntimeStartError
from node.runtime.userns import IdRange
from node.volumes import NodeVolumes
from orch.v1 import types_pb2 as pb
from tests.runtime.test_runtime_containers import run, sections

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    top = tmp_path / "allowed"
    (top / "data").mkdir(parents=True)
    (top / "data" / "from-host").write_text("hello from the host\n")
    return top


@pytest.fixture
def userns_runtime(tmp_path: Path, cgroup_parent: str) -> Iterator[Runtime]:
    rt = Runtime(tmp_path / "uns-state", cgroup_parent, userns_ids=IdRange(2**30 + 2**25, 2**17))
    try:
        yield rt
    finally:
        rt.cleanup_all()


def test_a_volume_is_visible_and_writable_and_the_host_sees_the_writes(
    runtime: Runtime, make_config: MakeConfig, host_dir: Path
) -> None:
    script = "cat /srv/in/from-host; echo written > /srv/in/from-container; grep ' /srv/in ' /proc/self/mountinfo"
    config = make_config("vol", "sh", "-c", script, mounts=(Mount(host_dir, "data", "/srv/in"),))
    state, text = run(runtime, config)
    assert state.exit_code == 0, text
    assert text.startswith("hello from the host\n")
    assert (host_dir / "data" / "from-container").read_text() == "written\n"
    options = text.splitlines()[1].split()[5]
    assert {"nosuid", "nodev", "rw"} <= set(options.split(",")), text


def test_read_only_holds_for_every_mount_below_and_cannot_be_remounted(
    runtime: Runtime, make_config: MakeConfig, host_dir: Path
) -> None:
    """Recursive: a mount under the source (here a tmpfs) is read-only in the container too; and
    container root cannot remount it writable (no CAP_SYS_ADMIN; the write still fails after)."""
    sub = host_dir / "data" / "sub"
    sub.mkdir()
    subprocess.run(["mount", "--make-private", "-t", "tmpfs", "tmpfs", str(sub)], check=True)
    try:
        script = (
            "echo '#top'; touch /ro/file 2>&1; echo '#sub'; touch /ro/sub/file 2>&1;"
            "echo '#remount'; mount -o remount,rw /ro 2>&1 || echo REFUSED; touch /ro/file 2>&1; echo '#end'"
        )
        config = make_config("ro", "sh", "-c", script, mounts=(Mount(host_dir, "data", "/ro", read_only=True),))
        _, text = run(runtime, config)
        out = sections(text)
        assert out["top"] == ["touch: /ro/file: Read-only file system"], text
        assert out["sub"] == ["touch: /ro/sub/file: Read-only file system"], text
        assert out["remount"][-2:] == ["REFUSED", "touch: /ro/file: Read-only file system"], text
        assert not (host_dir / "data" / "file").exists() and not (sub / "file").exists()
    finally:
        subprocess.run(["umount", str(sub)], check=True)


def test_in_a_user_namespace_even_cap_sys_admin_cannot_remount_it_writable(
    userns_runtime: Runtime, make_config: MakeConfig, host_dir: Path
) -> None:
    """The mount belongs to the host's user namespace: container root's CAP_SYS_ADMIN (in its own)
    does not reach it. Without a user namespace CAP_SYS_ADMIN is host root, and could (Docker too)."""
    script = "mount -o remount,rw /ro 2>&1 || echo REFUSED; touch /ro/file 2>&1"
    mount = Mount(host_dir, "data", "/ro", read_only=True)
    config = make_config(
        "rouns", "sh", "-c", script, mounts=(mount,), cap_add=("SYS_ADMIN",), seccomp="unconfined", user_namespace=True
    )
    _, text = run(userns_runtime, config)
    assert text.splitlines()[-2:] == ["REFUSED", "touch: /ro/file: Read-only file system"], text
    assert not (host_dir / "data" / "file").exists()


def symlink_layer(tmp_path: Path, links: dict[str, str], dirs: tuple[str, ...] = ()) -> Path:
    """An image layer of symlinks (and directories), laid over the busybox rootfs."""
    layer = tmp_path / "hostile-layer"
    layer.mkdir()
    for name, target in links.items():
        (layer / name).symlink_to(target)
    for path in dirs:
        (layer / path.lstrip("/")).mkdir(parents=True)
    return layer


def test_a_symlinked_mount_path_in_the_image_cannot_reach_the_host(
    runtime: Runtime, make_config: MakeConfig, rootfs: Path, host_dir: Path, tmp_path: Path
) -> None:
    """The image ships `/data -> <a host directory>` (absolute) and `/up -> ../../..<it>` (relative),
    and that directory too: the mount points are made and mounted in the image's copy, never in the
    host's (before pivot_root, PID 1 is host root and sees the host's tree)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    layer = symlink_layer(tmp_path, {"data": str(victim), "up": f"../../../../..{victim}"}, dirs=(str(victim),))
    mounts = (Mount(host_dir, "data", "/data/new"), Mount(host_dir, "data", "/up/other"))
    script = f"cat /data/new/from-host /up/other/from-host; ls {victim}"
    config = make_config("evil", "sh", "-c", script, lower_dirs=(layer, rootfs), mounts=mounts)
    try:
        state, text = run(runtime, config)
    finally:
        assert list(victim.iterdir()) == []  # nothing made or mounted on the host's side
    assert state.exit_code == 0, text
    assert text.splitlines() == ["hello from the host"] * 2 + ["new", "other"]


def test_a_symlink_to_a_directory_the_image_lacks_is_a_start_error(
    runtime: Runtime, make_config: MakeConfig, rootfs: Path, host_dir: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    layer = symlink_layer(tmp_path, {"data": str(victim)})
    config = make_config("dangle", "true", lower_dirs=(layer, rootfs), mounts=(Mount(host_dir, "data", "/data/new"),))
    try:
        with pytest.raises(RuntimeStartError, match="/data is a symlink to a missing directory; refused"):
            runtime.start(config)
    finally:
        assert list(victim.iterdir()) == []


@pytest.mark.parametrize("target", ["/proc/sys", "/sys", "/dev", "/"])
def test_a_mount_path_leading_to_the_kernel_interfaces_is_a_start_error(
    runtime: Runtime, make_config: MakeConfig, rootfs: Path, host_dir: Path, tmp_path: Path, target: str
) -> None:
    layer = symlink_layer(tmp_path, {"data": target})
    config = make_config("link", "true", lower_dirs=(layer, rootfs), mounts=(Mount(host_dir, "data", "/data"),))
    with pytest.raises(RuntimeStartError, match=f"leads to {target} in the image"):
        runtime.start(config)


def test_a_source_that_leads_out_of_its_root_is_refused(
    runtime: Runtime, make_config: MakeConfig, host_dir: Path, tmp_path: Path
) -> None:
    """Swapped for a symlink after the agent's check: the runtime resolves it beneath its root again."""
    (host_dir / "swapped").symlink_to(tmp_path)
    config = make_config("swap", "true", mounts=(Mount(host_dir, "swapped", "/data"),))
    with pytest.raises(RuntimeStartError, match="swapped leads out of its root"):
        runtime.start(config)


def test_an_owned_volume_belongs_to_container_root_in_a_user_namespace(
    userns_runtime: Runtime, make_config: MakeConfig, tmp_path: Path
) -> None:
    """An emptyDir (owned=True) is idmapped: container root owns it, and what it writes is stored as
    ids 0..65535 of the container, the same whichever id block its next container gets."""
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o777)
    os.chmod(empty, 0o777)
    script = "ls -lnd /cache; echo hi > /cache/f; mkdir /cache/d; chown 1000:1000 /cache/d; ls -ln /cache"
    config = make_config(
        "own", "sh", "-c", script, user_namespace=True, mounts=(Mount(empty, "", "/cache", owned=True),)
    )
    state, text = run(userns_runtime, config)
    assert state.exit_code == 0, text
    assert text.splitlines()[0].split()[2:4] == ["0", "0"], text  # the top dir: container root's
    owner, other = os.stat(empty / "f").st_uid, os.stat(empty / "d").st_uid
    # Idmapped: the container's own ids on disk. A filesystem that cannot be idmapped (tmpfs before
    # Linux 6.3: a Debian 12 /tmp on tmpfs) gets its top directory chowned: the block's host ids.
    assert (owner, other - owner) in ((0, 1000), (2**30 + 2**25, 1000)), (owner, other)


def test_node_volumes_outlive_the_container_and_go_with_the_instance(
    runtime: Runtime, make_config: MakeConfig, tmp_path: Path
) -> None:
    """node/volumes.py with the runtime: an emptyDir on disk and one in memory (a tmpfs on the
    host, size-limited) keep their files across a container's remove and start, as a restart does."""
    volumes = NodeVolumes(tmp_path / "volumes")
    inst = pb.Instance(name="keep", app="keep")
    inst.spec.volumes.add(name="disk", empty_dir=pb.EmptyDirVolume())
    inst.spec.volumes.add(name="mem", empty_dir=pb.EmptyDirVolume(medium="Memory", size_limit_bytes=1 << 20))
    inst.spec.volume_mounts.add(name="disk", mount_path="/disk")
    inst.spec.volume_mounts.add(name="mem", mount_path="/mem")
    mem = tmp_path / "volumes" / "keep" / "mem"
    try:
        mounts = volumes.prepare(inst)
        script = "echo $1 >> /disk/runs; echo $1 >> /mem/runs; cat /disk/runs /mem/runs; grep ' /mem ' /proc/mounts"
        _, text = run(runtime, make_config("keep", "sh", "-c", script, "sh", "one", mounts=mounts))
        assert text.splitlines()[:2] == ["one", "one"], text
        runtime.remove("keep")
        _, text = run(runtime, make_config("keep", "sh", "-c", script, "sh", "two", mounts=volumes.prepare(inst)))
        lines = text.splitlines()[-5:]  # the same log file: after the first run's lines
        assert lines[:4] == ["one", "two", "one", "two"], text
        assert lines[4].startswith("tmpfs /mem tmpfs ") and "size=1024k" in lines[4], text
        runtime.remove("keep")
    finally:
        volumes.remove("keep")
    assert not (tmp_path / "volumes" / "keep").exists()
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(mem) in line]
