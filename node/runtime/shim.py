"""Per-container supervisor, forked by the zygote (zygote.py) or run as
`python -m node.runtime.shim <container dir> <report fd> <go fd>`.

Like conmon / containerd-shim it outlives the agent: it detaches (double
fork, own session), forks the container's PID 1 into a new pid namespace,
copies the container's stdout/stderr into the log (logs.py), waits for it and
writes exit.json, then exits. The agent is multi-threaded, so all forking of
Python code happens in single-threaded processes (zygote, shim).

Handshake (one line of JSON per message on <report fd>, one line back on <go fd>):

    shim                                  child (PID 1)                 Runtime
    fork, start.json ───────────────────▶ unshare, mounts, pivot_root (at once)
    add child to cgroup (meanwhile)
                                   ◀───── "R" (or setup error JSON)
    {"event": "netns", "pid": N} ─────────────────────────────────────▶ on_netns(N)
      (only if the Runtime has an on_netns hook; else straight to "G")
                                   ◀────────────────────────────────── "go"
    "G" ───────────────────────────────▶ cgroup ns, rlimits, caps, ids, seccomp; exec the
                                         command, or (init=True) orch-init, which starts it
                                   ◀───── EOF/"{}" = exec'd, or {"stage": ...}
    {"event": "started"} | {"event": "start_failed"} ─────────────────▶ start() returns
    exec orch-shim (native/orch-shim.c): the log copy, the wait and exit.json from here on
    (init=True: orch-init sends {"status": <wait status>, "alone": B} when the command ends)

A start that failed stays in Python to the end: it writes the full exit record itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from node.runtime import init, native, staged, userns
from node.runtime.cgroups import CgroupDriver, driver_for
from node.runtime.exits import exit_record
from node.runtime.layout import ContainerDir, proc_start_time, read_json, write_json_atomic
from node.runtime.logs import LogWriter
from node.runtime.secret_mounts import SECRET_STEPS, SecretPayload
from node.runtime.spec import ShimSpec
from node.runtime.sys import CLONE_NEWPID, LinuxSyscalls, default_signals, set_process_title

__all__ = ["Pid1", "fork_staged", "main", "run_detached", "supervise"]

_DRAIN_AFTER_EXIT = 2.0  # s: PID 1 is gone, so every writer dies; this only bounds a surprise


def _send(fd: int, msg: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the Runtime went away (agent crash): supervise anyway
        os.write(fd, json.dumps(msg).encode() + b"\n")


class _Reader:
    """Newline-terminated JSON messages from the child; None at EOF."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, b""

    def message(self) -> dict[str, Any] | None:
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                rest, self.buf = self.buf, b""
                return json.loads(rest) if rest.strip() else None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        msg = json.loads(line)
        return msg if isinstance(msg, dict) else {}


def _child(
    spec: ShimSpec, cdir: ContainerDir, stdio: tuple[int, int], pipes: tuple[int, int], fds: tuple[int, int]
) -> NoReturn:
    """The container's PID 1. Never returns; reports failures as JSON lines to the shim.

    fds: its user namespace (-1: none) and orch-init's sealed image (-1: none)."""
    code = 1
    userns_fd, init_image = fds
    try:
        _redirect_stdio(stdio)
        _close_fds_except((*pipes, *fds))
        # No wait for the shim before the mounts: they touch nothing outside our own
        # namespaces, and without "G" (sent after start.json and the attach) we never exec.
        calls, plan = LinuxSyscalls(), spec.init_plan(cdir, userns_fd)
        try:
            init.run_setup(calls, plan)
        except OSError as exc:
            _fail(pipes[1], "setup", exc)
        code = _run_container(calls, plan, init_image if spec.config.init else -1, pipes)
    except BaseException:
        traceback.print_exc()
    os._exit(code)


def _staged_child(stage_dir: str, stdio: tuple[int, int], pipes: tuple[int, int], init_image: int) -> NoReturn:
    """A pre-staged PID 1 (staged.py): stages its mounts, then waits for its container's
    directory from the shim; EOF instead means the spare was never used."""
    from_shim, to_shim = pipes
    code = 1
    try:
        _redirect_stdio(stdio)
        _close_fds_except((*pipes, init_image))
        set_process_title("orch-init (spare)")
        calls, error = LinuxSyscalls(), None
        try:
            init.run_setup(calls, staged.stage_plan(stage_dir), staged.STAGE_STEPS)
        except OSError as exc:
            error = exc  # reported to the container that would have used us
        line = _read_line(from_shim)
        if not line:
            os._exit(0)
        if error is not None:
            _fail(to_shim, "setup", error)
        cdir = ContainerDir(Path(line))
        spec = ShimSpec.from_json(read_json(cdir.spec) or {})
        plan = dataclasses.replace(spec.init_plan(cdir), staged_dir=stage_dir)
        try:
            init.run_setup(calls, plan, staged.ROOTFS_STEPS)
        except OSError as exc:
            _fail(to_shim, "setup", exc)
        code = _run_container(calls, plan, init_image if spec.config.init else -1, pipes)
    except BaseException:
        traceback.print_exc()
    os._exit(code)


def _redirect_stdio(stdio: tuple[int, int]) -> None:
    devnull = os.open("/dev/null", os.O_RDONLY)
    for target, fd in enumerate((devnull, *stdio)):
        os.dup2(fd, target)  # dup2 makes 0-2 inheritable
    for fd in (devnull, *stdio):  # only 0-2 may hold the log pipes (see init._alone)
        os.close(fd)


def _close_fds_except(keep: tuple[int, ...]) -> None:
    """Close every fd above 2 but `keep`. PID 1 lives as long as the container and (with the
    reaper) never execs, so O_CLOEXEC does not help: whatever the shim or the zygote had open
    (the log file, sockets, other pipes) must not stay reachable in it."""
    low = 3
    for fd in sorted(k for k in keep if k >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def _read_line(fd: int) -> str:
    """One line from a pipe, byte by byte (nothing after it may be consumed); "" at EOF."""
    data = b""
    while not data.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            return ""
        data += byte
    return data[:-1].decode()


def _frame(secrets: SecretPayload) -> bytes:
    """The secrets (variables and files) as PID 1 reads them after "G": length, then JSON."""
    body = json.dumps(secrets.wire()).encode()
    return struct.pack("=I", len(body)) + body


def _read_frame(fd: int) -> SecretPayload | None:
    """What _frame wrote; None at EOF or on garbage."""

    def exactly(n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = os.read(fd, n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    head = exactly(4)
    if head is None:
        return None
    body = exactly(struct.unpack("=I", head)[0])
    try:
        return SecretPayload.from_wire(json.loads(body)) if body is not None else None
    except ValueError:
        return None


def _run_container(calls: LinuxSyscalls, plan: init.InitPlan, init_image: int, pipes: tuple[int, int]) -> int:
    """From "R" on: wait for "G", run the exec steps, exec the command, or orch-init from its
    sealed image (init_image >= 0), which starts it. Returns only with the exec failure's code."""
    from_shim, to_shim = pipes
    os.write(to_shim, b"R")
    if os.read(from_shim, 1) != b"G":
        os._exit(1)
    secrets = _read_frame(from_shim)  # after "G", always: empty without secrets
    if secrets is None:
        os._exit(1)
    plan = dataclasses.replace(plan, env={**plan.env, **secrets.env}, secret_mounts=secrets.mounts)
    # Ignored signals survive exec: Python ignores SIGPIPE and SIGXFSZ, the zygote HUP and INT.
    # The command starts with every disposition at its default, as under Docker.
    default_signals()
    try:
        init.run_setup(calls, plan, SECRET_STEPS + init.EXEC_STEPS)
    except OSError as exc:
        _fail(to_shim, "setup", exc)
    if plan.userns_fd >= 0:
        os.close(plan.userns_fd)  # joined
    try:
        if init_image >= 0:
            init.exec_reaper(calls, plan, init_image, to_shim)
        init.exec_command(calls, plan)
    except OSError as exc:
        if init_image >= 0:  # orch-init itself: not the command's fault
            exc.add_note("exec orch-init")
            _fail(to_shim, "setup", exc)
        _send(to_shim, {"stage": "exec", "errno": exc.errno or errno.EIO})
        return init.exec_failure(plan.argv[0], exc)[0]


def _fail(to_shim: int, stage: str, exc: OSError) -> NoReturn:
    notes = "; ".join(getattr(exc, "__notes__", []))
    _send(to_shim, {"stage": stage, "message": f"{notes}: {exc}"})
    os._exit(1)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a start failed."""

    stage: str  # "setup" | "exec" | "shim"
    message: str
    status: int | None = None  # the container's wait status when the failure decides it (exec)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _handshake(
    cg: CgroupDriver,
    spec: ShimSpec,
    child: int,
    to_child: int,
    msgs: _Reader,
    fds: tuple[int, int],
    secrets: SecretPayload,
) -> Failure | None:
    """Drive the child from fork to exec; None once the command runs."""
    report, go = fds
    # The child's mounts already run (on another CPU) while a cgroup v1 attach may wait for
    # an RCU grace period. The child only unshares its cgroup namespace and execs after "G",
    # which is sent after the attach.
    cg.add_process(spec.cgroup_path, child)
    first = os.read(msgs.fd, 1)
    if first != b"R":
        msgs.buf = first
        failed = msgs.message() or {"message": "container init died"}
        return Failure("setup", str(failed.get("message")))
    if spec.netns_hook:  # else nobody waits for the netns: on to exec at once
        _send(report, {"event": "netns", "pid": child})
        if os.read(go, 16).strip() != b"go":
            return Failure("setup", "start aborted by the runtime")
    _write_all(to_child, b"G" + _frame(secrets))
    # Byte by byte: whatever follows (orch-init's last line) is for orch-shim, after our exec.
    line = _read_line(msgs.fd)
    msg = json.loads(line) if line.strip() else {}
    if not isinstance(msg, dict) or "stage" not in msg:
        return None  # EOF: the command was exec'd; {}: orch-init started it
    if msg["stage"] == "exec":
        err = int(msg.get("errno", errno.EIO))
        code, message = init.exec_failure(spec.config.argv[0], OSError(err, os.strerror(err)))
        return Failure("exec", message, code << 8)
    return Failure(str(msg["stage"]), str(msg.get("message", "")))


def _pump(child: int, outputs: dict[int, str], writer: LogWriter) -> None:
    """Copy the container's output into the log until PID 1 has ended and the pipes are drained."""
    pidfd = os.pidfd_open(child)
    deadline = None
    try:
        while outputs:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([*outputs, pidfd], [], [], timeout)
            if not ready:
                break
            for fd in ready:
                if fd == pidfd:
                    deadline = deadline or time.monotonic() + _DRAIN_AFTER_EXIT
                    continue
                data = os.read(fd, 65536)
                writer.write(outputs[fd], data)
                if not data:
                    os.close(fd)
                    del outputs[fd]
    finally:
        os.close(pidfd)
        for fd in outputs:
            os.close(fd)
        writer.close()


def _exit_status(child: int, msgs: _Reader, reaper: bool) -> int:
    """The container's wait status, once its output is drained: the command's, as the reaper
    reports it, or PID 1's own (init=False, or the reaper was killed before it could report).

    A reaper that was alone in its pid namespace has closed its end of the log pipes and is
    only exiting: its kernel teardown (~3-5 ms) is not waited for here; remove() waits for it.
    """
    final = None
    if reaper:
        with contextlib.suppress(ValueError):
            final = msgs.message()  # EOF (None) at the latest when PID 1 has exited
    if final and "status" in final and final.get("alone"):
        return int(final["status"])
    status = os.waitpid(child, 0)[1]
    if final and "status" in final and not os.WIFSIGNALED(status):
        return int(final["status"])
    return status


@dataclass(frozen=True, slots=True)
class Pid1:
    """The container's PID 1 as its shim holds it: the pid and the shim's ends of its pipes."""

    pid: int
    out: int  # the container's stdout, read end
    err: int  # its stderr, read end
    to_child: int  # "G" (and, to a pre-staged PID 1, its container dir)
    from_child: int  # "R", then JSON lines


def _fork_pid1(run: Callable[[tuple[int, int], tuple[int, int]], NoReturn]) -> Pid1:
    """Fork PID 1 of a new pid namespace; it runs run((stdout, stderr), (from_shim, to_shim))."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    # CLONE_NEWPID affects only children: the next fork becomes PID 1.
    LinuxSyscalls().unshare(CLONE_NEWPID)
    child = os.fork()
    if child == 0:
        for fd in (to_child_w, from_child_r, out_r, err_r):  # EOF must reach the child
            os.close(fd)
        run((out_w, err_w), (to_child_r, from_child_w))
    for fd in (out_w, err_w, to_child_r, from_child_w):
        os.close(fd)
    return Pid1(child, out_r, err_r, to_child_w, from_child_r)


def fork_staged(stage_dir: str, init_image: int) -> Pid1:
    """In a spare shim, before its request: a PID 1 that stages its mounts (staged.py)."""
    return _fork_pid1(lambda stdio, pipes: _staged_child(stage_dir, stdio, pipes, init_image))


def _fork_unstaged(spec: ShimSpec, cdir: ContainerDir, fds: tuple[int, int], init_image: int) -> Pid1:
    # Before the pid namespace: creating it forks, and that fork must not become PID 1.
    userns_fd = userns.create(spec.userns_host_id) if spec.userns_host_id >= 0 else -1

    def run(stdio: tuple[int, int], pipes: tuple[int, int]) -> NoReturn:
        for fd in fds:
            os.close(fd)
        _child(spec, cdir, stdio, pipes, (userns_fd, init_image))

    pid1 = _fork_pid1(run)
    if userns_fd >= 0:
        os.close(userns_fd)
    return pid1


def _supervise(
    cdir: ContainerDir,
    fds: tuple[int, int],
    staged_pid1: Pid1 | None,
    init_image: int,
    secrets: SecretPayload,
) -> int:
    report = fds[0]
    if staged_pid1 is not None:  # first of all: it reads the spec and mounts meanwhile
        os.write(staged_pid1.to_child, f"{cdir.path}\n".encode())
    spec = ShimSpec.from_json(read_json(cdir.spec) or {})
    cg = driver_for(spec.cgroup_driver, spec.cgroup_root)
    if staged_pid1 is None and spec.config.init and init_image < 0:  # python -m node.runtime.shim
        init_image = native.sealed_copy(Path(spec.native.init))
    pid1 = staged_pid1 or _fork_unstaged(spec, cdir, fds, init_image)
    child, to_child_w, from_child_r = pid1.pid, pid1.to_child, pid1.from_child
    shim = {"shim_pid": os.getpid(), "shim_start": proc_start_time(os.getpid())}
    start: dict[str, Any] = {**shim, "pid": child, "pid_start": proc_start_time(child), "started_at": None}
    start["staged"] = staged_pid1 is not None  # which path PID 1 took (staged.py), for tests and post-mortems
    write_json_atomic(cdir.start, start)
    msgs = _Reader(from_child_r)
    try:
        failure = _handshake(cg, spec, child, to_child_w, msgs, fds, secrets)
    except Exception as exc:  # e.g. a cgroup write failed: the container must not run unconfined
        failure = Failure("shim", f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    os.close(to_child_w)  # EOF makes a child still waiting for "G" exit without exec
    if failure is None:
        write_json_atomic(cdir.start, {**start, "started_at": time.time()})
        _create_log(spec.config.log_path)
        _send(report, {"event": "started"})
        os.close(report)
        _exec_orch_shim(spec, cdir, pid1, cg)  # returns only if it could not
    # After the fork: the log file is never PID 1's to write to, not even for a moment.
    c = spec.config
    _pump(child, {pid1.out: "stdout", pid1.err: "stderr"}, LogWriter(c.log_path, c.log_max_bytes, c.log_max_files))
    status = _exit_status(child, msgs, c.init and failure is None)
    if failure is not None and failure.status is not None:
        status = failure.status
    os.close(from_child_r)
    error = failure.message if failure is not None else ""
    write_json_atomic(cdir.exit, exit_record(status, cg.oom_killed(spec.cgroup_path), error))
    if failure is not None:
        _send(report, {"event": "start_failed", "stage": failure.stage, "message": failure.message})
    return 0


def _create_log(path: Path) -> None:
    """Before "started": Running means the log exists, for whoever reads it then (orch-shim
    opens it only after its exec, which a loaded host can delay past the status write)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640))
    except OSError:
        traceback.print_exc()  # shim.log; the log's writer says so again when it opens it


def _exec_orch_shim(spec: ShimSpec, cdir: ContainerDir, pid1: Pid1, cg: CgroupDriver) -> None:
    """Become orch-shim (native/orch-shim.c), which copies the logs, waits and writes exit.json;
    returns only if the exec failed (then this Python shim does all that itself)."""
    c = spec.config
    reports = pid1.from_child if c.init else -1  # orch-init's last line: the command's status
    argv = [f"orch-shim {cdir.path}", "--pid", str(pid1.pid), "--stdout", str(pid1.out), "--stderr", str(pid1.err),
            "--reports", str(reports), "--log", str(c.log_path), "--log-max-bytes", str(max(1, c.log_max_bytes)),
            "--log-max-files", str(min(max(1, c.log_max_files), 1000)),
            "--oom-file", str(cg.oom_file(spec.cgroup_path)), "--exit", str(cdir.exit)]  # fmt: skip
    try:
        for fd in (pid1.out, pid1.err, reports):
            if fd >= 0:
                os.set_inheritable(fd, True)
        sys.stderr.flush()
        os.execv(spec.native.shim, argv)
    except OSError:
        traceback.print_exc()  # shim.log; the Python pump below takes over


def run_detached(cdir: ContainerDir, report: int, go: int) -> NoReturn:
    """Fork the shim off (the caller reaps the intermediate at once) and supervise; never returns."""
    if os.fork() != 0:
        os._exit(0)
    supervise(cdir, report, go)


def supervise(
    cdir: ContainerDir,
    report: int,
    go: int,
    staged_pid1: Pid1 | None = None,
    init_image: int = -1,
    secrets: SecretPayload | None = None,
) -> NoReturn:
    """The shim's life, in an already detached process; never returns.

    staged_pid1: the PID 1 a spare shim forked ahead of time (fork_staged), else one is forked now.
    init_image: orch-init's sealed memfd (the zygote's, shared by every container); -1: made here
    when the container asks for init.
    """
    set_process_title(f"orch-shim {cdir.path}")
    for fd in (report, go):
        os.set_inheritable(fd, False)  # must not leak into the container
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = 1
    try:
        code = _supervise(cdir, (report, go), staged_pid1, init_image, secrets or SecretPayload())
    except BaseException as exc:
        traceback.print_exc()
        _send(report, {"event": "shim_error", "message": f"{type(exc).__name__}: {exc}"})
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> int:
    # Detach: the Runtime reaps the intermediate at once; the shim is re-parented
    # to init (or a subreaper) and survives the agent.
    run_detached(ContainerDir(Path(argv[1])), int(argv[2]), int(argv[3]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
