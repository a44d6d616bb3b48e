"""Fewer glibc malloc arenas for orch's long-running daemons.

glibc gives a thread that finds the arenas in use a new one of its own, up to 8 per core, and
memory freed in an arena stays with it. grpc's completion-queue threads and the daemons' thread
pools (etcd calls, container starts, probes) each end up with one, and a burst leaves every one
of them holding pages: the scheduler with 5,000 hollow agents peaked at 391-467 MiB RSS with
glibc's default and 340-349 MiB with two arenas, at no cost in placement rate
(docs/benchmarks.md). An operator's own setting wins (glibc reads it at start-up).
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["limit_arenas"]

M_ARENA_MAX = -8  # <malloc.h>
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """mallopt(M_ARENA_MAX, arenas), before the process starts its threads; True if set.
    False where the operator chose (MALLOC_ARENA_MAX, or GLIBC_TUNABLES' glibc.malloc.arena_max),
    or where libc has no mallopt (not glibc)."""
    if os.environ.get("MALLOC_ARENA_MAX") or "glibc.malloc.arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
