"""The daemons' malloc arenas (orch/malloc.py): at most two, however many threads allocate at
once; an operator's MALLOC_ARENA_MAX is left alone. Each case runs in a process of its own, as
arenas, once made, last as long as the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.fixtures.processes import orch_env

# 16 threads allocating at once through ctypes, which lets go of the GIL, so that they meet in
# glibc's arenas; then the arenas glibc reports (malloc_info(3): one <heap> each).
ALLOCATE_AND_COUNT = textwrap.dedent(
    """
    import ctypes, os, sys, tempfile, threading
    from orch import malloc
    print(malloc.limit_arenas() if sys.argv[1] == "limit" else None)
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    def churn():
        for _ in range(20000):
            libc.free(libc.malloc(256))
    threads = [threading.Thread(target=churn) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
    fd, path = tempfile.mkstemp()
    os.close(fd)
    f = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    print(open(path).read().count("<heap nr="))
    os.unlink(path)
    """
)


def arenas(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATE_AND_COUNT, mode],
        env={**{k: v for k, v in orch_env().items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], int(out[1])


def test_the_daemons_keep_two_arenas_however_many_threads_allocate() -> None:
    assert arenas("limit") == ("True", 2)
    _, default = arenas("default")
    assert default > 2  # what glibc does without the limit, here: one arena per thread, up to 8 per core


def test_an_operators_own_setting_wins() -> None:
    assert arenas("limit", MALLOC_ARENA_MAX="4") == ("False", 4)
    assert arenas("limit", GLIBC_TUNABLES="glibc.malloc.arena_max=3") == ("False", 3)
