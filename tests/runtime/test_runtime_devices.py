"""Devices: the allow-list's two encodings (pure: v1 lines, the v2 eBPF program run by a tiny
interpreter), the program loaded and attached for real on a cgroup2 hierarchy, and containers
with CAP_MKNOD that make a node for the host's disk and cannot read it (root)."""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime
from node.runtime.cgroups import CgroupDriver, Limits, V2Driver, detect, driver_for, v1
from node.runtime.cgroups.devices import (
    ACC_MKNOD,
    ACC_READ,
    ACC_WRITE,
    ALU64_AND_K,
    ALU64_MOV_K,
    ALU64_RSH_K,
    DEV_BLOCK,
    DEV_CHAR,
    JMP_EXIT,
    JMP_JNE_K,
    JMP_JSET_K,
    LDX_MEM_W,
    DeviceRule,
    Insn,
    assemble,
)
from tests.fixtures.devices import open_read, readable_block_device
from tests.fixtures.rootfs import SysprobeUnavailable, build_sysprobe_rootfs
from tests.runtime.test_runtime_containers import run

R, W, M = ACC_READ, ACC_WRITE, ACC_MKNOD

# -- the eBPF program, pure ------------------------------------------------------


def test_instruction_encoding() -> None:
    # struct bpf_insn: code, dst_reg:4 | src_reg:4 (dst in the low nibble), s16 off, s32 imm.
    assert Insn(JMP_EXIT).encode() == bytes.fromhex("9500000000000000")
    assert Insn(ALU64_MOV_K, dst=0, imm=1).encode() == bytes.fromhex("b700000001000000")
    assert Insn(LDX_MEM_W, dst=4, src=1, off=4).encode() == bytes.fromhex("6114040000000000")
    assert Insn(ALU64_AND_K, dst=2, imm=0xFFFF).encode() == bytes.fromhex("57020000ffff0000")
    assert Insn(ALU64_RSH_K, dst=3, imm=16).encode() == bytes.fromhex("7703000010000000")
    assert Insn(JMP_JNE_K, dst=4, off=3, imm=254).encode() == bytes.fromhex("55040300fe000000")
    assert Insn(JMP_JSET_K, dst=3, off=2, imm=6).encode() == bytes.fromhex("4503020006000000")


def execute(code: bytes, kind: int, major: int, minor: int, access: int) -> int:
    """Run a device program the way the kernel would, for the few opcodes assemble() emits."""
    ctx = struct.pack("<III", access << 16 | kind, major, minor)  # struct bpf_cgroup_dev_ctx
    regs, pc, steps = [0] * 11, 0, 0
    while True:
        code_, regs_, off, imm = struct.unpack_from("<BBhi", code, pc * 8)
        dst, src = regs_ & 0xF, regs_ >> 4
        pc, steps = pc + 1, steps + 1
        assert steps <= len(code) // 8, "a device program only jumps forward"
        if code_ == LDX_MEM_W:
            assert src == 1 and off in (0, 4, 8)
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif code_ == ALU64_AND_K:
            regs[dst] &= imm
        elif code_ == ALU64_RSH_K:
            regs[dst] >>= imm
        elif code_ == ALU64_MOV_K:
            regs[dst] = imm
        elif code_ in (JMP_JNE_K, JMP_JSET_K):
            taken = regs[dst] != imm if code_ == JMP_JNE_K else bool(regs[dst] & imm)
            pc += off if taken else 0
            assert 0 < pc < len(code) // 8
        else:
            assert code_ == JMP_EXIT, hex(code_)
            return regs[0]


@pytest.mark.parametrize(
    ("kind", "major", "minor", "access", "allowed"),
    [
        (DEV_CHAR, 1, 3, R | W, 1),  # /dev/null
        (DEV_CHAR, 1, 9, R, 1),  # /dev/urandom
        (DEV_CHAR, 5, 2, R | W, 1),  # /dev/ptmx
        (DEV_CHAR, 136, 7, R | W, 1),  # /dev/pts/7
        (DEV_CHAR, 5, 1, R, 0),  # /dev/console: orch makes no console, so none may be opened
        (DEV_CHAR, 5, 1, W, 0),
        (DEV_BLOCK, 254, 0, M, 1),  # mknod of a disk's node is allowed, as in runc ...
        (DEV_BLOCK, 254, 0, R, 0),  # ... but never opening it
        (DEV_BLOCK, 8, 1, R | W, 0),
        (DEV_BLOCK, 1, 3, R, 0),  # the numbers of /dev/null, but a block device
        (DEV_CHAR, 1, 1, R, 0),  # /dev/mem
        (DEV_CHAR, 10, 200, R | W, 0),  # /dev/net/tun
        (DEV_CHAR, 4, 1, W, 0),  # /dev/tty1
        (DEV_CHAR, 136, 0, R | W | M, 1),
    ],
)
def test_the_program_allows_exactly_the_list(kind: int, major: int, minor: int, access: int, allowed: int) -> None:
    code = b"".join(i.encode() for i in assemble())
    assert execute(code, kind, major, minor, access) == allowed


def test_access_must_be_a_subset_of_the_rule() -> None:
    code = b"".join(i.encode() for i in assemble((DeviceRule("c", 1, 3, "r"), DeviceRule("a", None, None, "m"))))
    assert execute(code, DEV_CHAR, 1, 3, R) == 1
    assert execute(code, DEV_CHAR, 1, 3, R | W) == 0
    assert execute(code, DEV_BLOCK, 7, 0, M) == 1
    assert execute(code, DEV_BLOCK, 7, 0, R) == 0
    assert len(assemble(())) == 8  # the prologue and "return 0": deny everything


# -- for real ------------------------------------------------------------------


def unified_root() -> Path:
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if detect(root) == "v2" and (root / "cgroup.procs").exists():
            return root
    pytest.skip("no cgroup2 hierarchy")


@pytest.fixture
def disk(tmp_path: Path) -> tuple[int, int, str]:
    """major, minor and a node in tmp_path of the host's root disk (else of a block device the
    host's root can read here): without one there is nothing to deny."""
    found = readable_block_device(tmp_path)
    if isinstance(found, str):
        pytest.skip(found)
    return found


def in_cgroup(cgroup: Path, probe: Callable[[], str]) -> str:
    """probe() run by a child moved into `cgroup` (v2 device programs check the caller's cgroup)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
            os.write(w, probe().encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        return os.read(r, 100).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)


@pytest.mark.root
def test_v2_program_attached_for_real(disk: tuple[int, int, str]) -> None:
    disk_node = disk[2]
    root = unified_root()
    top = f"orch-test-{uuid.uuid4().hex[:8]}"
    drivers = {"guarded": V2Driver(root), "control": V2Driver(root, attach_devices=lambda _: None)}
    try:
        for name, driver in drivers.items():
            driver.create(f"{top}/{name}", Limits())
        guarded, control = root / top / "guarded", root / top / "control"
        assert in_cgroup(guarded, lambda: open_read(disk_node)) == os.strerror(1)  # EPERM
        assert in_cgroup(guarded, lambda: open_read("/dev/null")) == "OK"
        assert in_cgroup(guarded, lambda: open_read("/dev/zero")) == "OK"
        assert in_cgroup(control, lambda: open_read(disk_node)) == "OK"  # the program is what denies
    finally:
        for name in drivers:
            drivers[name].remove(f"{top}/{name}")
        drivers["control"].remove(top)
    assert not (root / top).exists()


@pytest.fixture(scope="module")
def probe_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_sysprobe_rootfs(tmp_path_factory.mktemp("sysprobe-rootfs"))
    except SysprobeUnavailable as exc:
        pytest.skip(f"sysprobe: {exc}")


def mknod_and_read(
    rt: Runtime, root: Path, tmp_path: Path, disk: tuple[int, int, str], id: str, **kw: object
) -> dict[str, str]:
    major, minor, _ = disk
    argv = ("sysprobe", f"mknod=/dev/hostdisk,b,{major},{minor}", "read=/dev/hostdisk", "read=/dev/null")
    config = ContainerConfig(id, root, (*argv, "write=/dev/null"), {}, tmp_path / f"{id}.log", **kw)  # type: ignore[arg-type]
    state, text = run(rt, config)
    assert state.exit_code == 0, text
    return {f"{name} {i}": result for i, (name, result) in enumerate(line.split(" ", 1) for line in text.splitlines())}


@pytest.mark.root
def test_mknod_cannot_reach_the_host_disk(
    runtime: Runtime, probe_rootfs: Path, tmp_path: Path, disk: tuple[int, int, str]
) -> None:
    got = mknod_and_read(runtime, probe_rootfs, tmp_path, disk, "mknod", cap_add=("MKNOD",))
    want = {"mknod 0": "OK", "read 1": "EPERM", "read 2": "OK", "write 3": "OK"}
    assert got == want  # the node can be made (as in runc), not opened
    without = mknod_and_read(runtime, probe_rootfs, tmp_path, disk, "nocap")
    assert without["mknod 0"] == "EPERM"  # and without CAP_MKNOD not even made (the kernel)


@pytest.mark.root
def test_mknod_cannot_reach_the_hosts_console(runtime: Runtime, probe_rootfs: Path, tmp_path: Path) -> None:
    argv = ("sysprobe", "mknod=/dev/console,c,5,1", "open=/dev/console", "open=/dev/null")
    config = ContainerConfig("console", probe_rootfs, argv, {}, tmp_path / "console.log", cap_add=("MKNOD",))
    state, text = run(runtime, config)
    assert state.exit_code == 0, text
    assert text.splitlines() == ["mknod OK", "open EPERM", "open OK"]


@pytest.mark.root
def test_control_without_the_device_rules_reads_the_disk(
    probe_rootfs: Path, tmp_path: Path, disk: tuple[int, int, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same container on a cgroup without the allow-list reads the disk: the list is the defence."""
    cgroups: CgroupDriver
    if detect() == "v2":
        cgroups = V2Driver(attach_devices=lambda _: None)
    else:
        monkeypatch.setattr(v1, "apply_devices", lambda *_: None)
        cgroups = driver_for()
    rt = Runtime(tmp_path / "state", f"orch-test-{uuid.uuid4().hex[:8]}/node", cgroups=cgroups)
    try:
        got = mknod_and_read(rt, probe_rootfs, tmp_path, disk, "unguarded", cap_add=("MKNOD",))
    finally:
        rt.cleanup_all()
    assert got["read 1"] == "OK"
