"""seccomp: the profile format (pure), the default profile's content, the cache, and real
containers probing denied syscalls with tests/fixtures/sysprobe.c (root)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime
from node.runtime import init as init_steps
from node.runtime.layout import ContainerDir
from node.runtime.seccomp import (
    DEFAULT_PROFILE,
    FilterCache,
    ProfileError,
    load_profile,
    parse_profile,
    resolve,
)
from node.runtime.seccomp.profile import ACTIONS, Filter
from node.runtime.security import DEFAULT_CAPS
from node.runtime.spec import ShimSpec
from node.runtime.sys import RecordingSyscalls
from tests.fixtures.rootfs import SysprobeUnavailable, build_sysprobe_rootfs
from tests.runtime.test_runtime_containers import run, wait_for_output
from tests.runtime.test_runtime_exec import run_exec

ALLOW = ACTIONS["SCMP_ACT_ALLOW"]
EPERM = ACTIONS["SCMP_ACT_ERRNO"] | 1
ENOSYS = ACTIONS["SCMP_ACT_ERRNO"] | 38
X86_64 = ("x86_64", "6.1.0-13-amd64")


def profile(**top: object) -> bytes:
    return json.dumps({"defaultAction": "SCMP_ACT_ERRNO", **top}).encode()


def action_of(f: Filter, name: str, args: bool = False) -> int | None:
    """The action of the rule naming `name` (without args unless args=True); None = the default."""
    found = {r.action for r in f.rules if name in r.names and bool(r.args) == args}
    assert len(found) <= 1, found
    return found.pop() if found else None


# -- the format ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        (b"{", "", "not valid JSON"),
        (profile(defaultAction="SCMP_ACT_BLOCK"), "defaultAction", "unknown or unsupported action"),
        (profile(syscalls=[{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]), "syscalls[0].action", "unsupported"),
        (
            profile(syscalls=[{"names": ["read"], "action": "SCMP_ACT_ALLOW", "nmaes": []}]),
            "syscalls[0].nmaes",
            "unknown",
        ),
        (profile(syscalls=[{"names": [], "action": "SCMP_ACT_ALLOW"}]), "syscalls[0].names", "at least one"),
        (
            profile(
                syscalls=[{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "op": "SCMP_CMP_EQ"}]}]
            ),
            "syscalls[0].args[0].index",
            "from 0 to 5",
        ),
        (
            profile(syscalls=[{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "op": "EQ"}]}]),
            "syscalls[0].args[0].op",
            "unknown operator",
        ),
        (
            profile(syscalls=[{"names": ["x"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]),
            "syscalls[0].includes.minKernel",
            "MAJOR.MINOR",
        ),
        (profile(architectures=["SCMP_ARCH_X86"], archMap=[{"architecture": "SCMP_ARCH_X86"}]), "archMap", "either"),
        (profile(flags=["SECCOMP_FILTER_FLAG_LOG"]), "flags", "not supported"),
    ],
)
def test_a_bad_profile_names_the_field(data: bytes, field: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message) as info:
        parse_profile(data, "my.json")
    assert info.value.field == field
    assert "my.json" in str(info.value)


def test_includes_need_all_caps_excludes_any_arches_and_kernel() -> None:
    rules = [
        {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN", "CAP_BPF"]}},
        {"names": ["b"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN", "CAP_BPF"]}},
        {"names": ["c"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
        {"names": ["d"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
        {"names": ["e"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "6.2"}},
        {"names": ["f"], "action": "SCMP_ACT_ERRNO"},  # errnoRet defaults to EPERM
        {"names": ["g"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},  # the default action: skipped
    ]
    p = parse_profile(profile(syscalls=rules, defaultErrnoRet=38), "t.json")
    assert p.default_action == ENOSYS
    named = lambda f: sorted(n for r in f.rules for n in r.names)  # noqa: E731
    assert named(resolve(p, ["SYS_ADMIN"], *X86_64)) == ["f"]
    assert named(resolve(p, ["CAP_SYS_ADMIN", "bpf"], "aarch64", "6.1")) == ["a", "c", "d", "f"]
    assert named(resolve(p, [], "x86_64", "6.2.1")) == ["b", "e", "f"]
    assert action_of(resolve(p, [], *X86_64), "f") == EPERM


def test_args_on_one_index_are_ored_on_different_indexes_anded() -> None:
    eq = lambda i, v: {"index": i, "value": v, "op": "SCMP_CMP_EQ"}  # noqa: E731
    rules = [
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [eq(0, 0), eq(0, 8)]},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [eq(0, 2), eq(1, 1)]},
    ]
    f = resolve(parse_profile(profile(syscalls=rules), "t.json"), [], *X86_64)
    assert [len(r.args) for r in f.rules] == [1, 1, 2]


def test_conflicting_unconditional_actions_are_an_error() -> None:
    rules = [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["read"], "action": "SCMP_ACT_KILL"}]
    with pytest.raises(ProfileError, match="read already has another action from syscalls\\[0\\]"):
        resolve(parse_profile(profile(syscalls=rules), "t.json"), [], *X86_64)


# -- the default profile ---------------------------------------------------------


def test_default_profile_denies_with_eperm_and_answers_enosys_for_the_unknown() -> None:
    f = resolve(load_profile(DEFAULT_PROFILE), DEFAULT_CAPS, *X86_64)
    assert f.default_action == ENOSYS
    assert f.arches == ("x86_64", "x86", "x32")
    denied = [
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "kexec_load",
        "kexec_file_load",
        "open_by_handle_at",
        "init_module",
        "finit_module",
        "delete_module",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "ptrace",
        "mount",
        "umount2",
        "pivot_root",
        "setns",
        "process_vm_readv",
        "syslog",
    ]
    assert {n: action_of(f, n) for n in denied} == dict.fromkeys(denied, EPERM)
    # Its own rule says ENOSYS, the default's answer: left to the default (an operator who makes
    # the default EPERM keeps clone3 at ENOSYS).
    assert action_of(f, "clone3") is None
    for name in ("read", "execve", "wait4", "kill", "rt_sigaction", "arch_prctl", "chroot", "mknod"):
        assert action_of(f, name) == ALLOW, name
    # Allowed or EPERM by their flags only (test_unshare_and_clone_are_denied_per_namespace_flag).
    assert action_of(f, "clone") is None and action_of(f, "unshare") is None


def test_default_profile_follows_the_capabilities() -> None:
    p = load_profile(DEFAULT_PROFILE)
    admin = resolve(p, [*DEFAULT_CAPS, "SYS_ADMIN"], *X86_64)
    for name in ("mount", "umount2", "pivot_root", "setns", "unshare", "clone", "clone3", "bpf"):
        assert action_of(admin, name) == ALLOW, name
    assert action_of(admin, "keyctl") == EPERM  # no capability opens the keyring
    traced = resolve(p, [*DEFAULT_CAPS, "SYS_PTRACE"], *X86_64)
    assert action_of(traced, "ptrace") == ALLOW
    assert action_of(resolve(p, ["BPF"], *X86_64), "bpf") == ALLOW
    assert action_of(resolve(p, [], *X86_64), "chroot") == EPERM


def test_unshare_and_clone_are_denied_per_namespace_flag() -> None:
    f = resolve(load_profile(DEFAULT_PROFILE), DEFAULT_CAPS, *X86_64)
    denied = {a.value for r in f.rules if "unshare" in r.names and r.action == EPERM for a in r.args}
    assert 0x10000000 in denied  # CLONE_NEWUSER
    assert denied == {0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000, 0x80}
    allowed = [a for r in f.rules if "clone" in r.names and r.action == ALLOW for a in r.args]
    assert [(a.index, a.value, a.value_two) for a in allowed] == [(0, 0x7E020000, 0)]


# -- the cache and the plumbing --------------------------------------------------


def test_the_cache_compiles_once_per_distinct_filter(tmp_path: Path) -> None:
    cache = FilterCache(load_profile(DEFAULT_PROFILE), tmp_path / "cache")
    plain = cache.program_for(DEFAULT_CAPS)
    # CAP_NET_RAW is mentioned by no rule: the same filter, the same file.
    assert cache.program_for([*DEFAULT_CAPS, "NET_RAW"]) == plain
    admin = cache.program_for([*DEFAULT_CAPS, "SYS_ADMIN"])
    assert admin != plain
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([plain.name, admin.name])
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700
    size = len(plain.read_bytes())
    assert size % 8 == 0 and 100 < size // 8 <= 4096
    inode = plain.stat().st_ino
    assert (
        FilterCache(load_profile(DEFAULT_PROFILE), tmp_path / "cache").program_for(DEFAULT_CAPS).stat().st_ino == inode
    )


def test_spec_carries_the_program_into_the_init_plan(tmp_path: Path, rootfs: Path) -> None:
    cache = FilterCache(load_profile(DEFAULT_PROFILE), tmp_path / "cache")
    config = ContainerConfig("c1", rootfs, ("true",), {}, tmp_path / "c1.log")
    spec = ShimSpec.from_json(
        json.loads(json.dumps(ShimSpec.resolve(config, "v1", tmp_path, "x/c1", seccomp=cache).to_json()))
    )
    plan = spec.init_plan(ContainerDir(tmp_path / "c1"))
    assert plan.seccomp_program == Path(spec.seccomp_program).read_bytes()
    free = ShimSpec.resolve(
        ContainerConfig("c2", rootfs, ("true",), {}, tmp_path / "l", seccomp="unconfined"), "v1", tmp_path, "x"
    )
    assert free.init_plan(ContainerDir(tmp_path / "c2")).seccomp_program == b""
    with pytest.raises(ValueError, match="seccomp 'strict'"):
        ShimSpec.resolve(
            ContainerConfig("c3", rootfs, ("true",), {}, tmp_path / "l", seccomp="strict"), "v1", tmp_path, "x"
        )


def test_the_filter_is_the_last_exec_step() -> None:
    assert init_steps.EXEC_STEPS[-1][0] == "load_seccomp"
    plan = init_steps.InitPlan("l", "u", "w", "m", "h", "/", ("true",), {}, seccomp_program=b"\0" * 16)
    calls = RecordingSyscalls()
    init_steps.run_setup(calls, plan, init_steps.EXEC_STEPS)
    assert calls.names()[-1] == "load_seccomp" and calls.calls[-1] == ("load_seccomp", 16)
    calls = RecordingSyscalls()
    init_steps.run_setup(calls, init_steps.InitPlan("l", "u", "w", "m", "h", "/", ("true",), {}), init_steps.EXEC_STEPS)
    assert "load_seccomp" not in calls.names()


def test_a_bad_profile_stops_the_runtime_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "ALLOW"}]}')
    with pytest.raises(ProfileError, match=r"bad.json: syscalls\[0\].action"):
        Runtime(tmp_path / "state", "orch-test-unused/node", use_zygote=False, seccomp_profile=bad)
    with pytest.raises(ProfileError, match="cannot read"):
        Runtime(tmp_path / "state", "orch-test-unused/node", use_zygote=False, seccomp_profile=tmp_path / "none")


# -- real containers -------------------------------------------------------------

DENIED = [
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "unshare-user",
    "unshare-net",
    "clone-user",
    "mount",
    "umount2",
    "pivot_root",
    "setns",
    "kexec_load",
    "kexec_file_load",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "ptrace",
    "socket-vsock",
]
# Denied by the filter alone: the same probes succeed in an unconfined container.
# unshare-user last: once in a new user namespace, clone-user would fail for want of an id mapping.
FILTER_ONLY = ("keyctl", "add_key", "userfaultfd", "io_uring_setup", "clone-user", "ptrace", "unshare-user")
ALLOWED = ("getpid", "clone", "unshare-files", "chroot", "write=/dev/null")


@pytest.fixture(scope="module")
def probe_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return build_sysprobe_rootfs(tmp_path_factory.mktemp("sysprobe-rootfs"))
    except SysprobeUnavailable as exc:
        pytest.skip(f"sysprobe: {exc}")


def probe(runtime: Runtime, root: Path, tmp_path: Path, id: str, *probes: str, **kw: object) -> dict[str, str]:
    config = ContainerConfig(id, root, ("sysprobe", *probes), {}, tmp_path / f"{id}.log", **kw)  # type: ignore[arg-type]
    state, text = run(runtime, config)
    assert state.exit_code == 0, text
    return {name.split("=")[0]: result for name, result in (line.split(" ", 1) for line in text.splitlines())}


@pytest.mark.root
def test_status_shows_the_filter_and_unconfined_has_none(runtime: Runtime, probe_rootfs: Path, tmp_path: Path) -> None:
    script = "grep -E '^Seccomp:' /proc/self/status /proc/1/status"
    for id, mode, want in (("filtered", "default", "2"), ("free", "unconfined", "0")):
        config = ContainerConfig(id, probe_rootfs, ("sh", "-c", script), {}, tmp_path / f"{id}.log", seccomp=mode)
        state, text = run(runtime, config)
        assert state.exit_code == 0, text
        # The command, and the reaper PID 1 that spawned it.
        assert sorted(text.split()) == sorted(["/proc/self/status:Seccomp:", want, "/proc/1/status:Seccomp:", want])


@pytest.mark.root
def test_denied_syscalls_get_eperm_and_clone3_enosys(runtime: Runtime, probe_rootfs: Path, tmp_path: Path) -> None:
    got = probe(runtime, probe_rootfs, tmp_path, "denied", *DENIED, "clone3", *ALLOWED)
    assert {p: got[p] for p in DENIED} == dict.fromkeys(DENIED, "EPERM")
    assert got["clone3"] == "ENOSYS"  # so libc falls back to clone, whose flags the filter reads
    assert {p: got[p.split("=")[0]] for p in ALLOWED} == dict.fromkeys(ALLOWED, "OK")
    # Only the harmless personas: no ASLR switch-off. Not listed, so the default answers.
    assert probe(runtime, probe_rootfs, tmp_path, "aslr", "personality=0x0040000") == {"personality": "ENOSYS"}
    assert probe(runtime, probe_rootfs, tmp_path, "query", "personality=0xffffffff") == {"personality": "OK"}


@pytest.mark.root
def test_the_filter_is_what_denies(runtime: Runtime, probe_rootfs: Path, tmp_path: Path) -> None:
    """Control: without the filter the same calls succeed, so the EPERMs above are the filter's."""
    got = probe(runtime, probe_rootfs, tmp_path, "control", *FILTER_ONLY, "clone3", seccomp="unconfined")
    assert got == dict.fromkeys((*FILTER_ONLY, "clone3"), "OK")


@pytest.mark.root
def test_capabilities_open_their_syscalls(runtime: Runtime, probe_rootfs: Path, tmp_path: Path) -> None:
    got = probe(runtime, probe_rootfs, tmp_path, "admin", "mount", "unshare-user", "clone3", cap_add=("SYS_ADMIN",))
    assert got == {"mount": "OK", "unshare-user": "OK", "clone3": "OK"}
    assert probe(runtime, probe_rootfs, tmp_path, "tracer", "ptrace", cap_add=("SYS_PTRACE",)) == {"ptrace": "OK"}


@pytest.mark.root
def test_the_reaper_works_under_the_filter(runtime: Runtime, probe_rootfs: Path, tmp_path: Path) -> None:
    """orch-init is exec'd (execveat), forwards SIGTERM (kill), reaps (wait4) and reports (write)
    under the filter."""
    argv = ("sh", "-c", "sleep 1000 & echo up; wait")
    config = ContainerConfig("reaped", probe_rootfs, argv, {}, tmp_path / "r.log", init=True)
    runtime.start(config)
    wait_for_output(config, "up")
    state = runtime.stop("reaped", 10)
    assert (state.exit_code, state.reason) == (143, "Killed")


@pytest.mark.root
def test_another_profile(probe_rootfs: Path, tmp_path: Path, cgroup_parent: str) -> None:
    """`orch node --seccomp-profile FILE`: the Runtime compiles the operator's profile instead."""
    mine = tmp_path / "mine.json"
    rule = {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5}
    mine.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}))
    rt = Runtime(tmp_path / "state", cgroup_parent, seccomp_profile=mine)
    try:
        assert probe(rt, probe_rootfs, tmp_path, "mine", "getpid", "keyctl") == {"getpid": "EIO", "keyctl": "OK"}
    finally:
        rt.cleanup_all()
    assert not (tmp_path / "state" / ".seccomp").exists()
    assert os.path.exists(mine)


@pytest.mark.root
def test_an_exec_runs_under_the_containers_filter(runtime: Runtime, probe_rootfs: Path, tmp_path: Path) -> None:
    """`orch exec` and exec probes reuse EXEC_STEPS: the same filter, from the same spec."""
    for id, mode, seccomp, keyctl in (("ex-on", "default", "2", "EPERM"), ("ex-off", "unconfined", "0", "OK")):
        config = ContainerConfig(id, probe_rootfs, ("sleep", "1000"), {}, tmp_path / f"{id}.log", seccomp=mode)
        runtime.start(config)
        code, out, err = run_exec(runtime, id, "sh", "-c", "grep Seccomp: /proc/self/status; sysprobe keyctl clone")
        assert code == 0, err
        assert out.split() == ["Seccomp:", seccomp, "keyctl", keyctl, "clone", "OK"]
        runtime.stop(id, 0)
