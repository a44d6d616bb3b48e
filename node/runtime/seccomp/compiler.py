"""A `Filter` compiled into a classic BPF program by libseccomp (Debian's libseccomp2, via ctypes).

The only module that touches libseccomp: `compile_filter(filter) -> bytes` (the
program as seccomp_export_bpf writes it: 8-byte `struct sock_filter`s in host
byte order), ready for loader.py. A name this libseccomp does not know is
skipped, as runc does: the kernel it knows nothing about cannot run it either
(the default action answers).

Two things are decided here, whatever the profile says:

* A syscall of an architecture the filter does not list (int 0x80 on x86_64 when
  x86 is not listed) kills the process. Answering it with the default action
  would let an allow-by-default profile's denials be bypassed in 32-bit mode.
* Each architecture is compiled on its own, then merged. On a sub-architecture where
  libseccomp reaches a syscall through a multiplexer (socketcall and ipc on 32-bit
  x86), the multiplexer carries the arguments in memory, where no filter can read
  them: libseccomp then widens a rule's argument checks to the whole sub-call
  (`socket` allowed for AF_UNIX becomes socketcall(SYS_SOCKET) allowed for any
  family). Such a rule is left out there if it would allow (the default answers),
  and kept if it denies (it then denies the whole sub-call).
"""

from __future__ import annotations

import ctypes
import functools
import os
import tempfile

from node.runtime.seccomp.profile import ACTIONS, Filter, Rule, SeccompError

__all__ = ["MAX_INSTRUCTIONS", "REVISION", "compile_filter", "libseccomp_version"]

MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS: the kernel refuses a longer classic BPF program
REVISION = 2  # of what this module decides (above): part of the cache's key, with libseccomp's version
BAD_ARCH_ACTION = ACTIONS["SCMP_ACT_KILL_PROCESS"]
_PERMISSIVE = frozenset({ACTIONS["SCMP_ACT_ALLOW"], ACTIONS["SCMP_ACT_LOG"]})
_NR_SCMP_ERROR = -1
_ATTR_ACT_BADARCH = 2
_ATTR_CTL_OPTIMIZE = 8  # libseccomp >= 2.5: 2 = a binary tree over syscall numbers


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


@functools.cache
def _lib() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise SeccompError(f"libseccomp is not available ({exc}); install Debian's libseccomp2") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_remove.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_merge.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    return lib


def libseccomp_version() -> str:
    v = _lib().seccomp_version().contents
    return f"{v.major}.{v.minor}.{v.micro}"


def _check(result: int, what: str) -> None:
    if result < 0:  # libseccomp returns -errno
        raise SeccompError(f"libseccomp {what}: {os.strerror(-result)}")


def compile_filter(filter: Filter) -> bytes:
    """The BPF program for `filter`; raises SeccompError naming the rule libseccomp refused."""
    lib = _lib()
    native = lib.seccomp_arch_native()
    ctx = _context(lib, filter, native, native)
    try:
        for token in _sub_arches(lib, filter.arches, native):
            sub = _context(lib, filter, token, native)
            result = lib.seccomp_merge(ctx, sub)  # on success, sub is released with it
            if result < 0:
                lib.seccomp_release(sub)
                _check(result, "merge the architectures")
        program = _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)
    if len(program) // 8 > MAX_INSTRUCTIONS:
        raise SeccompError(
            f"the seccomp filter has {len(program) // 8} instructions; the kernel takes {MAX_INSTRUCTIONS}"
        )
    return program


def _sub_arches(lib: ctypes.CDLL, names: tuple[str, ...], native: int) -> list[int]:
    tokens = []
    for name in names:
        token = lib.seccomp_arch_resolve_name(name.encode())
        if token == 0:
            raise SeccompError(f"libseccomp does not know the architecture {name!r}")
        if token != native and token not in tokens:
            tokens.append(token)
    return tokens


def _context(lib: ctypes.CDLL, filter: Filter, token: int, native: int) -> int:
    """A libseccomp filter for the one architecture `token`, every rule added that can be there."""
    ctx = lib.seccomp_init(filter.default_action)
    if not ctx:
        raise SeccompError(f"libseccomp: cannot initialize a filter with default action {filter.default_action:#x}")
    try:
        _check(lib.seccomp_attr_set(ctx, _ATTR_ACT_BADARCH, BAD_ARCH_ACTION), "set the bad-arch action")
        lib.seccomp_attr_set(ctx, _ATTR_CTL_OPTIMIZE, 2)  # best effort: older libseccomp lacks it
        if token != native:
            _check(lib.seccomp_arch_add(ctx, token), f"add architecture {token:#x}")
            _check(lib.seccomp_arch_remove(ctx, native), "remove the native architecture")
        for rule in filter.rules:
            _add_rule(lib, ctx, rule, token if token != native else None)
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return int(ctx)


def _add_rule(lib: ctypes.CDLL, ctx: int, rule: Rule, sub_arch: int | None) -> None:
    args = (_ArgCmp * max(1, len(rule.args)))(*(_ArgCmp(a.index, a.op, a.value, a.value_two) for a in rule.args))
    for name in rule.names:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number == _NR_SCMP_ERROR:
            continue
        if sub_arch is not None and rule.args and rule.action in _PERMISSIVE and _multiplexed(lib, sub_arch, name):
            continue  # its arguments cannot be checked there
        result = lib.seccomp_rule_add_array(ctx, rule.action, number, len(rule.args), args)
        if result < 0:
            raise SeccompError(f"seccomp profile {rule.where}: libseccomp refused {name}: {os.strerror(-result)}")


def _multiplexed(lib: ctypes.CDLL, arch: int, name: str) -> bool:
    """Whether libseccomp reaches `name` on `arch` through a multiplexer (a negative pseudo
    number: socket -> socketcall on 32-bit x86), or it does not exist there at all."""
    return int(lib.seccomp_syscall_resolve_name_arch(arch, name.encode())) < 0


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    with tempfile.TemporaryFile() as f:
        _check(lib.seccomp_export_bpf(ctx, f.fileno()), "export the BPF program")
        f.seek(0)
        return f.read()
