"""bpf(2) through ctypes: load a cgroup device program and attach it to a cgroup v2 directory.

The attachment holds the program: its fd is closed at once, and the kernel frees
both when the cgroup is removed. BPF_F_ALLOW_MULTI lets it sit beside programs
of the ancestors (systemd attaches its own); a device is usable only when every
program on the way up allows it.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from node.runtime.cgroups.devices import DEFAULT_RULES, DeviceRule, Insn, assemble
from node.runtime.errors import ContainerError

__all__ = ["attach_device_program", "load_device_program"]

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6  # attach type
_BPF_F_ALLOW_MULTI = 2
_LICENSE = b"Apache-2.0"  # no GPL-only helper is called


class _ProgLoad(ctypes.Structure):
    # union bpf_attr, the BPF_PROG_LOAD member, up to expected_attach_type.
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _ProgAttach(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    """The result, or OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    number = _BPF_SYSCALL.get(os.uname().machine)
    if number is None:
        raise OSError(38, f"bpf(2): no syscall number known for {os.uname().machine}")
    result = int(libc.syscall(ctypes.c_long(number), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.sizeof(attr)))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def load_device_program(program: list[Insn]) -> int:
    """A program fd (the caller closes it); ContainerError with the verifier's log if refused."""
    code = b"".join(i.encode() for i in program)
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(_LICENSE)
    log = ctypes.create_string_buffer(65536)
    attr = _ProgLoad(
        prog_type=_BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt=len(program),
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license),
        prog_name=b"orch_devices",
        expected_attach_type=_BPF_CGROUP_DEVICE,
    )
    try:
        return _bpf(_BPF_PROG_LOAD, attr)
    except OSError as exc:
        # Again with the verifier's log: the first try skips it (it costs time on every start).
        attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
        try:
            return _bpf(_BPF_PROG_LOAD, attr)
        except OSError:
            verifier = log.value.decode(errors="replace").strip()
            raise ContainerError(f"load the device program: {exc.strerror}; verifier: {verifier}") from exc


def attach_device_program(cgroup: Path, rules: tuple[DeviceRule, ...] = DEFAULT_RULES) -> None:
    """Allow only `rules` in the cgroup v2 directory `cgroup` (and below it)."""
    prog = load_device_program(assemble(rules))
    try:
        target = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attr = _ProgAttach(target, prog, _BPF_CGROUP_DEVICE, _BPF_F_ALLOW_MULTI, 0)
            _bpf(_BPF_PROG_ATTACH, attr)
        except OSError as exc:
            raise ContainerError(f"attach the device program to {cgroup}: {exc.strerror}") from exc
        finally:
            os.close(target)
    finally:
        os.close(prog)
