"""The Runtime: start, observe, stop and remove containers, each run by its own shim.

All container state lives in files under state_dir (see layout.py) and in
/proc, so any Runtime object, in any process, sees the same containers: an
agent restarted after a crash adopts what its predecessor started.

A start that fails, at any step, leaves nothing behind: start() kills what ran of
it and removes its cgroup and files before it raises. A start whose runtime died
with it (no live shim, nobody holding the start lock) reads as EXITED, so it can
always be removed; so does a container whose state files were unreadable
(layout.read_json sets them aside).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from node.runtime import native, procs, staged, userns
from node.runtime.cgroups import CgroupDriver, CgroupStats, Limits, driver_for
from node.runtime.cgroups.placement import Supervisors
from node.runtime.errors import ContainerError, NotFound, NotRunning, RuntimeStartError
from node.runtime.exec_client import ExecProcess, start_exec
from node.runtime.exec_request import ExecRequest
from node.runtime.exits import normalized
from node.runtime.layout import (
    ContainerDir,
    read_json,
    set_aside_files,
    start_in_progress,
    start_lock,
    write_json_atomic,
)
from node.runtime.model import ContainerConfig, ContainerState, ContainerStatus, valid_id
from node.runtime.seccomp import DEFAULT_PROFILE, FilterCache, load_profile
from node.runtime.secret_mounts import SecretPayload, check_files
from node.runtime.security import DEFAULT_CAPS, resolve_user
from node.runtime.shim_client import Zygote, run_shim
from node.runtime.spec import ShimSpec
from orch.trees import remove_tree
from orch.volumes import mount_path_problem

__all__ = ["Runtime"]

log = logging.getLogger(__name__)
_SHIM_EXIT_TIMEOUT = 10.0  # s: the shim writes exit.json right after the container ends


class Runtime:
    """use_zygote=False starts each shim as a fresh `python -m node.runtime.shim` (~80 ms slower).

    userns_ids: the host ids handed out, 65536 per container, to containers with
    user_namespace=True.

    seccomp_profile: the profile (Docker's JSON format) of containers with seccomp="default";
    its compiled filters are kept in <state_dir>/.seccomp. Raises ProfileError for a bad one.

    supervisors: the cgroup of the zygote and the shims (a systemd scope, cgroups/placement.py),
    which then also holds cgroup_parent; None: they stay in the caller's cgroup.
    """

    def __init__(
        self,
        state_dir: Path,
        cgroup_parent: str,
        *,
        cgroups: CgroupDriver | None = None,
        use_zygote: bool = True,
        userns_ids: userns.IdRange = userns.DEFAULT_RANGE,
        seccomp_profile: Path = DEFAULT_PROFILE,
        supervisors: Supervisors | None = None,
    ) -> None:
        if supervisors is not None and not use_zygote:
            raise ValueError("a supervisors' cgroup needs the zygote: it is what moves the shims there")
        self.state_dir = Path(state_dir)
        self.cgroup_parent = cgroup_parent.strip("/")
        self._cg = cgroups if cgroups is not None else driver_for()
        self._supervisors = supervisors
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)  # spec.json holds the apps' env: root only (layout.py)
        self._native: native.NativeBinaries | None = None
        init_binary = lambda: self.native.init  # noqa: E731  (built when the zygote first starts)
        self._zygote = Zygote(self.state_dir, supervisors, self._cg.root, init_binary) if use_zygote else None
        self._userns_ids = userns_ids
        self._userns_lock = threading.Lock()
        self._userns_pending: dict[str, int] = {}  # id -> host id, until its spec.json exists
        # ".seccomp" is no container id (not a DNS label), so list() and the sweeps skip it.
        self._seccomp = FilterCache(load_profile(seccomp_profile), self.state_dir / ".seccomp")

    @property
    def native(self) -> native.NativeBinaries:
        """orch-shim and orch-init (native.py), compiled into <state_dir>/.native on first use.
        Raises NativeBuildError (no compiler, a failed compile): call it early to fail early."""
        if self._native is None:
            self._native = native.build(self.state_dir / ".native")
        return self._native

    def warm(self) -> None:
        """Do now what a fresh node's first start would otherwise wait for: start the zygote (a
        Python start, its imports and a pre-staged spare) and resolve the seccomp filter of the
        default capabilities (each process resolves a profile once per capability set); together
        0.2-0.6 s here. Idempotent; blocking. What fails here is the first start's error too."""
        if self._zygote is not None:
            self._zygote.start()
        self._seccomp.program_for(DEFAULT_CAPS)

    # -- paths ---------------------------------------------------------------

    def _dir(self, id: str) -> ContainerDir:
        cdir = ContainerDir(self.state_dir / id)
        if not valid_id(id) or not cdir.path.is_dir():
            raise NotFound(id, self.state_dir)
        return cdir

    def _cgroup(self, id: str) -> str:
        return f"{self.cgroup_parent}/{id}"

    # -- start ---------------------------------------------------------------

    def start(self, config: ContainerConfig, on_netns: Callable[[int], object] | None = None) -> ContainerState:
        """Blocks until the command was exec'd (RUNNING) or could not be (EXITED, StartError).

        on_netns(pid) runs once the container's network namespace exists (/proc/<pid>/ns/net),
        before the command is exec'd; if it returns an ip string, /etc/hosts maps the
        container's hostname to it.
        """
        cdir, lock = self._prepare(config, netns_hook=on_netns is not None)

        def netns_hook(pid: int) -> None:
            ip = on_netns(pid) if on_netns is not None else None
            if isinstance(ip, str) and ip:
                _rewrite_in_place(cdir.path / "hosts", hosts_file(config, ip))

        # Without on_netns the shim sends "G" itself: no round trip through us (~1 ms).
        hook = netns_hook if on_netns is not None else None
        try:
            secrets = SecretPayload(config.secret_env, config.secret_mounts)
            run_shim(cdir, hook, self._zygote, staged.usable(config.user_namespace, bool(config.mounts)), secrets)
        except BaseException:
            self._discard(config.id)
            raise
        finally:
            os.close(lock)
        return self.state(config.id)

    def _prepare(self, config: ContainerConfig, netns_hook: bool = True) -> tuple[ContainerDir, int]:
        """Validate, then create the state dir and the cgroup (limits applied). Raises RuntimeStartError.

        Returns the container dir and its start lock (layout.start_lock), held until start() ends."""
        id = config.id
        if not valid_id(id):
            raise RuntimeStartError("container id must be a DNS-1123 label", id=id)
        if not config.argv or not config.argv[0]:
            raise RuntimeStartError("empty argv", id=id)
        if not config.rootfs.is_dir():
            raise RuntimeStartError(f"rootfs {config.rootfs} is not a directory", id=id)
        for mount in config.mounts:  # the agent checked them; a Runtime is used on its own too
            problem = mount_path_problem(mount.target) or ("" if mount.root.is_absolute() else "its root is relative")
            if problem:
                raise RuntimeStartError(f"volume mount {mount.target!r}: {problem}", id=id)
        for secret in config.secret_mounts:  # PID 1 checks the files again before writing any
            if why := mount_path_problem(secret.target) or check_files(secret):
                raise RuntimeStartError(f"secret volume mount {secret.target!r}: {why}", id=id)
        cdir = ContainerDir(self.state_dir / id)
        for path in (config.rootfs, *config.lower_dirs, cdir.path):  # overlay options are split on ',' and ':'
            if "," in str(path) or ":" in str(path):
                raise RuntimeStartError(f"path {path} contains ',' or ':'", id=id)
        try:
            cdir.path.mkdir(mode=0o700)
        except FileExistsError:
            raise RuntimeStartError(f"{cdir.path} exists: remove the old container first", id=id) from None
        lock = start_lock(cdir)
        try:
            if self._supervisors is not None and self._zygote is not None:
                self._zygote.ensure_running()  # it keeps the scope that holds cgroup_parent alive
            limits = Limits(config.cpu_millis, config.memory_bytes, config.pids)
            self._cg.create(self._cgroup(id), limits)
            # The shim's attach comes a few ms from now and its RCU grace period (~5-10 ms) is
            # the longest wait of a start: it begins here, first of all, in the background
            # (after create: the warm-up holds cgroup_mutex while it waits, which mkdir needs too).
            self._cg.warm_attach()
            host_id = self._reserve_userns(id) if config.user_namespace else -1
            for sub in (cdir.upper, cdir.work, cdir.rootfs):
                sub.mkdir()
            if host_id >= 0:  # the overlay's root directory is the upper's: owned by container root
                os.chown(cdir.upper, host_id, host_id)
            spec = ShimSpec.resolve(
                config, self._cg.name, self._cg.root, self._cgroup(id), host_id, netns_hook, self._seccomp, self.native
            )
            _write_etc_files(cdir, config)
            write_json_atomic(cdir.spec, spec.to_json())
        except (OSError, ValueError, ContainerError) as exc:
            self._remove_files(id)
            os.close(lock)
            raise RuntimeStartError(f"prepare: {exc}", id=id) from exc
        finally:
            with self._userns_lock:
                self._userns_pending.pop(id, None)  # now in spec.json, or not needed
        return cdir, lock

    def _reserve_userns(self, id: str) -> int:
        """A block of host ids no other container of this state dir holds (until it is removed)."""
        with self._userns_lock:
            in_use = set(self._userns_pending.values())
            for entry in os.scandir(self.state_dir):
                with contextlib.suppress(OSError, ValueError):  # not a container, or a torn spec
                    userns_spec = (read_json(Path(entry.path) / "spec.json") or {}).get("userns") or {}
                    in_use.add(int(userns_spec.get("host_id", -1)))
            host_id = userns.allocate(self._userns_ids, in_use)
            if host_id is None:
                blocks = self._userns_ids.count // userns.IDS_PER_CONTAINER
                raise ContainerError(f"all {blocks} user namespace id blocks are in use")
            self._userns_pending[id] = host_id
            return host_id

    def _discard(self, id: str) -> None:
        """Undo a failed start, whatever step it failed at: kill what runs of it, remove its
        cgroup and files. The original error is what the caller sees; this one is logged."""
        try:
            self._remove_remains(id)
        except Exception as exc:
            log.warning("container %s: cleaning up after its failed start: %s", id, exc)

    # -- observe -------------------------------------------------------------

    def state(self, id: str) -> ContainerState:
        cdir = self._dir(id)
        spec_ok = read_json(cdir.spec) is not None
        start = read_json(cdir.start) or {}
        ended = read_json(cdir.exit)
        if ended is not None:
            return _exited(id, start, ended)
        pid, started_at = start.get("pid"), start.get("started_at")
        status = ContainerStatus.RUNNING if started_at else ContainerStatus.CREATED
        alive = procs.is_alive(pid, start.get("pid_start")) or procs.is_alive(
            start.get("shim_pid"), start.get("shim_start")
        )
        if alive and spec_ok:  # without its spec the runtime cannot manage it: lost (below)
            return ContainerState(id, status, pid, None, False, started_at, None, "", "")
        if start_in_progress(cdir):  # spec.json may not even be written yet
            return ContainerState(id, ContainerStatus.CREATED, None, None, False, None, None, "", "")
        if (ended := read_json(cdir.exit)) is not None:  # the shim finished meanwhile
            return _exited(id, start, ended)
        return _exited(id, start, _lost(cdir, start))

    def list(self) -> list[ContainerState]:
        states = []
        for entry in sorted(os.scandir(self.state_dir), key=lambda e: e.name):
            with contextlib.suppress(NotFound):
                states.append(self.state(entry.name))
        return states

    def exit_fd(self, id: str) -> int:
        """A pidfd of the shim (readable once it wrote exit.json and exited); caller closes it."""
        cdir = self._dir(id)
        start = read_json(cdir.start) or {}
        if cdir.exit.exists():
            return procs.ended_fd()
        fd = procs.open_pidfd(start.get("shim_pid"), start.get("shim_start"))
        return fd if fd is not None else procs.ended_fd()

    def stats(self, id: str) -> CgroupStats:
        """cgroup usage (cpu ns, memory bytes, pids) for metrics; zeros once the cgroup is gone."""
        self._dir(id)
        return self._cg.stats(self._cgroup(id))

    # -- exec ----------------------------------------------------------------

    def exec(
        self,
        id: str,
        argv: Sequence[str],
        *,
        tty: bool = False,
        stdin: bool = False,
        output: bool = True,
        env: Mapping[str, str] | None = None,
        user: str = "",
        workdir: str = "",
        size: tuple[int, int] = (24, 80),
    ) -> ExecProcess:
        """Run argv in the running container as `runc exec` does (exec_helper.py): all its
        namespaces, its cgroup, and what its PID 1 applied before exec (rlimits, user,
        capabilities, no_new_privs, ...). user: "" for the container's, else as in ContainerConfig.
        Returns once the command was forked; raises NotFound, NotRunning or ContainerError."""
        cdir = self._dir(id)
        if not argv or not argv[0]:
            raise ContainerError("exec: empty command", id=id)
        if self.state(id).status is not ContainerStatus.RUNNING:
            raise NotRunning(id)
        try:
            config = ShimSpec.from_json(read_json(cdir.spec) or {}).config
            identity = resolve_user(config.lower_dirs or (config.rootfs,), user) if user else None
        except (OSError, ValueError, KeyError) as exc:
            raise ContainerError(f"exec: {exc}", id=id) from exc
        request = ExecRequest(tuple(argv), dict(env or {}), identity, workdir, tty, size)
        return start_exec(cdir, request, stdin=stdin, output=output)

    # -- stop ----------------------------------------------------------------

    def kill(self, id: str, sig: int) -> None:
        """Signal PID 1 of the container; a container that has ended is not an error."""
        start = read_json(self._dir(id).start) or {}
        fd = procs.open_pidfd(start.get("pid"), start.get("pid_start"))
        if fd is None:
            return
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)

    def stop(self, id: str, grace: float) -> ContainerState:
        cdir = self._dir(id)
        start = read_json(cdir.start) or {}
        if not cdir.exit.exists():
            pidfd = procs.open_pidfd(start.get("pid"), start.get("pid_start"))
            if pidfd is not None:
                try:
                    if grace > 0:
                        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                    if grace <= 0 or not procs.wait_fd(pidfd, grace):
                        self._kill(pidfd, id)
                finally:
                    os.close(pidfd)
            self._wait_shim(id)
        return self.state(id)

    def _kill(self, pidfd: int, id: str) -> None:
        """SIGKILL PID 1 and everything in the container's cgroup (PID 1 of a start that is
        still in its setup may not be in the cgroup yet)."""
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if self._cg.exists(self._cgroup(id)):
            self._cg.kill_all(self._cgroup(id))

    def _wait_shim(self, id: str) -> None:
        """Until the shim process is gone (it exits right after writing exit.json)."""
        start = read_json(ContainerDir(self.state_dir / id).start) or {}
        procs.wait_gone(start.get("shim_pid"), start.get("shim_start"), _SHIM_EXIT_TIMEOUT)

    # -- remove --------------------------------------------------------------

    def remove(self, id: str) -> None:
        """Remove an exited container's cgroup and files. A missing container is success.

        Exited includes a start that failed or died half-way and a container whose state
        was lost: whatever still runs of those is killed first."""
        try:
            state = self.state(id)
        except NotFound:
            self._remove_files(id)
            return
        if state.status is not ContainerStatus.EXITED:
            raise ContainerError(f"cannot remove a {state.status.value} container; stop it first", id=id)
        self._remove_remains(id)

    def _remove_remains(self, id: str) -> None:
        """Kill what is left of the container (PID 1, its cgroup), wait for its shim and PID 1
        to be gone (nothing of it may outlive remove()), then remove its cgroup and files."""
        cdir = ContainerDir(self.state_dir / id)
        start = read_json(cdir.start) or {}
        pidfd = procs.open_pidfd(start.get("pid"), start.get("pid_start"))
        if pidfd is not None:
            try:
                self._kill(pidfd, id)
            finally:
                os.close(pidfd)
        elif self._cg.exists(self._cgroup(id)) and self._cg.populated(self._cgroup(id)):
            self._cg.kill_all(self._cgroup(id))  # PID 1 unknown (start.json lost)
        shims = [(start["shim_pid"], start.get("shim_start"))] if "shim_pid" in start else procs.shims_of(cdir.path)
        for shim_pid, shim_start in shims:
            procs.wait_gone(shim_pid, shim_start, _SHIM_EXIT_TIMEOUT)
        # A reaper PID 1 left alone may still be in its kernel exit (the shim does not wait
        # for that, see orch-shim.c end_status): its mounts and namespaces go with it.
        procs.wait_gone(start.get("pid"), start.get("pid_start"), _SHIM_EXIT_TIMEOUT)
        self._remove_files(id)

    def _remove_files(self, id: str) -> None:
        path = self._cgroup(id)
        if self._cg.exists(path):
            if self._cg.populated(path):  # strays, e.g. after a shim died
                self._cg.kill_all(path)
            self._cg.remove(path)
        remove_tree(self.state_dir / id)  # its upper/ is shaped by the container: any depth

    def remove_unknown(self, keep: set[str]) -> builtins.list[str]:
        """Remove leftovers after an agent restart: exited containers not in `keep` (state dir and
        cgroup), and cgroups under cgroup_parent that have no state dir. Running containers are
        never touched, whatever `keep` says: stop them first. Returns the removed ids."""
        removed = []
        for st in self.list():
            if st.id not in keep and st.status is ContainerStatus.EXITED:
                with _logged(f"removing leftover container {st.id}"):
                    self.remove(st.id)
                    removed.append(st.id)
        for name in self._cg.children(self.cgroup_parent):
            if not (self.state_dir / name).exists() and valid_id(name):
                with _logged(f"removing leftover cgroup {name}"):
                    self._remove_files(name)
                    removed.append(name)
        return removed

    def cleanup_all(self) -> None:
        """Stop (grace 0) and remove every container, orphaned cgroups too, the compiled seccomp
        filters and C programs, then the parent cgroups."""
        errors: list[str] = []
        for st in self.list():
            try:
                self.stop(st.id, 0)
                self.remove(st.id)
            except Exception as exc:  # one container must not keep the others: on to the next
                errors.append(f"{st.id}: {exc}")
        for name in self._cg.children(self.cgroup_parent):  # cgroups whose state dir is gone
            try:
                self._remove_files(name)
            except Exception as exc:
                errors.append(f"cgroup {name}: {exc}")
        if self._zygote is not None:
            self._zygote.stop()
        for built in (self._seccomp.directory, self.state_dir / ".native"):  # rebuilt when needed
            try:
                remove_tree(built)
            except OSError as exc:
                errors.append(f"{built}: {exc}")
        base = 0  # cgroupfs: every level of cgroup_parent is ours; systemd: those below the scope
        if (sup := self._supervisors) is not None:
            base = len(Path(sup.scope_path).parts)
            if self._cg.populated(sup.path):  # spare shims of the zygote killed just now
                self._cg.kill_all(sup.path)
            self._cg.remove(sup.path)  # gone is fine: systemd trims the scope once it is empty
        parts = Path(self.cgroup_parent).parts
        for depth in range(len(parts), base, -1):
            parent = "/".join(parts[:depth])
            if self._cg.children(parent):  # e.g. another node's cgroups under "orch"
                break
            self._cg.remove(parent)
        if errors:
            raise ContainerError("cleanup_all: " + "; ".join(errors))


def hosts_file(config: ContainerConfig, ip: str = "") -> str:
    """/etc/hosts: localhost, the container's own name (on ip, else 127.0.1.1), then config.hosts."""
    name = config.hostname or config.id
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"{ip or '127.0.1.1'}\t{name}"]
    lines += [f"{addr}\t{host}" for host, addr in config.hosts.items()]
    return "\n".join(lines) + "\n"


def _resolv_conf(config: ContainerConfig, host: Path = Path("/etc/resolv.conf")) -> str:
    if config.resolv_conf:
        return config.resolv_conf
    if config.dns:
        return "".join(f"nameserver {ns}\n" for ns in config.dns)
    try:
        return host.read_text()
    except OSError:
        return ""


def _write_etc_files(cdir: ContainerDir, config: ContainerConfig) -> None:
    files = cdir.etc
    files["/etc/hostname"].write_text(f"{config.hostname or config.id}\n")
    files["/etc/hosts"].write_text(hosts_file(config))
    files["/etc/resolv.conf"].write_text(_resolv_conf(config))


def _rewrite_in_place(path: Path, text: str) -> None:
    """Same inode: the container's read-only bind mount of the file sees the new content."""
    with open(path, "r+") as f:
        f.write(text)
        f.truncate()


def _lost(cdir: ContainerDir, start: dict[str, Any]) -> dict[str, Any]:
    """The exit record of a container with no exit.json, no live shim and no start in progress."""
    if set_aside := set_aside_files(cdir.path):
        message = f"its state was unreadable and set aside ({', '.join(set_aside)} in {cdir.path}); exit status unknown"
        return {"reason": "StateLost", "message": message}
    if not start:
        return {"reason": "StartError", "message": "the start did not complete: the runtime starting it has gone"}
    return {"reason": "Error", "message": "shim died; exit status unknown"}


def _exited(id: str, start: dict[str, Any], ended: dict[str, Any]) -> ContainerState:
    ended = normalized(ended)
    return ContainerState(
        id=id,
        status=ContainerStatus.EXITED,
        pid=start.get("pid"),
        exit_code=ended.get("exit_code"),
        oom_killed=bool(ended.get("oom_killed", False)),
        started_at=start.get("started_at"),
        finished_at=ended.get("finished_at"),
        reason=str(ended.get("reason", "")),
        message=str(ended.get("message", "")),
    )


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """One item of a sweep: its failure is logged, and the sweep goes on with the next."""
    try:
        yield
    except Exception as exc:
        log.warning("%s: %s", what, exc)
