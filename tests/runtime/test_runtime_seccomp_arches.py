"""seccomp where the kernel and the filter read arguments differently: int arguments with high bits
set, 32-bit x86 syscalls from a 64-bit process (int 0x80), and socketcall, whose arguments are in
memory. The profile's rules (pure) and real containers probing with tests/fixtures/sysprobe.c."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime
from node.runtime.seccomp import DEFAULT_PROFILE, load_profile, resolve
from node.runtime.seccomp.profile import ACTIONS, OPERATORS
from node.runtime.security import DEFAULT_CAPS
from tests.fixtures.rootfs import SysprobeUnavailable, build_sysprobe_rootfs
from tests.runtime.test_runtime_containers import run
from tests.runtime.test_runtime_seccomp import X86_64, probe

ALLOW = ACTIONS["SCMP_ACT_ALLOW"]
EPERM = ACTIONS["SCMP_ACT_ERRNO"] | 1
SIGSYS_EXIT = 128 + 31


def test_every_argument_check_of_the_default_profile_reads_32_bits() -> None:
    """The kernel reads socket's family, personality's persona and clone's flags as ints or masks
    them: a 64-bit EQ/NE/GT would miss `value | 1 << 32`. So only MASKED_EQ with a 32-bit mask."""
    profile = load_profile(DEFAULT_PROFILE)
    checks = [(rule.where, a) for rule in profile.rules for a in rule.args]
    assert checks
    for where, arg in checks:
        assert arg.op == OPERATORS["SCMP_CMP_MASKED_EQ"] and arg.value <= 0xFFFFFFFF, (where, arg)


def test_sockets_only_of_the_containers_families() -> None:
    f = resolve(load_profile(DEFAULT_PROFILE), DEFAULT_CAPS, *X86_64)
    for name in ("socket", "socketpair"):
        allowed = {a.value_two for r in f.rules if name in r.names and r.action == ALLOW for a in r.args}
        assert allowed == {1, 2, 10, 16, 17}, name  # unix, inet, inet6, netlink, packet
    assert [(a.value, a.value_two) for r in f.rules if "socket" in r.names and r.action == EPERM for a in r.args] == [
        (0xFFFFFFFF, 40)  # AF_VSOCK, on purpose
    ]
    assert not [r for r in f.rules if "socketcall" in r.names]  # the multiplexer hides the family


@pytest.fixture(scope="module")
def probe_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.uname().machine != "x86_64":
        pytest.skip("int 0x80 probes: x86_64 only")
    try:
        return build_sysprobe_rootfs(tmp_path_factory.mktemp("sysprobe-rootfs"))
    except SysprobeUnavailable as exc:
        pytest.skip(f"sysprobe: {exc}")


PROBES = ("socket-vsock-hi", "ia32-socketcall-vsock", "ia32-socketcall-unix", "ia32-keyctl", "ia32-getpid")


@pytest.mark.root
def test_no_vsock_by_high_bits_or_by_socketcall(runtime: Runtime, probe_rootfs: Path, tmp_path: Path) -> None:
    free = probe(runtime, probe_rootfs, tmp_path, "free", *PROBES, seccomp="unconfined")
    if free["ia32-getpid"] != "OK":
        pytest.skip(f"no 32-bit syscalls on this kernel (ia32_emulation off?): {free}")
    assert free == dict.fromkeys(PROBES, "OK")  # control: what is denied below is the filter's doing
    got = probe(runtime, probe_rootfs, tmp_path, "filtered", *PROBES)
    assert got == {
        "socket-vsock-hi": "EPERM",  # the family's low 32 bits are what the kernel reads
        # 32-bit x86 gets no socket at all through socketcall: the vsock denial covers the whole
        # SYS_SOCKET sub-call, the family allow-list cannot be checked there (compiler.py).
        "ia32-socketcall-vsock": "EPERM",
        "ia32-socketcall-unix": "EPERM",
        "ia32-keyctl": "EPERM",
        "ia32-getpid": "OK",  # 32-bit programs still run
    }


@pytest.mark.root
def test_a_syscall_of_an_unlisted_architecture_kills(probe_rootfs: Path, tmp_path: Path, cgroup_parent: str) -> None:
    """An operator's deny-list that names only x86_64: int 0x80 must not be the way around it."""
    deny = {"names": ["keyctl", "unshare", "io_uring_setup"], "action": "SCMP_ACT_ERRNO"}
    mine = tmp_path / "denylist.json"
    mine.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                                "syscalls": [deny]}))  # fmt: skip
    rt = Runtime(tmp_path / "state", cgroup_parent, seccomp_profile=mine)
    try:
        script = "sysprobe keyctl getpid; sysprobe ia32-keyctl; echo ia32=$?"
        state, text = run(rt, ContainerConfig("arch", probe_rootfs, ("sh", "-c", script), {}, tmp_path / "a.log"))
    finally:
        rt.cleanup_all()
    assert state.exit_code == 0, text
    # The shell says "Bad system call" (SIGSYS), no "ia32-keyctl OK": killed on its first int 0x80.
    assert sorted(text.splitlines()) == sorted(["keyctl EPERM", "getpid OK", "Bad system call", f"ia32={SIGSYS_EXIT}"])
