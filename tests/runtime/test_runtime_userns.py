"""Root: containers in a user namespace (user_namespace=True), checked from inside and from the host."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime, RuntimeStartError
from node.runtime.security import cap_mask
from node.runtime.userns import IDS_PER_CONTAINER, IdRange, allocate
from tests.runtime.test_runtime_containers import run, sections, wait_exit, wait_for_output
from tests.runtime.test_runtime_security import status_field

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]
FIRST = IdRange().first


def host_ids(pid: int) -> tuple[int, int]:
    """(uid, gid) of a process as the host sees them."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid = next(line for line in status if line.startswith("Uid:")).split()[1]
    gid = next(line for line in status if line.startswith("Gid:")).split()[1]
    return int(uid), int(gid)


def test_root_inside_is_an_unprivileged_host_id(runtime: Runtime, make_config: MakeConfig) -> None:
    script = (
        "echo '#id'; id -u; id -g; echo '#map'; cat /proc/self/uid_map /proc/self/gid_map;"
        "echo '#status'; cat /proc/self/status;"
        "echo '#owner'; ls -ln /bin/busybox /etc/passwd;"
        "echo '#write'; echo hi > /etc/new && mkdir /bin/sub && echo WROTE;"
        "echo '#masked'; cat /proc/kcore /proc/keys 2>/dev/null | wc -c;"
        "echo '#dev'; touch /dev/made && echo TOUCHED; echo '#end'"
    )
    state, text = run(runtime, make_config("uns", "sh", "-c", script, user_namespace=True, hostname="box"))
    out = sections(text)
    assert state.exit_code == 0, text
    assert out["id"] == ["0", "0"]
    mapping = f"0 {FIRST} {IDS_PER_CONTAINER}"
    assert [" ".join(line.split()) for line in out["map"]] == [mapping, mapping]
    # The default capability set, inside the namespace only (the bounding set was reset by setns).
    for name in ("CapEff", "CapPrm", "CapBnd"):
        assert status_field(out["status"], name) == f"{cap_mask():016x}"
    assert status_field(out["status"], "NoNewPrivs") == "1"
    # The image's files are owned by host root, and still by container root through the idmapped layers.
    assert all(line.split()[2:4] == ["0", "0"] for line in out["owner"]), out["owner"]
    assert out["write"] == ["WROTE"]
    assert out["masked"] == ["0"]
    assert out["dev"] == ["TOUCHED"]
    # What the container wrote is owned by the host id of its root.
    upper = runtime.state_dir / "uns" / "upper"
    assert (os.stat(upper / "etc" / "new").st_uid, os.stat(upper / "bin" / "sub").st_gid) == (FIRST, FIRST)


@pytest.mark.parametrize("user_namespace", [True, False], ids=["userns", "control"])
def test_cap_sys_admin_inside_a_user_namespace_cannot_mount_or_rename(
    runtime: Runtime, make_config: MakeConfig, user_namespace: bool
) -> None:
    """The container's mount and UTS namespaces belong to the host's user namespace, so even
    CAP_SYS_ADMIN, which container root holds in its own, mounts nothing and keeps the hostname.
    The control container, the same but without a user namespace, can: the check can fail."""
    script = (
        "echo '#caps'; grep CapEff /proc/self/status;"
        "echo '#mount'; mount -t tmpfs x /tmp 2>&1 && echo MOUNTED;"
        "echo '#hostname'; hostname other 2>&1 && echo RENAMED; hostname"
    )
    config = make_config("admin", "sh", "-c", script, user_namespace=user_namespace, hostname="box")
    state, text = run(runtime, dataclasses.replace(config, cap_add=("SYS_ADMIN",)))
    out = sections(text)
    assert state.exit_code == 0, text
    assert int(out["caps"][0].split()[1], 16) >> 21 & 1  # CAP_SYS_ADMIN is in its effective set
    if user_namespace:
        assert "MOUNTED" not in out["mount"] and "RENAMED" not in out["hostname"], text
        assert out["hostname"][-1] == "box"
    else:
        assert out["mount"] == ["MOUNTED"] and out["hostname"] == ["RENAMED", "other"], text


def test_host_sees_the_mapped_ids_and_a_user_is_shifted(runtime: Runtime, make_config: MakeConfig) -> None:
    config = make_config("uns-app", "sh", "-c", "echo up; sleep 100", user_namespace=True, user="app", init=True)
    state = runtime.start(config)
    wait_for_output(config, "up")
    assert state.pid is not None
    children = Path(f"/proc/{state.pid}/task/{state.pid}/children").read_text().split()
    assert host_ids(state.pid) == (FIRST + 1001, FIRST + 1002)  # the reaper runs as the user too
    assert [host_ids(int(pid)) for pid in children] == [(FIRST + 1001, FIRST + 1002)]
    runtime.stop("uns-app", 5)
    assert runtime.state("uns-app").exit_code == 143


def test_each_container_gets_its_own_block_until_removed(runtime: Runtime, make_config: MakeConfig) -> None:
    for id in ("a", "b"):
        runtime.start(make_config(id, "sleep", "100", user_namespace=True))
    pids = {id: runtime.state(id).pid for id in ("a", "b")}
    assert {host_ids(pid)[0] for pid in pids.values() if pid} == {FIRST, FIRST + IDS_PER_CONTAINER}
    for id in ("a", "b"):
        runtime.stop(id, 0)
    runtime.remove("a")  # frees the first block; "b" (exited, not removed) keeps its own
    state, _ = run(runtime, make_config("c", "cat", "/proc/self/uid_map", user_namespace=True))
    assert state.exit_code == 0
    assert f"0 {FIRST} " in " ".join((runtime.state_dir.parent / "logs" / "c.log").read_text().split())


def test_ids_outside_the_namespace_are_a_start_error(runtime: Runtime, make_config: MakeConfig) -> None:
    with pytest.raises(RuntimeStartError, match="not mapped in the user namespace"):
        runtime.start(make_config("big", "true", user_namespace=True, user="70000"))
    assert not (runtime.state_dir / "big").exists()


def test_a_full_id_range_is_a_start_error(tmp_path: Path, cgroup_parent: str, make_config: MakeConfig) -> None:
    rt = Runtime(tmp_path / "state", cgroup_parent, userns_ids=IdRange(FIRST, IDS_PER_CONTAINER))
    try:
        rt.start(make_config("one", "sleep", "100", user_namespace=True))
        with pytest.raises(RuntimeStartError, match="all 1 user namespace id blocks are in use"):
            rt.start(make_config("two", "true", user_namespace=True))
        rt.stop("one", 0)
        assert wait_exit(rt, "one").status.value == "exited"
    finally:
        rt.cleanup_all()


def test_allocate_and_parse() -> None:
    pool = IdRange(100000, 3 * IDS_PER_CONTAINER)
    assert allocate(pool, []) == 100000
    assert allocate(pool, [100000, 100000 + 2 * IDS_PER_CONTAINER]) == 100000 + IDS_PER_CONTAINER
    assert allocate(pool, [100000 + i * IDS_PER_CONTAINER for i in range(3)]) is None
    assert IdRange.parse("100000:65536") == IdRange(100000, 65536)
    for bad in ("100000", "x:65536", "100000:100", "4294967295:65536"):
        with pytest.raises(ValueError):
            IdRange.parse(bad)
