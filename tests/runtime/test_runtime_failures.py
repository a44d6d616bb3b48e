"""Root: a start that fails at any step leaves nothing behind and never blocks the next one
(issue 9 item 16); unreadable state files are set aside, not fatal (item 17).

Faults in the container's init are injected through spec.json's "fault_step" (the
InitPlan.fault_step test seam): a mount or a sethostname cannot be made to fail for
real without breaking the host. The user namespace failure is real.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.network import NodeNetwork
from node.runtime import ContainerConfig, ContainerStatus, Runtime, RuntimeStartError, init, procs, staged
from node.runtime.shim_client import Zygote
from node.runtime.spec import ShimSpec
from node.runtime.userns import IDS_PER_CONTAINER, IdRange
from tests.network.test_network_root import host_links
from tests.runtime.conftest import log_text
from tests.runtime.test_runtime_containers import wait_exit
from tests.runtime.test_runtime_network import bridge  # noqa: F401  (a fixture)

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]
ALL_STEPS = sorted({name for name, _ in (*init.SETUP_STEPS, *staged.ROOTFS_STEPS, *init.EXEC_STEPS)})


@pytest.fixture
def inject(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """inject(step): the next starts' init fails at that step (spec.json "fault_step")."""

    def set_fault(step: str) -> None:
        resolve = ShimSpec.resolve

        def faulty(*args: object, **kw: object) -> ShimSpec:
            return dataclasses.replace(resolve(*args, **kw), fault_step=step)  # type: ignore[arg-type]

        monkeypatch.setattr(ShimSpec, "resolve", faulty)

    return set_fault


def leftovers(rt: Runtime, id: str) -> list[str]:
    """What is left of container id on the host: state dir, cgroup, mounts, shim processes."""
    found = [str(p) for p in [rt.state_dir / id] if p.exists()]
    cgroups = Path("/sys/fs/cgroup")  # v1: one dir per hierarchy; pure v2: the one tree
    found += [str(p) for p in [*cgroups.glob(f"*/{rt.cgroup_parent}/{id}"), *cgroups.glob(f"{rt.cgroup_parent}/{id}")]]
    found += [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if f"{rt.state_dir}/{id}" in m]
    found += [f"shim pid {pid}" for pid, _ in procs.shims_of(rt.state_dir / id)]
    return found


def wait_for_spare(rt: Runtime, timeout: float = 10) -> None:
    """Until the zygote has a spare shim, so that the next start takes the staged path."""
    zygote = Zygote(rt.state_dir).pid()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{zygote}/task/{zygote}/children").read_text().split()
        if any(_cmdline(c).startswith(b"orch-shim (spare)") for c in children):
            return
        time.sleep(0.02)
    raise AssertionError("the zygote made no spare shim")


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it ended meanwhile
        return b""


@pytest.fixture
def unstaged(tmp_path: Path, cgroup_parent: str) -> Iterator[Runtime]:
    """A Runtime without the zygote: every start runs SETUP_STEPS in a fresh PID 1."""
    rt = Runtime(tmp_path / "unstaged", cgroup_parent + "-u", use_zygote=False)
    try:
        yield rt
    finally:
        rt.cleanup_all()


@pytest.mark.parametrize("step", ALL_STEPS)
def test_a_start_failing_at_any_init_step_leaves_nothing(
    runtime: Runtime,
    unstaged: Runtime,
    make_config: MakeConfig,
    inject: Callable[[str], None],
    bridge: NodeNetwork,  # noqa: F811
    step: str,
) -> None:
    """On both paths a container can take (a pre-staged PID 1 runs ROOTFS_STEPS, a fresh one
    SETUP_STEPS; both run EXEC_STEPS): start() reports the step, and neither its cgroup, state
    dir, mounts, veth nor a process is left; remove() and a new start of the same id work."""
    runtime.start(make_config("warm", "true"))  # starts the zygote, which then makes a spare
    paths = [(runtime, staged.ROOTFS_STEPS), (unstaged, init.SETUP_STEPS)]
    for rt, steps in paths:
        if step not in dict((*steps, *init.EXEC_STEPS)):
            continue
        if rt is runtime:
            wait_for_spare(rt)
        inject(step)
        with pytest.raises(RuntimeStartError, match=f"container init step {step}"):
            rt.start(make_config("broken", "sleep", "100"), on_netns=lambda pid: bridge.attach("broken", pid).ip)
        veth = bridge.veth_name("broken")
        bridge.detach("broken")  # as the agent's worker does after a failed start
        assert leftovers(rt, "broken") == []
        assert veth not in host_links()
        rt.remove("broken")  # nothing to remove is success
        inject("")
        rt.start(make_config("broken", "true"))
        assert wait_exit(rt, "broken").exit_code == 0
        rt.remove("broken")


def test_a_refused_user_namespace_leaves_nothing(tmp_path: Path, cgroup_parent: str, make_config: MakeConfig) -> None:
    """The shim's own failure before PID 1 exists (issue 9's example: user namespace creation
    refused), for real: a host id range the kernel will not map (it ends past uid 2^32-2)."""
    top = IdRange((1 << 32) - IDS_PER_CONTAINER, IDS_PER_CONTAINER)
    rt = Runtime(tmp_path / "state", cgroup_parent, userns_ids=top)
    try:
        with pytest.raises(RuntimeStartError, match="Invalid argument"):
            rt.start(make_config("nouserns", "true", user_namespace=True))
        assert leftovers(rt, "nouserns") == []
        rt.remove("nouserns")
    finally:
        rt.cleanup_all()


def test_a_start_whose_runtime_died_can_be_removed(runtime: Runtime, make_config: MakeConfig) -> None:
    """The agent died between writing spec.json and starting the shim: no shim, no start lock.
    That container is exited at once (not 'created' for minutes) and removable."""
    _, lock = runtime._prepare(make_config("orphan", "true"))
    assert runtime.state("orphan").status is ContainerStatus.CREATED  # its start is in progress
    os.close(lock)  # the agent is gone
    state = runtime.state("orphan")
    assert (state.status, state.reason) == (ContainerStatus.EXITED, "StartError")
    assert "did not complete" in state.message
    runtime.remove("orphan")
    assert leftovers(runtime, "orphan") == []


# -- unreadable state files (item 17) ------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b'{"pid": 12', b"[]"], ids=["empty", "torn", "not-an-object"])
@pytest.mark.parametrize("name", ["spec.json", "start.json"])
def test_an_unreadable_state_file_of_a_running_container(
    tmp_path: Path, cgroup_parent: str, make_config: MakeConfig, name: str, content: bytes
) -> None:
    """As after a host crash, or a disk error: a new Runtime (an agent starting) lists the
    container as lost with the file named, sets the file aside, and removing it stops
    what still runs of it."""
    first = Runtime(tmp_path / "state", cgroup_parent)
    try:
        first.start(make_config("victim", "sleep", "1000"))
        start = json.loads((first.state_dir / "victim" / "start.json").read_text())
        (first.state_dir / "victim" / name).write_bytes(content)
        again = Runtime(tmp_path / "state", cgroup_parent)
        (state,) = [s for s in again.list() if s.id == "victim"]
        assert (state.status, state.reason) == (ContainerStatus.EXITED, "StateLost")
        assert f"{name}.corrupt-" in state.message
        assert [p.name.split(".corrupt-")[0] for p in (again.state_dir / "victim").glob("*.corrupt-*")] == [name]
        again.remove("victim")
        assert not procs.is_alive(start["pid"], start["pid_start"])
        assert not procs.is_alive(start["shim_pid"], start["shim_start"])
        assert leftovers(again, "victim") == []
    finally:
        first.cleanup_all()


def wait_all_gone(rt: Runtime, id: str) -> None:
    """The shim exits right after exit.json; PID 1 (the reaper) may take a moment more."""
    start = json.loads((rt.state_dir / id / "start.json").read_text())
    assert procs.wait_gone(start["shim_pid"], start["shim_start"], 10)
    assert procs.wait_gone(start["pid"], start["pid_start"], 10)


def test_an_unreadable_exit_record(runtime: Runtime, make_config: MakeConfig) -> None:
    runtime.start(make_config("ended", "sh", "-c", "echo bye"))
    assert wait_exit(runtime, "ended").exit_code == 0
    wait_all_gone(runtime, "ended")
    exit_json = runtime.state_dir / "ended" / "exit.json"
    exit_json.write_text('{"exit_code": 0, "fin')
    state = Runtime(runtime.state_dir, runtime.cgroup_parent).state("ended")
    assert (state.status, state.reason, state.exit_code) == (ContainerStatus.EXITED, "StateLost", None)
    assert "exit.json.corrupt-" in state.message and not exit_json.exists()
    assert log_text(runtime.state_dir.parent / "logs" / "ended.log") == "bye\n"
    runtime.remove("ended")
    assert leftovers(runtime, "ended") == []


def test_a_state_file_that_is_a_directory(runtime: Runtime, make_config: MakeConfig) -> None:
    """Not a file at all: set aside too (rename works on a directory)."""
    runtime.start(make_config("odd", "true"))
    wait_exit(runtime, "odd")
    wait_all_gone(runtime, "odd")
    exit_json = runtime.state_dir / "odd" / "exit.json"
    exit_json.unlink()
    exit_json.mkdir()
    assert Runtime(runtime.state_dir, runtime.cgroup_parent).state("odd").reason == "StateLost"
    runtime.remove("odd")


def test_userns_reservations_survive_an_unreadable_spec(runtime: Runtime, make_config: MakeConfig) -> None:
    """The id block scan reads every spec.json: a torn one is set aside, not an error."""
    runtime.start(make_config("torn", "true"))
    wait_exit(runtime, "torn")
    (runtime.state_dir / "torn" / "spec.json").write_text("{")
    runtime.start(make_config("next", "true", user_namespace=True))
    assert wait_exit(runtime, "next").exit_code == 0
    assert json.loads((runtime.state_dir / "next" / "spec.json").read_text())["userns"]["host_id"] > 0
