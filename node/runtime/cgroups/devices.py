"""Which devices a container may use, and the two forms the kernel takes that list in.

Pure. cgroup v1 takes lines for devices.allow after "a" was written to
devices.deny (`v1_lines`); cgroup v2 has no devices file, only an eBPF program
of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the cgroup (`assemble`, loaded
by bpf.py). The program is a straight list of checks, one block per rule:

    r2 = type (ctx.access_type & 0xffff)   r3 = access (ctx.access_type >> 16)
    r4 = major                              r5 = minor
    rule: if r2 != TYPE goto next; if r3 & ~ACCESS goto next;
          if r4 != MAJOR goto next; if r5 != MINOR goto next; return 1
    ...
    return 0

(a wildcard leaves its check out), which is what runc's devicefilter generates too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["DEFAULT_RULES", "NODES", "DeviceRule", "Insn", "assemble", "v1_lines"]

# bpf_cgroup_dev_ctx.access_type: low 16 bits the type, high 16 the access (linux/bpf.h).
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
_TYPES = {"b": DEV_BLOCK, "c": DEV_CHAR}
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}

# eBPF opcodes (linux/bpf_common.h, linux/bpf.h): class | op | source.
LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
ALU64_AND_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K
ALU64_RSH_K = 0x77  # BPF_ALU64 | BPF_RSH | BPF_K
ALU64_MOV_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K
JMP_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K
JMP_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
JMP_EXIT = 0x95  # BPF_JMP | BPF_EXIT


@dataclass(frozen=True, slots=True)
class DeviceRule:
    """An allowed device: kind "c", "b" or "a" (both), None = any major/minor, access ⊆ "rwm"."""

    kind: str
    major: int | None
    minor: int | None
    access: str

    def v1_line(self) -> str:
        return f"{self.kind} {_number(self.major)}:{_number(self.minor)} {self.access}"


def _number(n: int | None) -> str:
    return "*" if n is None else str(n)


# The character devices in every container's /dev (init.py makes the nodes): name, major, minor.
NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))

# runc's default allow-list (libcontainer/specconv AllowedDevices): mknod of any node is
# allowed, as in runc (a node is useless without the r/w rules below; the image may ship
# nodes anyway), but only these devices can be opened.
DEFAULT_RULES = (
    DeviceRule("c", None, None, "m"),
    DeviceRule("b", None, None, "m"),
    *(DeviceRule("c", major, minor, "rwm") for _, major, minor in NODES),
    # Not /dev/console (c 5:1), which runc lists for the console it makes with terminal=true:
    # orch makes none, so with CAP_MKNOD the rule would open the host's console.
    DeviceRule("c", 5, 2, "rwm"),  # /dev/ptmx
    DeviceRule("c", 136, None, "rwm"),  # /dev/pts/*
)


def v1_lines(rules: tuple[DeviceRule, ...] = DEFAULT_RULES) -> list[str]:
    """What to write, one line per write, into devices.allow after "a" into devices.deny."""
    return [r.v1_line() for r in rules]


@dataclass(frozen=True, slots=True)
class Insn:
    """struct bpf_insn: 8 bytes, little-endian on the hosts orch runs on (x86_64, arm64)."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)


def _block(rule: DeviceRule) -> list[Insn]:
    """The checks of one rule; each jump's offset is filled in once the block's length is known."""
    checks: list[Insn] = []
    if rule.kind != "a":
        checks.append(Insn(JMP_JNE_K, dst=2, imm=_TYPES[rule.kind]))
    denied = 7 & ~sum(_ACCESS[a] for a in set(rule.access))
    if denied:
        checks.append(Insn(JMP_JSET_K, dst=3, imm=denied))  # asks for an access the rule lacks
    if rule.major is not None:
        checks.append(Insn(JMP_JNE_K, dst=4, imm=rule.major))
    if rule.minor is not None:
        checks.append(Insn(JMP_JNE_K, dst=5, imm=rule.minor))
    tail = [Insn(ALU64_MOV_K, dst=0, imm=1), Insn(JMP_EXIT)]
    size = len(checks) + len(tail)
    # A jump's offset counts from the next instruction: to the end of this block.
    return [Insn(c.code, c.dst, c.src, size - i - 1, c.imm) for i, c in enumerate(checks)] + tail


def assemble(rules: tuple[DeviceRule, ...] = DEFAULT_RULES) -> list[Insn]:
    """The BPF_PROG_TYPE_CGROUP_DEVICE program allowing exactly `rules` (1 = allow, 0 = deny)."""
    prologue = [
        Insn(LDX_MEM_W, dst=2, src=1, off=0),  # access_type
        Insn(ALU64_AND_K, dst=2, imm=0xFFFF),  # the type
        Insn(LDX_MEM_W, dst=3, src=1, off=0),
        Insn(ALU64_RSH_K, dst=3, imm=16),  # the access
        Insn(LDX_MEM_W, dst=4, src=1, off=4),  # major
        Insn(LDX_MEM_W, dst=5, src=1, off=8),  # minor
    ]
    body = [insn for rule in rules for insn in _block(rule)]
    return [*prologue, *body, Insn(ALU64_MOV_K, dst=0, imm=0), Insn(JMP_EXIT)]
