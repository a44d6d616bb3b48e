"""Docker's seccomp profile format: parse it, then resolve it for one container.

Pure: no libseccomp here. `parse_profile` checks the JSON and keeps every rule
with the field path it came from ("syscalls[3]"), so an error names it;
`resolve` picks the rules that apply to a capability set and an architecture,
as moby's setupSeccomp does, and returns a `Filter` that compiler.py turns into
a BPF program with no decision left to make.

Supported: defaultAction, defaultErrnoRet, architectures or archMap,
syscalls[].names (or .name), action, errnoRet, args (index, value, valueTwo,
op), includes/excludes by caps, arches and minKernel. Semantics as in
moby/runc: `includes.caps` needs all of them, `excludes.caps` any of them; an
arch is the native one in Go's spelling (amd64, arm64); args on different
indexes are ANDed, but when one index appears twice each arg becomes a rule of
its own (ORed); an ERRNO without errnoRet is EPERM; a name libseccomp does not
know is skipped (compiler.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from node.runtime.errors import ContainerError

__all__ = [
    "ACTIONS",
    "OPERATORS",
    "ArgCmp",
    "Filter",
    "Profile",
    "ProfileError",
    "Rule",
    "SeccompError",
    "Selector",
    "SyscallRule",
    "go_arch",
    "parse_profile",
    "resolve",
    "scmp_arch",
]

EPERM = 1

# libseccomp's action values (seccomp.h); ERRNO and TRACE carry a 16-bit value.
ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
# uname -m -> (Go's GOARCH as profiles spell it in includes.arches, libseccomp's arch name)
_MACHINES = {
    "x86_64": ("amd64", "x86_64"),
    "aarch64": ("arm64", "aarch64"),
    "i686": ("386", "x86"),
    "i386": ("386", "x86"),
    "armv7l": ("arm", "arm"),
    "ppc64le": ("ppc64le", "ppc64le"),
    "s390x": ("s390x", "s390x"),
    "riscv64": ("riscv64", "riscv64"),
}
_U64 = (1 << 64) - 1
_KERNEL = re.compile(r"(\d+)\.(\d+)")


class SeccompError(ContainerError):
    """The seccomp filter could not be built or loaded."""


class ProfileError(SeccompError):
    """A profile that cannot be used; names the file and the field."""

    def __init__(self, source: str, field: str, message: str) -> None:
        super().__init__(f"seccomp profile {source}: {field}: {message}" if field else f"{source}: {message}")
        self.source, self.field = source, field


@dataclass(frozen=True, slots=True)
class ArgCmp:
    index: int
    value: int  # datum_a (the mask for MASKED_EQ)
    value_two: int  # datum_b
    op: int  # OPERATORS value


@dataclass(frozen=True, slots=True)
class Selector:
    caps: frozenset[str] = frozenset()  # bare names: "SYS_ADMIN"
    arches: frozenset[str] = frozenset()  # Go spelling: "amd64"
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class SyscallRule:
    where: str  # "syscalls[3]"
    names: tuple[str, ...]
    action: int  # full libseccomp action, errno included
    args: tuple[ArgCmp, ...] = ()
    includes: Selector = Selector()
    excludes: Selector = Selector()


@dataclass(frozen=True, slots=True)
class Profile:
    source: str
    default_action: int
    architectures: tuple[str, ...]  # SCMP_ARCH_* names
    arch_map: Mapping[str, tuple[str, ...]]  # SCMP_ARCH_* -> its sub-architectures
    rules: tuple[SyscallRule, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """One libseccomp rule per name: args are ANDed."""

    where: str
    names: tuple[str, ...]
    action: int
    args: tuple[ArgCmp, ...] = ()


@dataclass(frozen=True, slots=True)
class Filter:
    """What compiler.py builds: no condition left to evaluate."""

    default_action: int
    arches: tuple[str, ...]  # libseccomp arch names ("x86_64", "x86", "x32"); () = native only
    rules: tuple[Rule, ...]

    def digest(self, salt: str = "") -> str:
        data = {"default": self.default_action, "arches": self.arches, "salt": salt}
        data["rules"] = [[r.names, r.action, [dataclasses.astuple(a) for a in r.args]] for r in self.rules]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def go_arch(machine: str) -> str:
    return _MACHINES.get(machine, (machine, machine))[0]


def scmp_arch(machine: str) -> str:
    """uname -m -> "SCMP_ARCH_X86_64", the spelling of archMap."""
    return "SCMP_ARCH_" + _MACHINES.get(machine, (machine, machine))[1].upper()


# -- parsing -------------------------------------------------------------------

_TOP = {"defaultAction", "defaultErrnoRet", "defaultErrno", "architectures", "archMap", "syscalls", "flags", "comment"}
_SYSCALL = {"names", "name", "action", "errnoRet", "errno", "args", "comment", "includes", "excludes"}
_ARG = {"index", "value", "valueTwo", "op"}
_SELECTOR = {"caps", "arches", "minKernel"}


class _Reader:
    """Typed access to the decoded JSON; every complaint names the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, message: str) -> ProfileError:
        return ProfileError(self.source, field, message)

    def mapping(self, value: Any, field: str, known: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"expected an object, got {type(value).__name__}")
        for key in value:
            if key not in known:
                raise self.fail(
                    f"{field}.{key}" if field else key, f"unknown field (known: {', '.join(sorted(known))})"
                )
        return value

    def items(self, value: Any, field: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(field, f"expected a list, got {type(value).__name__}")
        return value

    def strings(self, value: Any, field: str) -> tuple[str, ...]:
        items = self.items(value, field)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item:
                raise self.fail(f"{field}[{i}]", "expected a non-empty string")
        return tuple(items)

    def integer(self, value: Any, field: str, low: int = 0, high: int = _U64) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(field, f"expected an integer from {low} to {high}, got {value!r}")
        return value

    def action(self, spec: Mapping[str, Any], field: str, errno_key: str) -> int:
        name = spec.get("action" if errno_key == "errnoRet" else "defaultAction")
        where = f"{field}.action" if errno_key == "errnoRet" else "defaultAction"
        if name not in ACTIONS:
            raise self.fail(where, f"unknown or unsupported action {name!r} (known: {', '.join(ACTIONS)})")
        value = ACTIONS[name]
        if name in ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"):
            ret = spec.get(errno_key)
            key = f"{field}.{errno_key}" if field else errno_key
            value |= EPERM if ret is None else self.integer(ret, key, 0, 0xFFFF)
        return value

    def selector(self, value: Any, field: str) -> Selector:
        spec = self.mapping(value if value is not None else {}, field, _SELECTOR)
        caps = frozenset(c.upper().removeprefix("CAP_") for c in self.strings(spec.get("caps"), f"{field}.caps"))
        arches = frozenset(self.strings(spec.get("arches"), f"{field}.arches"))
        kernel = spec.get("minKernel") or None
        if kernel is None:
            return Selector(caps, arches)
        match = _KERNEL.match(str(kernel))
        if match is None:
            raise self.fail(f"{field}.minKernel", f'expected "MAJOR.MINOR", got {kernel!r}')
        return Selector(caps, arches, (int(match[1]), int(match[2])))

    def arg(self, value: Any, field: str) -> ArgCmp:
        spec = self.mapping(value, field, _ARG)
        if spec.get("op") not in OPERATORS:
            raise self.fail(f"{field}.op", f"unknown operator {spec.get('op')!r} (known: {', '.join(OPERATORS)})")
        index = self.integer(spec.get("index"), f"{field}.index", 0, 5)
        val = self.integer(spec.get("value", 0), f"{field}.value")
        two = self.integer(spec.get("valueTwo", 0), f"{field}.valueTwo")
        return ArgCmp(index, val, two, OPERATORS[spec["op"]])

    def syscall(self, value: Any, field: str) -> SyscallRule:
        spec = self.mapping(value, field, _SYSCALL)
        if spec.get("name") and spec.get("names"):
            raise self.fail(field, "use either name or names")
        names = (str(spec["name"]),) if spec.get("name") else self.strings(spec.get("names"), f"{field}.names")
        if not names:
            raise self.fail(f"{field}.names", "must name at least one syscall")
        args = tuple(self.arg(a, f"{field}.args[{i}]") for i, a in enumerate(self.items(spec.get("args"), field)))
        includes = self.selector(spec.get("includes"), f"{field}.includes")
        excludes = self.selector(spec.get("excludes"), f"{field}.excludes")
        return SyscallRule(field, names, self.action(spec, field, "errnoRet"), args, includes, excludes)


def parse_profile(raw: bytes, source: str) -> Profile:
    """Raises ProfileError naming the field that is wrong."""
    r = _Reader(source)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise r.fail("", f"not valid JSON: {exc}") from None
    top = r.mapping(data, "", _TOP)
    if r.items(top.get("flags"), "flags"):
        raise r.fail("flags", "seccomp filter flags are not supported")
    architectures = r.strings(top.get("architectures"), "architectures")
    arch_map: dict[str, tuple[str, ...]] = {}
    for i, entry in enumerate(r.items(top.get("archMap"), "archMap")):
        spec = r.mapping(entry, f"archMap[{i}]", {"architecture", "subArchitectures"})
        (arch,) = r.strings([spec.get("architecture")], f"archMap[{i}].architecture")
        arch_map[arch] = r.strings(spec.get("subArchitectures"), f"archMap[{i}].subArchitectures")
    if architectures and arch_map:
        raise r.fail("archMap", "use either architectures or archMap")
    rules = tuple(r.syscall(s, f"syscalls[{i}]") for i, s in enumerate(r.items(top.get("syscalls"), "syscalls")))
    default = r.action(top, "", "defaultErrnoRet")
    return Profile(source, default, architectures, arch_map, rules)


# -- resolving -----------------------------------------------------------------


def _kernel(release: str) -> tuple[int, int]:
    match = _KERNEL.match(release)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _applies(rule: SyscallRule, caps: frozenset[str], arch: str, kernel: tuple[int, int]) -> bool:
    inc, exc = rule.includes, rule.excludes
    if (exc.arches and arch in exc.arches) or exc.caps & caps:
        return False
    if exc.min_kernel is not None and kernel >= exc.min_kernel:
        return False
    if (inc.arches and arch not in inc.arches) or not inc.caps <= caps:
        return False
    return inc.min_kernel is None or kernel >= inc.min_kernel


def _split(rule: SyscallRule) -> list[tuple[ArgCmp, ...]]:
    """One index twice: each arg is a rule of its own (ORed), as runc does; else one rule (ANDed)."""
    indexes = [a.index for a in rule.args]
    if len(set(indexes)) < len(indexes):
        return [(a,) for a in rule.args]
    return [rule.args]


def resolve(profile: Profile, caps: Iterable[str], machine: str, kernel_release: str) -> Filter:
    """The rules of `profile` for a container with these capabilities on this machine (uname -m).

    Raises ProfileError when two rules that both apply give one syscall different actions
    and one of them has no args (libseccomp would keep one of them silently).
    """
    have = frozenset(c.upper().removeprefix("CAP_") for c in caps)
    arch, kernel = go_arch(machine), _kernel(kernel_release)
    native = scmp_arch(machine)
    scmp = profile.architectures or ((native, *profile.arch_map[native]) if native in profile.arch_map else ())
    rules: list[Rule] = []
    seen: dict[str, dict[tuple[int, tuple[ArgCmp, ...]], str]] = {}  # name -> (action, args) -> where
    for rule in profile.rules:
        if rule.action == profile.default_action or not _applies(rule, have, arch, kernel):
            continue  # libseccomp refuses a rule that repeats the default action
        for args in _split(rule):
            names = tuple(n for n in rule.names if (rule.action, args) not in seen.get(n, {}))
            for name in names:
                _check_conflict(profile.source, name, seen.setdefault(name, {}), rule, args)
            if names:
                rules.append(Rule(rule.where, names, rule.action, args))
    return Filter(profile.default_action, tuple(a.removeprefix("SCMP_ARCH_").lower() for a in scmp), tuple(rules))


def _check_conflict(
    source: str,
    name: str,
    earlier: dict[tuple[int, tuple[ArgCmp, ...]], str],
    rule: SyscallRule,
    args: tuple[ArgCmp, ...],
) -> None:
    for (action, other_args), where in earlier.items():
        if action != rule.action and (not args or not other_args):
            raise ProfileError(source, rule.where, f"{name} already has another action from {where} for this container")
    earlier[(rule.action, args)] = rule.where
