"""Unit (no root): cgroup limit files written into temporary fake trees, and the quota math."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.runtime.cgroups import (
    CGROUP2_SUPER_MAGIC,
    Limits,
    V1Driver,
    V2Driver,
    common,
    detect,
    devices,
    driver_for,
    v1,
    v2,
)
from node.runtime.errors import CgroupWriteError, ContainerError

PATH = "orch/node-1/web-1"


@pytest.mark.parametrize(
    ("millis", "quota", "shares", "weight"),
    [
        (0, -1, 2, 1),
        (1, 1000, 2, 1),
        (250, 25_000, 256, 10),
        (500, 50_000, 512, 20),
        (1000, 100_000, 1024, 39),
        (2500, 250_000, 2560, 98),
    ],
)
def test_cpu_math(millis: int, quota: int, shares: int, weight: int) -> None:
    assert common.cpu_quota_us(millis) == quota
    assert common.cpu_shares(millis) == shares
    assert v2.cpu_weight(millis) == weight


def v1_tree(root: Path) -> Path:
    for ctrl in v1.CONTROLLERS:
        (root / ctrl).mkdir()
    return root


def test_v1_create_writes_each_controller(tmp_path: Path) -> None:
    root = v1_tree(tmp_path)
    V1Driver(root).create(PATH, Limits(cpu_millis=500, memory_bytes=64 << 20, pids=100))
    assert (root / "memory" / PATH / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (root / "cpu" / PATH / "cpu.cfs_quota_us").read_text() == "50000"
    assert (root / "cpu" / PATH / "cpu.cfs_period_us").read_text() == "100000"
    assert (root / "cpu" / PATH / "cpu.shares").read_text() == "512"
    assert (root / "pids" / PATH / "pids.max").read_text() == "100"
    assert (root / "cpuacct" / PATH).is_dir()


def test_v1_unlimited_writes_only_the_device_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = v1_tree(tmp_path)
    written: list[tuple[str, str]] = []
    monkeypatch.setattr(v1, "write", lambda path, data: written.append((path.name, data)))
    V1Driver(root).create(PATH, Limits())
    # Deny all first, then runc's list, one line per write (the kernel parses one per write).
    assert written == [("devices.deny", "a")] + [("devices.allow", line) for line in devices.v1_lines()]
    assert written[1:4] == [("devices.allow", "c *:* m"), ("devices.allow", "b *:* m"), ("devices.allow", "c 1:3 rwm")]
    assert ("devices.allow", "c 136:* rwm") in written
    # No block device can be read or written, whatever its number.
    assert not any(data.startswith(("b ", "a ")) and data.split()[-1] != "m" for _, data in written[1:])


def test_v1_without_the_devices_controller_is_an_error(tmp_path: Path) -> None:
    for ctrl in ("memory", "cpu", "cpuacct", "pids"):
        (tmp_path / ctrl).mkdir()
    with pytest.raises(ContainerError, match="devices is not mounted"):
        V1Driver(tmp_path).create(PATH, Limits())


def test_v1_memsw_follows_limit_when_swap_accounting_exists(tmp_path: Path) -> None:
    (tmp_path / "memory.memsw.limit_in_bytes").write_text("-1")
    v1.apply_memory(tmp_path, 16 << 20)
    assert (tmp_path / "memory.memsw.limit_in_bytes").read_text() == str(16 << 20)


def test_v1_missing_controller_for_a_limit_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    with pytest.raises(ContainerError, match="memory"):
        V1Driver(tmp_path).create(PATH, Limits(memory_bytes=1 << 20))


def test_v1_reads_oom_kills_and_stats(tmp_path: Path) -> None:
    root = v1_tree(tmp_path)
    V1Driver(root).create(PATH, Limits())
    (root / "memory" / PATH / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    (root / "memory" / PATH / "memory.usage_in_bytes").write_text("4096\n")
    (root / "cpuacct" / PATH / "cpuacct.usage").write_text("123456\n")
    (root / "pids" / PATH / "pids.current").write_text("3\n")
    (root / "memory" / PATH / "memory.stat").write_text("cache 1024\ntotal_inactive_file 1000\n")
    drv = V1Driver(root)
    assert drv.oom_killed(PATH) == 2
    assert drv.stats(PATH) == common.CgroupStats(
        cpu_usage_ns=123456, memory_bytes=4096, pids=3, memory_working_set_bytes=3096, oom_kills=2
    )


def v2_tree(root: Path, available: str = "cpuset cpu io memory hugetlb pids rdma misc") -> Path:
    cg = root
    for part in ["", *Path(PATH).parts[:-1]]:
        cg = cg / part if part else cg
        cg.mkdir(exist_ok=True)
        (cg / "cgroup.controllers").write_text(available + "\n")
    return root


def test_v2_create_enables_controllers_down_the_tree_and_writes_limits(tmp_path: Path) -> None:
    root = v2_tree(tmp_path)
    (root / PATH).mkdir()
    (root / PATH / "memory.swap.max").write_text("max\n")
    attached: list[Path] = []
    V2Driver(root, attach_devices=attached.append).create(PATH, Limits(cpu_millis=250, memory_bytes=32 << 20, pids=64))
    assert attached == [root / PATH]  # the device program, on the container's own cgroup
    for ancestor in (root, root / "orch", root / "orch" / "node-1"):
        assert (ancestor / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    cg = root / PATH
    assert (cg / "memory.max").read_text() == str(32 << 20)
    assert (cg / "memory.swap.max").read_text() == "0"
    assert (cg / "cpu.max").read_text() == "25000 100000"
    assert (cg / "cpu.weight").read_text() == "10"
    assert (cg / "pids.max").read_text() == "64"


def test_v2_enables_only_available_and_needed_controllers(tmp_path: Path) -> None:
    root = v2_tree(tmp_path, available="hugetlb pids")
    V2Driver(root, attach_devices=lambda _: None).create(PATH, Limits(memory_bytes=0, pids=10))
    assert (root / "cgroup.subtree_control").read_text() == "+pids"
    V2Driver(root, attach_devices=lambda _: None).create("orch/node-1/other", Limits())


def test_v2_reads_events(tmp_path: Path) -> None:
    root = v2_tree(tmp_path)
    cg = root / PATH
    cg.mkdir()
    (cg / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    (cg / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n")
    (cg / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    (cg / "memory.current").write_text("8192\n")
    (cg / "pids.current").write_text("2\n")
    (cg / "memory.stat").write_text("anon 4096\ninactive_file 192\n")
    drv = V2Driver(root)
    assert drv.populated(PATH)
    assert drv.oom_killed(PATH) == 1
    assert drv.stats(PATH) == common.CgroupStats(
        cpu_usage_ns=1_500_000, memory_bytes=8192, pids=2, memory_working_set_bytes=8000, oom_kills=1
    )


def test_write_error_carries_path_data_and_errno(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "pids.max"
    with pytest.raises(CgroupWriteError) as info:
        common.write(target, "5")
    assert (info.value.path, info.value.data, info.value.errno) == (target, "5", 2)
    assert str(target) in str(info.value)


def test_detect_by_filesystem_magic(tmp_path: Path) -> None:
    assert detect(tmp_path) == "v1"
    assert isinstance(driver_for("v1", tmp_path), V1Driver)
    assert isinstance(driver_for("v2", tmp_path), V2Driver)
    unified = Path("/sys/fs/cgroup/unified")
    if unified.is_dir():
        from node.runtime.sys import statfs_magic

        assert statfs_magic(unified) == CGROUP2_SUPER_MAGIC
        assert detect(unified) == "v2"


def test_own_cgroup_reads_the_hierarchy_of_a_controller(tmp_path: Path) -> None:
    (tmp_path / "thread-self").mkdir()
    (tmp_path / "thread-self" / "cgroup").write_text("2:cpu,cpuacct:/a\n8:pids:/b/c\n0::/u\n")
    assert common.own_cgroup("cpuacct", tmp_path) == "/a"
    assert common.own_cgroup("pids", tmp_path) == "/b/c"
    assert common.own_cgroup("", tmp_path) == "/u"
    assert common.own_cgroup("memory", tmp_path) is None


def test_warm_attach_moves_its_thread_into_its_own_cgroup(tmp_path: Path) -> None:
    own = common.own_cgroup("pids") or common.own_cgroup("")
    controller = "pids" if common.own_cgroup("pids") is not None else ""
    assert own is not None
    tasks = tmp_path / own.lstrip("/") / "tasks"
    tasks.parent.mkdir(parents=True, exist_ok=True)
    tasks.write_text("")
    common.warm_attach(tmp_path, controller, "tasks").join()
    assert tasks.read_text().isdigit()  # the warm-up thread's tid


def test_warm_attach_ignores_a_missing_hierarchy(tmp_path: Path) -> None:
    common.warm_attach(tmp_path / "absent", "pids", "tasks").join()  # no exception, nothing written
    assert not (tmp_path / "absent").exists()
