"""Root: secret volumes (ContainerConfig.secret_mounts) in real containers: files on a read-only
tmpfs of the container's own, owned by its user, gone with it, and on no disk of the node."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime, RuntimeStartError
from node.runtime.model import SecretFile, SecretMount
from node.runtime.userns import IdRange
from tests.fixtures.scan import files_holding
from tests.runtime.test_runtime_containers import sections, wait_for_output
from tests.runtime.test_runtime_pid1 import spare_ready

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]

SECRET = b"s3cr3t-file-value-4b9e"
CREDS = SecretMount(
    "/etc/creds",
    (SecretFile("db/password", 0o400, SECRET), SecretFile("token", 0o440, b"tok-value-1c2d")),
)
# What the container prints: hashes, never the value (its log is a file on the node's disk).
SCRIPT = (
    "echo '#sha'; busybox sha256sum /etc/creds/db/password; echo '#stat';"
    " busybox stat -c '%a %u %g %n' /etc/creds/db/password /etc/creds/token /etc/creds/db;"
    " echo '#mount'; grep ' /etc/creds ' /proc/self/mountinfo; echo '#write'; sh -c 'echo x > /etc/creds/new' 2>&1;"
    " echo '#ready'; exec sleep 1000"
)


@pytest.fixture
def userns_runtime(tmp_path: Path, cgroup_parent: str) -> Iterator[Runtime]:
    rt = Runtime(tmp_path / "uns-state", cgroup_parent, userns_ids=IdRange(2**30 + 2**26, 2**17))
    try:
        yield rt
    finally:
        rt.cleanup_all()


def _check_inside(out: dict[str, list[str]], uid: int) -> None:
    assert out["sha"] == [f"{hashlib.sha256(SECRET).hexdigest()}  /etc/creds/db/password"], out
    assert out["stat"] == [
        f"400 {uid} {uid} /etc/creds/db/password",
        f"440 {uid} {uid} /etc/creds/token",
        f"755 {uid} {uid} /etc/creds/db",
    ], out
    (line,) = out["mount"]
    options, _, fs = line.partition(" - ")
    assert fs.split()[0] == "tmpfs", line
    assert {"ro", "nosuid", "nodev"} <= set(options.split()[5].split(",")), line
    assert out["write"] == ["sh: can't create /etc/creds/new: Read-only file system"], out


@pytest.mark.parametrize("read_only_rootfs", [False, True])
def test_secret_files_on_a_read_only_tmpfs_owned_by_the_user_and_gone_with_it(
    runtime: Runtime,
    make_config: MakeConfig,
    tmp_path: Path,
    host_leftovers: Callable[[str, Path], list[str]],
    cgroup_parent: str,
    read_only_rootfs: bool,
) -> None:
    config = make_config("sv", "sh", "-c", SCRIPT, user="1000:1000", read_only_rootfs=read_only_rootfs)
    config = dataclasses.replace(config, secret_mounts=(CREDS,))
    runtime.start(config)
    _check_inside(sections(wait_for_output(config, "#ready")), 1000)
    assert files_holding(tmp_path, SECRET) == []  # state dir, upper layer, spec.json, the log
    assert '"secret_mounts": ["/etc/creds"]' in (runtime.state_dir / "sv" / "spec.json").read_text()
    host_mounts = Path("/proc/self/mountinfo").read_text()
    assert " /etc/creds " not in host_mounts  # only in the container's mount namespace
    runtime.stop("sv", 1)
    runtime.remove("sv")
    assert sorted(p.name for p in runtime.state_dir.iterdir()) == [".native", ".seccomp", ".zygote"]
    runtime.cleanup_all()
    assert host_leftovers(cgroup_parent, runtime.state_dir) == []
    assert files_holding(tmp_path, SECRET) == []


def test_a_pre_staged_pid1_mounts_them_too(runtime: Runtime, make_config: MakeConfig, tmp_path: Path) -> None:
    """Secret volumes need nothing of the host's mount namespace: a spare shim's PID 1 takes them."""
    runtime.start(make_config("warm", "true"))  # starts the zygote, which forks a spare
    for attempt in range(10):  # a spare made stale by another test's mount is not used: again
        config = make_config("svs", "sh", "-c", SCRIPT, user="1000:1000")
        config = dataclasses.replace(config, log_path=tmp_path / f"svs-{attempt}.log")  # one run's output
        deadline = time.monotonic() + 10
        while not spare_ready(runtime.state_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        runtime.start(dataclasses.replace(config, secret_mounts=(CREDS,)))
        if json.loads((runtime.state_dir / "svs" / "start.json").read_text())["staged"]:
            break
        runtime.stop("svs", 0)
        runtime.remove("svs")
    else:
        pytest.fail("no start took a spare shim in 10 tries")
    _check_inside(sections(wait_for_output(config, "#ready")), 1000)
    runtime.stop("svs", 1)


def test_with_a_user_namespace_the_files_belong_to_the_containers_user(
    userns_runtime: Runtime, make_config: MakeConfig
) -> None:
    """hostUsers: false: written as the host id of the user (its block's base + 1000), seen as 1000."""
    config = make_config("svu", "sh", "-c", SCRIPT, user="1000:1000", user_namespace=True)
    config = dataclasses.replace(config, secret_mounts=(CREDS,))
    userns_runtime.start(config)
    _check_inside(sections(wait_for_output(config, "#ready")), 1000)
    userns_runtime.stop("svu", 1)


@pytest.mark.parametrize("path", ["../../etc/x", "/etc/x", "a/../../x", "a\0b", ".."])
def test_a_hostile_file_path_is_refused_before_anything_starts(
    runtime: Runtime, make_config: MakeConfig, path: str
) -> None:
    config = make_config("bad", "true")
    config = dataclasses.replace(config, secret_mounts=(SecretMount("/etc/creds", (SecretFile(path, 0o400, b"x"),)),))
    with pytest.raises(RuntimeStartError, match="secret volume mount"):
        runtime.start(config)
    assert not (runtime.state_dir / "bad").exists()


def test_deep_paths_many_files_and_a_large_one_fit_their_tmpfs(runtime: Runtime, make_config: MakeConfig) -> None:
    """The tmpfs is sized from the files (pages, inodes for every directory): nothing is left out."""
    deep = "/".join(f"d{i}" for i in range(60)) + "/leaf"
    files: tuple[SecretFile, ...] = (SecretFile(deep, 0o400, b"deep"), SecretFile("big", 0o400, b"x" * 12_000))
    files += tuple(SecretFile(f"many/f{i}", 0o400, b"%d" % i) for i in range(20))
    script = f"cat /s/{deep}; echo; busybox wc -c < /s/big; ls /s/many | busybox wc -l; echo '#end'"
    config = make_config("svd", "sh", "-c", script)
    runtime.start(dataclasses.replace(config, secret_mounts=(SecretMount("/s", files),)))
    assert sections(wait_for_output(config, "#end"))[""] == ["deep", "12000", "20"]
    runtime.stop("svd", 0)


def test_a_tmpfs_flag_the_kernel_does_not_know_is_skipped_as_noswap_is_before_linux_6_4() -> None:
    """Debian 12's kernel (6.1) has no "noswap": fsconfig says EINVAL and the secret volume's
    tmpfs is made without it. A flag no kernel knows takes the same path on any kernel."""
    import os

    from node.runtime import mountapi

    attrs = mountapi.MOUNT_ATTR_NOSUID | mountapi.MOUNT_ATTR_NODEV
    tree = mountapi.new_tmpfs({"size": "1m", "mode": "0700"}, ("noswap", "orch_no_such_flag"), attrs, "test")
    try:
        fd = os.open("probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400, dir_fd=tree)
        os.write(fd, b"x")
        os.close(fd)
    finally:
        os.close(tree)
    with pytest.raises(OSError, match="fsconfig"):  # an unknown *option* stays an error
        mountapi.new_tmpfs({"orch_no_such_option": "1"}, (), attrs, "test")
