"""The runtime's two small C programs, compiled on this machine from native/*.c.

    orch-shim   what stays of a container's shim once its command runs: log copy, wait,
                exit.json (~0.2 MiB resident instead of a ~3.4 MiB Python process)
    orch-init   PID 1 of a container that asks for a reaper (`init: true`), static

They are built with Debian's gcc (deploy/install-deps.sh installs it) into
<state_dir>/.native/<digest>/, where the digest covers the sources and the flags, so a
new version of either is a new directory and a running container keeps the binary it
started with. A build happens once per state dir and version (~0.3 s), under an flock,
written to a temporary directory and renamed into place. `check()` tells whether they build
(make setup runs it).

orch-init runs inside containers, so it is handed to them as a sealed memfd
(`sealed_copy`): there is no path to it in the container, and neither container root nor
anyone else can write to the file a PID 1 runs from (the CVE-2019-5736 class).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from node.runtime.errors import ContainerError

__all__ = ["CFLAGS", "NativeBinaries", "NativeBuildError", "build", "check", "sealed_copy"]

SOURCES = Path(__file__).parent / "native"
# Warnings are errors; Debian's hardening (dpkg-buildflags) plus full RELRO and PIE.
CFLAGS = (
    "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-Wformat=2", "-Wshadow", "-Wconversion",
    "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong", "-fstack-clash-protection", "-fcf-protection",
    "-fPIE", "-Wl,-z,relro,-z,now",
)  # fmt: skip
# orch-shim runs on the host: dynamic, its libc pages shared with every other process.
# orch-init runs in the container, whose libc (if any) is not ours: static-pie.
LINK = {"orch-shim": ("-pie",), "orch-init": ("-static-pie",)}
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class NativeBuildError(ContainerError):
    """The C programs could not be built (no compiler, a failed compile)."""


@dataclass(frozen=True, slots=True)
class NativeBinaries:
    shim: Path
    init: Path


def digest() -> str:
    h = hashlib.sha256()
    for name in sorted(LINK):
        h.update(name.encode() + b"\0" + (SOURCES / f"{name}.c").read_bytes())
        h.update(" ".join((*CFLAGS, *LINK[name])).encode())
    return h.hexdigest()[:16]


def build(cache: Path) -> NativeBinaries:
    """The binaries in cache/<digest>/, compiled now if they are not there yet."""
    target = cache / digest()
    binaries = NativeBinaries(target / "orch-shim", target / "orch-init")
    if target.is_dir():
        return binaries
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another Runtime may be building the same
        if not target.is_dir():
            _compile_into(cache, target)
    return binaries


def _compile_into(cache: Path, target: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise NativeBuildError(
            "gcc not found: the runtime compiles its container supervisor (node/runtime/native/*.c) "
            "on the node; install gcc and libc6-dev (deploy/install-deps.sh does)"
        )
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    try:
        for name, link in LINK.items():
            cmd = [gcc, *CFLAGS, *link, "-o", str(tmp / name), str(SOURCES / f"{name}.c")]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise NativeBuildError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
            os.chmod(tmp / name, 0o500)
        os.rename(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)


def sealed_copy(path: Path) -> int:
    """A close-on-exec memfd holding path's bytes, sealed against any change: what a
    container's PID 1 execs (os.execve on the fd). Caller closes it."""
    fd = os.memfd_create(path.name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        data = memoryview(path.read_bytes())
        while data:
            data = data[os.write(fd, data) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check() -> None:
    """Build into a temporary cache; exits 1 with the compiler's words if this node cannot
    (`make setup` runs it)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            built = build(Path(tmp))
        except NativeBuildError as exc:
            sys.exit(f"orch: {exc}")
        print(f"orch: the container supervisor and init build here ({built.shim.parent.name})")
