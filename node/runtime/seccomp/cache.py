"""Compiled programs of one profile, one file per filter under the node's state dir.

A profile resolves to a handful of distinct filters (they differ only by the
capabilities its rules mention), so each is compiled once: the file name is
the digest of the resolved filter, the libseccomp version and the compiler's
revision, which is the whole input of the compiler. An agent restart finds them
still there; an upgraded agent compiles anew.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from node.runtime.seccomp.compiler import REVISION, compile_filter, libseccomp_version
from node.runtime.seccomp.profile import Profile, ProfileError, parse_profile, resolve
from orch import files

__all__ = ["DEFAULT_PROFILE", "FilterCache", "check_profile", "load_profile"]

DEFAULT_PROFILE = Path(__file__).with_name("default.json")


def load_profile(path: Path) -> Profile:
    """Raises ProfileError for a file that cannot be read or used."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(str(path), "", f"cannot read it: {exc.strerror}") from None
    return parse_profile(raw, str(path))


class FilterCache:
    """program_for(caps) -> the path of the compiled program for a container with those caps.

    Thread-safe (the agent starts containers from several threads). `machine` and
    `kernel` default to this host's uname.
    """

    def __init__(self, profile: Profile, directory: Path, machine: str = "", kernel: str = "") -> None:
        self.profile = profile
        self.directory = directory
        self._machine = machine or os.uname().machine
        self._kernel = kernel or os.uname().release
        # Also fails now if libseccomp is missing.
        self._salt = f"libseccomp {libseccomp_version()}, compiler revision {REVISION}"
        self._lock = threading.Lock()
        self._known: dict[frozenset[str], Path] = {}

    def program_for(self, caps: Iterable[str]) -> Path:
        """Raises SeccompError (ProfileError for a rule conflict) naming what is wrong."""
        key = frozenset(caps)
        with self._lock:
            path = self._known.get(key)
            if path is None or not path.exists():
                path = self._build(key)
                self._known[key] = path
            return path

    def _build(self, caps: frozenset[str]) -> Path:
        filter = resolve(self.profile, caps, self._machine, self._kernel)
        path = self.directory / f"{filter.digest(self._salt)}.bpf"
        if path.exists():
            return path
        program = compile_filter(filter)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # fsync'd: a program cut short by a crash could still end in a return instruction and
        # load, with half of its rules missing.
        files.write_atomic(path, program, mode=0o600, fsync=True)
        return path


def check_profile(path: Path, cap_sets: Iterable[Iterable[str]]) -> Profile:
    """Load the profile and compile it for each capability set, in memory: an agent refuses to
    start with a profile that would fail its first container. Raises SeccompError."""
    profile = load_profile(path)
    uname = os.uname()
    for caps in cap_sets:
        compile_filter(resolve(profile, caps, uname.machine, uname.release))
    return profile
