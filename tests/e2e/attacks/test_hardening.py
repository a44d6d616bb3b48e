"""An app against its own PID 1, the host's device nodes and the socket filter, on a real
`orch up` (the first security review of issue 9: items 1, 2, 3).

PID 1 of an app that asks for one (`init: true`: orch-init, exec'd from a sealed memfd) gives
container root neither its environment nor its fds; chmod and chown of /dev/null (and of a masked
/proc file, a /dev/null bind) change the container's own node, never the host's; AF_VSOCK is
refused with a high bit set in the family and through 32-bit socketcall.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.attacks.test_confinement import run_app
from tests.fixtures.rootfs import SysprobeUnavailable, build_sysprobe_rootfs

pytestmark = pytest.mark.root

SCRIPT = (
    "cat /proc/1/environ > /dev/null 2>&1 && echo read-environ;"
    "for n in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do echo x 2>/dev/null >> /proc/1/fd/$n && echo wrote-$n; done;"
    "chmod 666 /dev/null /dev/full /proc/keys && chown 0:0 /dev/null /dev/full /proc/keys && echo changed-own;"
    "echo x > /dev/null && echo null-works;"
    "sysprobe socket-vsock-hi ia32-socketcall-vsock socket-vsock"
)


@pytest.fixture(scope="module")
def probe_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.uname().machine != "x86_64":
        pytest.skip("int 0x80 probes: x86_64 only")
    try:
        return build_sysprobe_rootfs(tmp_path_factory.mktemp("hardening-rootfs"))
    except SysprobeUnavailable as exc:
        pytest.skip(f"sysprobe: {exc}")


def host_nodes() -> dict[str, tuple[int, int, int, int]]:
    found = {}
    for path in ("/dev/null", "/dev/full"):
        st = os.stat(path)
        found[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_ctime_ns)
    return found


def test_an_app_reaches_neither_pid1_nor_host_nodes_nor_vsock(cluster: dict[str, Any], probe_image: Path) -> None:
    before = host_nodes()
    lines = run_app(cluster, probe_image, "hard-probe", ["sh", "-c", SCRIPT], extra="  init: true\n")
    assert lines == [
        "changed-own",  # its own nodes: allowed, and harmless
        "null-works",
        "socket-vsock-hi EPERM",
        "ia32-socketcall-vsock EPERM",
        "socket-vsock EPERM",
    ]
    assert host_nodes() == before  # not even the ctime of the host's nodes moved
