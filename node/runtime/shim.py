"""Per-container supervisor: `python -m node.runtime.shim <container dir> <report fd> <go fd>`.

Like conmon / containerd-shim it outlives the agent: it detaches (double
fork, own session), forks the container's PID 1 into a new pid namespace,
waits for it and writes exit.json, then exits. The agent is multi-threaded,
so all forking of Python code happens here, in a single-threaded process.

Handshake (JSON lines on <report fd>, one line back on <go fd>):

    shim                                  child (PID 1)                 Runtime
    fork ───────────────────────────────▶ waits for "C"
    add child to cgroup, "C" ──────────▶ unshare, mounts, pivot_root
                                   ◀───── "R" (or setup error JSON)
    {"event": "netns", "pid": N} ─────────────────────────────────────▶ on_netns(N)
                                   ◀────────────────────────────────── "go"
    "G" ───────────────────────────────▶ execvpe (CLOEXEC pipe: EOF = exec'd)
    {"event": "started"} | {"event": "exec_failed"} ──────────────────▶ start() returns
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from node.runtime import init, stdio
from node.runtime.cgroups import CgroupDriver, driver_for
from node.runtime.layout import ContainerDir, proc_start_time, read_json, write_json_atomic
from node.runtime.spec import ShimSpec
from node.runtime.sys import CLONE_NEWPID, LinuxSyscalls

__all__ = ["exit_record", "main"]


def _send(fd: int, msg: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the Runtime went away (agent crash): supervise anyway
        os.write(fd, json.dumps(msg).encode() + b"\n")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _child(
    spec: ShimSpec, cdir: ContainerDir, output_fd: int, pipes: tuple[int, int], shim_fds: tuple[int, ...]
) -> NoReturn:
    """The container's PID 1 until exec. Never returns; reports failures as JSON on to_shim."""
    from_shim, to_shim = pipes
    code = 1
    try:
        for fd in shim_fds:  # the shim's ends: kept open here, EOF would never come
            os.close(fd)
        stdio.attach(output_fd)
        if os.read(from_shim, 1) != b"C":  # wait until the shim put us into the cgroup
            os._exit(1)
        calls, plan = LinuxSyscalls(), spec.init_plan(cdir)
        try:
            init.run_setup(calls, plan)
        except OSError as exc:
            notes = "; ".join(getattr(exc, "__notes__", []))
            os.write(to_shim, json.dumps({"stage": "setup", "message": f"{notes}: {exc}"}).encode())
            os._exit(1)
        os.write(to_shim, b"R")
        if os.read(from_shim, 1) != b"G":
            os._exit(1)
        # Python ignores SIGPIPE/SIGXFSZ; ignored signals survive exec, so restore them.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        try:
            init.exec_command(calls, plan)
        except OSError as exc:
            code, message = init.exec_failure(plan.argv[0], exc)
            os.write(to_shim, json.dumps({"stage": "exec", "code": code, "message": message}).encode())
    except BaseException:
        traceback.print_exc()
    os._exit(code)


def exit_record(status: int, oom_kills: int, start_error: str = "") -> dict[str, Any]:
    """exit.json from a waitpid status: shell convention 128+signal, reason as the API names it."""
    signaled = os.WIFSIGNALED(status)
    code = 128 + os.WTERMSIG(status) if signaled else os.WEXITSTATUS(status)
    if start_error:
        reason = "StartError"
    elif oom_kills and code != 0:
        reason = "OOMKilled"
    elif signaled:
        reason = "Killed"
    else:
        reason = "Completed" if code == 0 else "Error"
    message = start_error or (f"killed by signal {os.WTERMSIG(status)}" if signaled else "")
    return {
        "exit_code": code,
        "signal": os.WTERMSIG(status) if signaled else 0,
        "oom_killed": oom_kills > 0,
        "finished_at": time.time(),
        "reason": reason,
        "message": message,
    }


Failure = tuple[str, str]  # (stage "setup" | "exec" | "shim", message); ("", "") = exec'd


def _handshake(cg: CgroupDriver, spec: ShimSpec, child: int, pipes: tuple[int, int], fds: tuple[int, int]) -> Failure:
    """Drive the child from fork to exec."""
    to_child, from_child = pipes
    report, go = fds
    cg.add_process(spec.cgroup_path, child)
    os.write(to_child, b"C")
    first = os.read(from_child, 1)
    if first != b"R":
        rest = (first + _read_all(from_child)).decode(errors="replace")
        return "setup", json.loads(rest)["message"] if rest.startswith("{") else "container init died"
    _send(report, {"event": "netns", "pid": child})
    if os.read(go, 16).strip() != b"go":
        return "setup", "start aborted by the runtime"
    os.write(to_child, b"G")
    if failure := _read_all(from_child):
        return "exec", str(json.loads(failure)["message"])
    return "", ""


def _supervise(cdir: ContainerDir, fds: tuple[int, int]) -> int:
    report = fds[0]
    spec = ShimSpec.from_json(read_json(cdir.spec) or {})
    cg = driver_for(spec.cgroup_driver, spec.cgroup_root)
    output_fd = stdio.open_output(spec.config.log_path)
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    # CLONE_NEWPID affects only children: the next fork becomes PID 1.
    LinuxSyscalls().unshare(CLONE_NEWPID)
    child = os.fork()
    if child == 0:
        _child(spec, cdir, output_fd, (to_child_r, from_child_w), (to_child_w, from_child_r, *fds))
    for fd in (output_fd, to_child_r, from_child_w):
        os.close(fd)
    shim = {"shim_pid": os.getpid(), "shim_start": proc_start_time(os.getpid())}
    start: dict[str, Any] = {**shim, "pid": child, "pid_start": proc_start_time(child), "started_at": None}
    write_json_atomic(cdir.start, start)
    try:
        stage, error = _handshake(cg, spec, child, (to_child_w, from_child_r), fds)
    except Exception as exc:  # e.g. a cgroup write failed: the container must not run unconfined
        stage, error = "shim", f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    os.close(to_child_w)  # EOF makes a child still waiting for "C"/"G" exit without exec
    if not stage:
        write_json_atomic(cdir.start, {**start, "started_at": time.time()})
        _send(report, {"event": "started"})
        os.close(report)
    _, status = os.waitpid(child, 0)
    write_json_atomic(cdir.exit, exit_record(status, cg.oom_killed(spec.cgroup_path), error))
    if stage:
        _send(report, {"event": "start_failed", "stage": stage, "message": error})
    return 0


def main(argv: list[str]) -> int:
    cdir, report, go = ContainerDir(Path(argv[1])), int(argv[2]), int(argv[3])
    # Detach: the Runtime reaps the intermediate at once; the shim is re-parented
    # to init (or a subreaper) and survives the agent.
    if os.fork() != 0:
        os._exit(0)
    for fd in (report, go):
        os.set_inheritable(fd, False)  # must not leak into the container
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return _supervise(cdir, (report, go))
    except BaseException as exc:
        traceback.print_exc()
        _send(report, {"event": "shim_error", "message": f"{type(exc).__name__}: {exc}"})
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
