"""Load a compiled BPF program into the calling thread: prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER).

No libseccomp here: the container's init only hands the kernel the bytes that
compiler.py exported. The kernel requires no_new_privs (or CAP_SYS_ADMIN); the
filter is inherited across fork and exec and can never be removed.
"""

from __future__ import annotations

import ctypes
import errno
import os

__all__ = ["load_program"]

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
_INSTRUCTION = 8  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_program(program: bytes) -> None:
    """Raises OSError: EINVAL for a malformed program, EACCES without no_new_privs."""
    if not program or len(program) % _INSTRUCTION:
        raise OSError(errno.EINVAL, f"a seccomp program is whole 8-byte instructions, got {len(program)} bytes")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // _INSTRUCTION, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    args = (ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(prog), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if libc.prctl(ctypes.c_int(PR_SET_SECCOMP), *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"load the seccomp filter: {os.strerror(err)}")
