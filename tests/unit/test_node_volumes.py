"""The node's own volume checks (node/volumes.py), whatever the scheduler sent: no root needed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import node.volumes as node_volumes
from node.images.process import ImageConfig
from node.images.store import PreparedImage
from node.runtime import Mount, NotFound
from node.volumes import NodeVolumes, VolumeError, disk_usage
from node.worker import InstanceWorker, WorkerDeps
from orch.v1 import types_pb2 as pb


def instance(*volumes: pb.Volume, name: str = "web-abcde", mounts: tuple[tuple[str, str], ...] = ()) -> pb.Instance:
    inst = pb.Instance(name=name, app="web")
    inst.spec.volumes.extend(volumes)
    for volume, path in mounts or tuple((v.name, f"/{v.name}") for v in volumes):
        inst.spec.volume_mounts.add(name=volume, mount_path=path)
    return inst


def host_path(path: str, kind: str = "", name: str = "data") -> pb.Volume:
    return pb.Volume(name=name, host_path=pb.HostPathVolume(path=path, type=kind))


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    top = tmp_path / "srv" / "data"
    (top / "web").mkdir(parents=True)
    return top


def test_a_host_path_under_an_allowed_directory_is_mounted_beneath_it(tmp_path: Path, allowed: Path) -> None:
    volumes = NodeVolumes(tmp_path / "volumes", (str(allowed),))
    (mount,) = volumes.prepare(instance(host_path(f"{allowed}/web")))
    assert mount == Mount(allowed, "web", "/data", False, False)
    (mount,) = volumes.prepare(instance(host_path(str(allowed))))
    assert mount == Mount(allowed, "", "/data", False, False)


@pytest.mark.parametrize(
    "path",
    ["/etc", "{top}base", "{parent}", "{top}/../../etc"],
    ids=["elsewhere", "sibling-prefix", "above", "dotdot"],
)
def test_the_node_refuses_what_it_does_not_allow(tmp_path: Path, allowed: Path, path: str) -> None:
    """Even if a scheduler (a stale one, a hostile one) sent it."""
    volumes = NodeVolumes(tmp_path / "volumes", (str(allowed),))
    with pytest.raises(VolumeError) as info:
        volumes.prepare(instance(host_path(path.format(top=allowed, parent=allowed.parent))))
    assert info.value.reason == "HostPathNotAllowed"


def test_a_node_that_allows_nothing_says_so(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match=r"not under a directory this node allows \(--allow-host-path: none\)"):
        NodeVolumes(tmp_path / "volumes").prepare(instance(host_path("/srv/data")))


def test_a_symlink_out_of_the_allowed_directory_is_refused(tmp_path: Path, allowed: Path) -> None:
    """A container that can write there (another app's hostPath) plants `escape -> /etc`."""
    (allowed / "escape").symlink_to("/etc")
    (allowed / "inside").symlink_to("web")  # staying beneath is fine
    volumes = NodeVolumes(tmp_path / "volumes", (str(allowed),))
    with pytest.raises(VolumeError, match="leads out of its root") as info:
        volumes.prepare(instance(host_path(f"{allowed}/escape")))
    assert info.value.reason == "HostPathNotAllowed"
    with pytest.raises(VolumeError):
        volumes.prepare(instance(host_path(f"{allowed}/escape/ssl", "DirectoryOrCreate")))
    assert not Path("/etc/ssl/.orch").exists()
    (mount,) = volumes.prepare(instance(host_path(f"{allowed}/inside")))
    assert (mount.root, mount.path) == (allowed, "inside")


def test_directory_or_create_makes_it_directory_needs_it(tmp_path: Path, allowed: Path) -> None:
    volumes = NodeVolumes(tmp_path / "volumes", (str(allowed),))
    with pytest.raises(VolumeError, match="does not exist") as info:
        volumes.prepare(instance(host_path(f"{allowed}/new/deeper")))
    assert info.value.reason == "FailedMount"
    volumes.prepare(instance(host_path(f"{allowed}/new/deeper", "DirectoryOrCreate")))
    assert (allowed / "new" / "deeper").is_dir()


def test_an_empty_dir_is_per_instance_kept_until_removed(tmp_path: Path) -> None:
    volumes = NodeVolumes(tmp_path / "volumes")
    inst = instance(pb.Volume(name="cache", empty_dir=pb.EmptyDirVolume()))
    (mount,) = volumes.prepare(inst)
    assert mount == Mount(tmp_path / "volumes" / "web-abcde" / "cache", "", "/cache", False, True)
    assert (mount.root.stat().st_mode & 0o777, (tmp_path / "volumes").stat().st_mode & 0o777) == (0o777, 0o700)
    (mount.root / "kept").write_text("x")
    assert volumes.prepare(inst) == (mount,) and (mount.root / "kept").exists()  # a restart keeps it
    other = instance(pb.Volume(name="cache", empty_dir=pb.EmptyDirVolume()), name="web-fghij")
    volumes.prepare(other)
    assert volumes.remove_unknown({"web-fghij"}) == ["web-abcde"]
    assert not mount.root.exists() and (tmp_path / "volumes" / "web-fghij" / "cache").is_dir()
    volumes.cleanup_all()
    assert not (tmp_path / "volumes").exists()


@pytest.mark.parametrize(
    "inst",
    [
        instance(pb.Volume(name="cache", empty_dir=pb.EmptyDirVolume()), name="../../etc"),
        instance(pb.Volume(name="../../../etc", empty_dir=pb.EmptyDirVolume())),
        instance(pb.Volume(name="cache", empty_dir=pb.EmptyDirVolume()), mounts=(("cache", "/proc/sys"),)),
        instance(pb.Volume(name="cache", empty_dir=pb.EmptyDirVolume()), mounts=(("other", "/x"),)),
    ],
    ids=["instance-name", "volume-name", "mount-path", "unknown-volume"],
)
def test_names_and_paths_from_the_scheduler_are_checked_again(tmp_path: Path, inst: pb.Instance) -> None:
    with pytest.raises(VolumeError) as info:
        NodeVolumes(tmp_path / "volumes").prepare(inst)
    assert info.value.reason == "FailedMount"
    assert not any(p.name == "etc" for p in tmp_path.rglob("*"))


def test_a_disk_empty_dir_over_its_limit_is_reported(tmp_path: Path) -> None:
    volumes = NodeVolumes(tmp_path / "volumes")
    inst = instance(pb.Volume(name="cache", empty_dir=pb.EmptyDirVolume(size_limit_bytes=64 << 10)))
    (mount,) = volumes.prepare(inst)
    (mount.root / "small").write_bytes(os.urandom(16 << 10))
    assert volumes.over_limit(inst) == ""
    (mount.root / "big").write_bytes(os.urandom(128 << 10))
    assert volumes.over_limit(inst).startswith('Usage of EmptyDir volume "cache" exceeds the limit "64Ki"')


class RecordingRuntime:
    def __init__(self) -> None:
        self.started: list[str] = []

    def start(self, config, on_netns=None):  # pragma: no cover - must not be reached
        self.started.append(config.id)
        raise AssertionError("started")

    def stop(self, id, grace):
        raise NotFound(id, Path("/nonexistent"))


def test_the_worker_refuses_to_start_an_instance_with_a_host_path_the_node_does_not_allow(tmp_path: Path) -> None:
    """The scheduler sent it here anyway: the instance fails with the reason, no container starts."""
    runtime = RecordingRuntime()
    reports: list[pb.InstanceStatus] = []
    volumes = NodeVolumes(tmp_path / "volumes", ("/srv/allowed",))
    deps = WorkerDeps(runtime, None, None, tmp_path, lambda _, s: reports.append(s), volumes=volumes)  # type: ignore[arg-type]
    inst = instance(host_path("/etc"))
    inst.spec.restart_policy = pb.RESTART_POLICY_NEVER
    worker = InstanceWorker(inst, deps)
    image = PreparedImage("busybox", "sha256:x", (tmp_path,), ImageConfig(cmd=("sh",)))

    async def pull() -> PreparedImage:
        return image

    async def teardown() -> None:
        pass

    async def scenario() -> None:
        worker._pull = pull  # type: ignore[method-assign]
        worker._teardown = teardown  # type: ignore[method-assign]
        worker.start()
        for _ in range(500):
            if any(r.reason == "HostPathNotAllowed" for r in reports):
                break
            await asyncio.sleep(0.01)
        worker.request_stop()
        assert worker.task is not None
        await worker.task

    asyncio.run(scenario())
    refused = next(r for r in reports if r.reason == "HostPathNotAllowed")
    assert refused.state == pb.INSTANCE_STATE_FAILED
    assert 'hostPath "/etc" of volume "data" is not under a directory this node allows' in refused.message
    assert runtime.started == []


def test_a_tree_too_big_to_measure_in_time_is_evicted_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: a container must not escape its limit by making `du` slow."""
    volumes = NodeVolumes(tmp_path / "volumes")
    inst = instance(pb.Volume(name="cache", empty_dir=pb.EmptyDirVolume(size_limit_bytes=1 << 20)))
    (mount,) = volumes.prepare(inst)
    for i in range(200):
        (mount.root / str(i)).mkdir()
    assert disk_usage(mount.root, timeout=0.000001) is None
    monkeypatch.setattr(node_volumes, "DU_TIMEOUT", 0.000001)
    assert "could not be measured within" in volumes.over_limit(inst)
