"""Pure helpers for the container's privileges: capability sets, user lookup, rlimits.

Everything here runs on the host side (Runtime) or is pure arithmetic, so it is
unit-tested without root; init.py only applies the numbers.
"""

from __future__ import annotations

import resource
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.runtime.imagefs import read_image_file
from orch.capabilities import LINUX_CAPABILITIES

__all__ = [
    "CAPS",
    "DEFAULT_CAPS",
    "DEFAULT_RLIMITS",
    "Identity",
    "cap_mask",
    "cap_names",
    "resolve_user",
    "rlimit_numbers",
]

# linux/capability.h numbering (orch/capabilities.py holds the one table).
CAPS: dict[str, int] = {name: number for number, name in enumerate(LINUX_CAPABILITIES)}

# Podman's default set (containers.conf default_capabilities).
DEFAULT_CAPS = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
)

# name -> (soft, hard); the hard limit is clamped to the host's (raising it needs CAP_SYS_RESOURCE).
DEFAULT_RLIMITS: dict[str, tuple[int, int]] = {"NOFILE": (1024, 1048576)}


def _cap_name(name: str) -> str:
    upper = name.strip().upper()
    upper = upper.removeprefix("CAP_")
    if upper != "ALL" and upper not in CAPS:
        raise ValueError(f"unknown capability {name!r}")
    return upper


def cap_mask(add: Iterable[str] = (), drop: Iterable[str] = (), default: Iterable[str] = DEFAULT_CAPS) -> int:
    """The capability bitmask: default, minus drop, plus add ("ALL" allowed in both; add wins)."""
    adds, drops = {_cap_name(n) for n in add}, {_cap_name(n) for n in drop}
    mask = 0 if "ALL" in drops else _bits(set(default) - drops)
    return mask | (_bits(set(CAPS)) if "ALL" in adds else _bits(adds))


def _bits(names: Iterable[str]) -> int:
    return sum(1 << CAPS[n] for n in set(names))


def cap_names(mask: int) -> list[str]:
    return sorted(n for n, bit in CAPS.items() if mask >> bit & 1)


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]


def _read_db(layers: Sequence[Path], path: str) -> list[list[str]]:
    """The image's /etc/passwd or /etc/group as fields, read inside the image (imagefs); [] if absent."""
    data = read_image_file(layers, path)
    text = data.decode(errors="replace") if data is not None else ""
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(image: Path | Sequence[Path], user: str) -> Identity:
    """'UID[:GID]' or 'NAME[:GROUP]' with names from the image's /etc/passwd and /etc/group.

    `image` is its layer stack, top first (a plain rootfs dir is a stack of one): the files are
    looked up as the container will see them, never outside the image (node.runtime.imagefs).
    Supplementary groups are those of /etc/group listing the user by name. "" means root.
    Raises ValueError when a name is unknown, ImageFileError (a ValueError) when a file is unusable.
    """
    layers = (image,) if isinstance(image, Path) else tuple(image)
    name, _, group = (user or "0").partition(":")
    passwd = _read_db(layers, "/etc/passwd")
    groups_db = _read_db(layers, "/etc/group")
    entry = next((e for e in passwd if len(e) >= 4 and (e[0] == name or e[2] == name)), None)
    if name.isdigit():
        uid = int(name)
    elif entry is not None:
        uid = _id(entry[2], "/etc/passwd", name)
    else:
        raise ValueError(f"user {name!r} not found in the image's /etc/passwd")
    if group:
        if group.isdigit():
            gid = int(group)
        elif g := next((e for e in groups_db if len(e) >= 3 and e[0] == group), None):
            gid = _id(g[2], "/etc/group", group)
        else:
            raise ValueError(f"group {group!r} not found in the image's /etc/group")
    else:
        gid = _id(entry[3], "/etc/passwd", name) if entry is not None else 0
    login = entry[0] if entry is not None else ""
    extra = {_id(e[2], "/etc/group", e[0]) for e in groups_db if len(e) >= 4 and login and login in e[3].split(",")}
    return Identity(uid, gid, tuple(sorted(extra | {gid})))


def _id(field: str, path: str, name: str) -> int:
    if not field.isdigit() or int(field) >= 2**32 - 1:
        raise ValueError(f"the image's {path}: {name!r} has the invalid id {field[:20]!r}")
    return int(field)


def rlimit_numbers(
    limits: Mapping[str, tuple[int, int]], host_hard: Mapping[int, int] | None = None
) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for setrlimit: the defaults, overridden by `limits` (names like "NOFILE"
    or "RLIMIT_NOFILE"). Only the defaults are clamped to the host's hard limit; an explicit limit
    the host cannot grant fails the start."""
    result = []
    merged = {k.upper().removeprefix("RLIMIT_"): v for k, v in DEFAULT_RLIMITS.items()}
    explicit = {k.upper().removeprefix("RLIMIT_"): v for k, v in limits.items()}
    for name, (soft, hard) in {**merged, **explicit}.items():
        number = getattr(resource, f"RLIMIT_{name}", None)
        if not isinstance(number, int):
            raise ValueError(f"unknown rlimit {name!r}")
        if soft > hard:
            raise ValueError(f"rlimit {name}: soft {soft} > hard {hard}")
        if name not in explicit:
            cap = (host_hard or {}).get(number)
            if cap is None:
                cap = resource.getrlimit(number)[1]
            if cap != resource.RLIM_INFINITY:
                hard, soft = min(hard, cap), min(soft, cap)
        result.append((number, soft, hard))
    return result
