"""Root: the device nodes in a container's /dev are its own, never the host's inodes.

Container root has CAP_CHOWN and CAP_FOWNER: on a bind of the host's /dev/null it could chmod or
chown the host's node (chmod 000 /dev/null breaks the host). The same goes for the masked /proc
files, which are /dev/null binds. Each case sets the host's own mode and owner again, so the
host's nodes stay usable even where the defence fails: the inode's ctime is what tells.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime
from node.runtime.init import DEVICES
from tests.runtime.test_runtime_containers import sections, wait_exit
from tests.runtime.test_runtime_pid1 import start_staged

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]

MASKED_FILES = ("/proc/keys", "/proc/timer_list")  # /dev/null binds (init.MASKED_PATHS)


def host_nodes() -> dict[str, tuple[int, int, int, int]]:
    """Each host node the container could have been given: mode, owner, group, ctime."""
    found = {}
    for name, _, _ in DEVICES:
        st = os.stat(f"/dev/{name}")
        found[f"/dev/{name}"] = (st.st_mode, st.st_uid, st.st_gid, st.st_ctime_ns)
    return found


def script(host: dict[str, tuple[int, int, int, int]]) -> str:
    """chmod and chown each node (and the masked files) to what the host's node has; then use them."""
    null = host["/dev/null"]
    changes = [(path, mode, uid, gid) for path, (mode, uid, gid, _) in host.items()]
    changes += [(path, *null[:3]) for path in MASKED_FILES]
    lines = ["echo '#changed'"]
    lines += [f"chmod {mode & 0o7777:o} {p} && chown {uid}:{gid} {p} && echo {p}" for p, mode, uid, gid in changes]
    lines += [
        "echo '#io'; echo x > /dev/null && echo null",
        "head -c 3 /dev/zero | wc -c; head -c 5 /dev/urandom | wc -c; head -c 7 /dev/random | wc -c",
        "(echo x > /dev/full) 2>&1 | grep -o 'No space left on device'",
        "(: < /dev/tty) 2>&1 | grep -o 'No such device or address'",  # no controlling tty: the node works
        "echo '#end'",
    ]
    return "; ".join(lines)


@pytest.mark.parametrize("way", ["unstaged", "staged", "userns"])
def test_container_root_cannot_change_the_hosts_device_nodes(
    way: str, tmp_path: Path, cgroup_parent: str, make_config: MakeConfig
) -> None:
    before = host_nodes()
    rt = Runtime(tmp_path / "state", cgroup_parent, use_zygote=way == "staged")
    try:
        config = make_config("nodes", "sh", "-c", script(before), user_namespace=way == "userns")
        start_staged(rt, config) if way == "staged" else rt.start(config)
        wait_exit(rt, "nodes")
        text = config.log_path.read_text()
    finally:
        rt.cleanup_all()
    out = sections("\n".join(line.split(" ", 3)[3] for line in text.splitlines()))
    assert host_nodes() == before  # not even the ctime: no chmod or chown reached a host inode
    # ... while the container's own nodes took them, and work.
    assert out["changed"] == [*before, *MASKED_FILES], out
    assert out["io"] == ["null", "3", "5", "7", "No space left on device", "No such device or address"], out
