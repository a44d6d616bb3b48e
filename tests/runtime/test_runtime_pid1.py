"""Root: a reaper PID 1 (init=True) gives container root nothing of the host's.

The reaper is orch-init (native/orch-init.c), exec'd by the Python PID 1 from a sealed memfd
after every isolation step, uid 0 with the container's capabilities, holding the report pipe to
its shim. Were it dumpable, container root could read its environ and memory and write through
its fds (the report pipe: a forged exit status). Checked on both ways PID 1 is made: forked
fresh by the shim (no spare ready, use_zygote=False, a user namespace) and pre-staged by a spare
shim (staged.py). Without init the command is PID 1, an ordinary container process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime
from node.runtime.shim_client import Zygote
from tests.runtime.test_runtime_containers import sections, wait_for_output

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]

SECRET = "ORCH_TEST_AGENT_SECRET"  # set in the agent's (this test's) environment only
LOG_MAX = 64 << 10
# What container root tries against PID 1: its fds (listing, links, writes of 256 KiB each: the
# log file would grow past LOG_MAX), environ, mem and maps. Then whether the agent's variable shows
# anywhere, and whether the command's own children are still dumpable (execve resets it).
PROBE = (
    "echo '#fds'; ls /proc/1/fd 2>&1;"
    "echo '#links'; ls -l /proc/1/fd/ 2>/dev/null | grep -c -- '->';"
    "echo '#read'; for f in environ mem maps; do cat /proc/1/$f >/dev/null 2>&1 && echo read-$f; done;"
    "echo '#write'; for n in $(seq 0 40); do"
    "  head -c 262144 /dev/zero 2>/dev/null >> /proc/1/fd/$n && echo wrote-$n; done;"
    f"echo '#secret'; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c {SECRET}; env | grep -c {SECRET};"
    "echo '#child'; sleep 1000 & cat /proc/$!/environ > /dev/null && echo dumpable; kill $!;"
    "echo '#end'; sleep 1000"
)
CLEAN_ENV = {"PATH", "PYTHONPATH", "LANG"}


def env_names(pid: int) -> set[str]:
    return {entry.split(b"=")[0].decode() for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if entry}


def fd_links(pid: int) -> dict[str, str]:
    """Where each fd of pid leads, as host root sees it. Read after the probe's listing: an fd
    listed there but missing here was open only for a moment (a race in PID 1, not a leak)."""
    links = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError as exc:
            links[fd] = f"({exc.strerror})"
    return links


def spare_ready(state_dir: Path) -> bool:
    """Whether the zygote of state_dir has a spare shim forked (its PID 1 staged or staging)."""
    zygote = Zygote(state_dir).pid()
    if zygote is None:
        return False
    children = Path(f"/proc/{zygote}/task/{zygote}/children").read_text().split()
    titles = []
    for pid in children:
        try:
            titles.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            continue
    return any(title.startswith(b"orch-shim (spare)") for title in titles)


def start_staged(rt: Runtime, config: ContainerConfig) -> None:
    """Start config through a spare shim: the host's mounts may change (other tests) and make the
    spare stale (zygote.py), so it is tried a few times."""
    rt.start(ContainerConfig(f"{config.id}-warm", config.rootfs, ("true",), {}, config.log_path.with_suffix(".w")))
    for _ in range(10):
        deadline = time.monotonic() + 10
        while not spare_ready(rt.state_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        rt.start(config)
        if json.loads((rt.state_dir / config.id / "start.json").read_text())["staged"]:
            return
        rt.stop(config.id, 0)
        rt.remove(config.id)
    pytest.fail("no start took a spare shim in 10 tries")


@pytest.mark.parametrize("way", ["unstaged", "staged", "userns"])
def test_pid1_is_out_of_container_roots_reach(
    way: str, tmp_path: Path, cgroup_parent: str, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET, "s3cr3t")  # before the Runtime: the zygote and shims start from here
    rt = Runtime(tmp_path / "state", cgroup_parent, use_zygote=way == "staged")
    try:
        config = make_config("pid1", "sh", "-c", PROBE, log_max_bytes=LOG_MAX, log_max_files=1,
                             user_namespace=way == "userns", init=True)  # fmt: skip
        if way == "staged":
            start_staged(rt, config)
        else:
            rt.start(config)
        out = sections(wait_for_output(config, "#end"))
        start = json.loads((rt.state_dir / "pid1" / "start.json").read_text())
        assert start["staged"] is (way == "staged")
        # The shim carries only what Python needs, PID 1 the container's: never the agent's environment.
        assert env_names(start["shim_pid"]) <= CLEAN_ENV and env_names(start["pid"]) <= {"PATH", "HOME"}
        assert os.readlink(f"/proc/{start['pid']}/exe").startswith("/memfd:orch-init")  # no file to write to
        links = fd_links(start["pid"])  # where PID 1's fds lead by now: a failure's message names them
        rt.stop("pid1", 0)
    finally:
        rt.cleanup_all()
    # /proc/1 is owned by root of the user namespace orch-init was exec'd in: host root, or with
    # a user namespace container root (as for any exec'd PID 1). Container root sees fd numbers
    # (stdin, the log pipes and the report pipe: nothing of the shim's or the zygote's), never
    # where they lead: that needs CAP_SYS_PTRACE, which no container has unless it adds it.
    assert {"0", "1", "2"} <= set(out["fds"]) and len(out["fds"]) == 4, f"PID 1's fds {out['fds']}, by now {links}"
    assert out["links"] == ["0"]
    assert out["read"] == [] and out["write"] == [], out
    assert out["secret"] == ["0", "0"]
    assert out["child"] == ["dumpable"]  # the command's processes are like any container's
    assert config.log_path.stat().st_size <= LOG_MAX
