"""The exec path's pure parts: which steps an exec'd process runs, with what plan, and the
wire between the Runtime and the exec helper. No root needed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, init
from node.runtime.exec_container import exec_plan, exec_steps
from node.runtime.exec_request import ExecRequest, Lines, send
from node.runtime.layout import ContainerDir
from node.runtime.proctree import children, descendants
from node.runtime.security import Identity, cap_mask
from node.runtime.spec import ShimSpec
from node.runtime.sys import CLONE_NEWCGROUP, RecordingSyscalls


def make_spec(tmp_path: Path) -> ShimSpec:
    config = ContainerConfig(
        id="c1",
        rootfs=tmp_path / "rootfs",
        argv=("sleep", "1000"),
        env={"A": "container", "B": "container"},
        log_path=tmp_path / "c1.log",
        working_dir="/srv",
        cap_add=("NET_ADMIN",),
    )
    identity = Identity(1001, 1002, (1002, 1003))
    return ShimSpec(
        config, "v1", Path("/sys/fs/cgroup"), "orch/n/c1", identity, cap_mask(("NET_ADMIN",)), ((7, 10, 20),)
    )


def test_exec_steps_are_pid1s_exec_steps_joined_instead_of_created() -> None:
    names = [name for name, _ in exec_steps()]
    pid1 = [name for name, _ in init.EXEC_STEPS]
    assert names == ["chdir_working_dir"] + [n for n in pid1 if n != "unshare_cgroup_namespace"]
    assert {"set_rlimits", "enter_user_namespace", "drop_bounding_caps", "set_no_new_privs"} <= set(names)
    assert {"set_groups", "set_uid", "set_caps"} <= set(names)


def test_a_step_added_to_pid1s_exec_steps_applies_to_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. a seccomp filter loaded last: exec and exec probes must get it too, with no change here.
    def load_filter(s: object, p: init.InitPlan) -> None:
        pass

    monkeypatch.setattr(init, "EXEC_STEPS", (*init.EXEC_STEPS, ("load_seccomp", load_filter)))
    assert exec_steps()[-1] == ("load_seccomp", load_filter)


def test_an_exec_does_what_pid1_does_before_its_exec(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    cdir = ContainerDir(tmp_path / "c1")
    pid1 = RecordingSyscalls()
    init.run_setup(pid1, spec.init_plan(cdir, 9), init.EXEC_STEPS)
    execd = RecordingSyscalls()
    init.run_setup(execd, exec_plan(spec, cdir, ExecRequest(("id",)), 9), exec_steps())
    assert pid1.calls[0] == ("unshare", CLONE_NEWCGROUP)
    assert execd.calls == [("chdir", "/srv"), *pid1.calls[1:]]  # the same ids, caps, rlimits, user ns


def test_an_exec_plan_takes_the_requests_command_user_env_and_cwd(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    request = ExecRequest(("sh", "-c", "id"), {"B": "exec"}, Identity(5, 6, (6,)), "/tmp")
    plan = exec_plan(spec, ContainerDir(tmp_path / "c1"), request, -1)
    assert plan.argv == ("sh", "-c", "id") and (plan.uid, plan.gid, plan.groups) == (5, 6, (6,))
    assert plan.env["A"] == "container" and plan.env["B"] == "exec" and "PATH" in plan.env
    assert plan.working_dir == "/tmp" and plan.caps == spec.caps and plan.rlimits == spec.rlimits
    same_user = exec_plan(spec, ContainerDir(tmp_path / "c1"), ExecRequest(("id",)), -1)
    assert (same_user.uid, same_user.groups, same_user.working_dir) == (1001, (1002, 1003), "/srv")


def test_exec_request_round_trip() -> None:
    request = ExecRequest(("a", "b c"), {"K": "v"}, Identity(1, 2, (2, 3)), "/w", True, (40, 120))
    assert ExecRequest.from_json(request.to_json()) == request
    assert ExecRequest.from_json(ExecRequest(("x",)).to_json()) == ExecRequest(("x",))


def test_lines_carry_messages_and_fds() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe()
    with a, b:
        send(a, {"started": True}, [r])
        a.sendall(b'{"status": 0}\n{"par')
        lines = Lines(b)
        assert lines.next() == {"started": True} and len(lines.fds) == 1
        assert lines.next() == {"status": 0}
        a.sendall(b'tial": 1}\n')
        a.shutdown(socket.SHUT_WR)
        assert lines.next() == {"partial": 1}
        assert lines.next() is None and lines.eof
        for fd in (r, w, *lines.fds):
            os.close(fd)


def fake_proc(tmp_path: Path, tree: dict[int, dict[int, list[int]]]) -> Path:
    """/proc/<pid>/task/<tid>/children for {pid: {tid: [children]}}."""
    for pid, tasks in tree.items():
        for tid, kids in tasks.items():
            task = tmp_path / str(pid) / "task" / str(tid)
            task.mkdir(parents=True)
            (task / "children").write_text("".join(f"{k} " for k in kids))
    return tmp_path


def test_descendants_of_every_thread_parents_first(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: {10: [11], 12: [13]}, 11: {11: [14]}, 13: {13: []}, 14: {14: []}})
    assert sorted(children(10, proc)) == [11, 13]
    found = descendants(10, proc)
    assert sorted(found) == [11, 13, 14] and found.index(11) < found.index(14)
    assert descendants(99, proc) == []  # gone
