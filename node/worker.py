"""One asyncio task per instance: start → wait for exit → restart per policy
→ stop. A stop request is never overwritten by later updates.

An unexpected error in the worker itself (a bug, a surprise from the host) is
retried with capped backoff, adopting whatever container the failed attempt
left; after AGENT_ERROR_LIMIT quick failures in a row the instance is given up
as Failed/AgentError, which the scheduler replaces on another node.

Blocking runtime and network calls run in threads: starts and stops on the loop's default
executor, probes and image pulls on pools of their own (WorkerDeps), so a slow probe or pull
never holds a thread a start or a stop needs. Waits are on the loop, not in a thread: an exit
is a pidfd registered with the event loop (an idle instance costs nothing), and so is a stop's
grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from node.images import ImageError, ImageStore, PreparedImage, effective_process
from node.network import HostPortNotAllowed, NetworkError, NodeNetwork, PortMapping
from node.probe_loop import run_probes
from node.probe_state import Restart
from node.restarts import RestartTracker
from node.runtime import ContainerConfig, ContainerError, ContainerState, ContainerStatus, NotFound, Runtime
from node.runtime.logs import keep_previous, log_file
from node.runtime.model import DEFAULT_PATH, SECCOMP_DEFAULT, Mount, SecretMount
from node.secret_env import Lookup, SecretEnvError, secret_env
from node.secret_volumes import secret_mounts
from node.volumes import NodeVolumes, VolumeError
from orch.v1 import types_pb2 as pb
from orch.validation import PROBES

log = logging.getLogger(__name__)

Report = Callable[[pb.Instance, pb.InstanceStatus], None]
AGENT_ERROR_LIMIT = 5  # worker failures in a row before the instance is given up
AGENT_ERROR_BACKOFF = (1.0, 30.0)  # first and longest wait between those attempts
# pids.max of a container whose app sets no resources.pids (`orch node --default-pids-limit`): a fork
# bomb stays in its container. Not part of the app's spec, so the scheduler's accounting is unchanged.
DEFAULT_PIDS_LIMIT = 4096
FENCED_REASON = "NodeLost"  # killed by its own agent: the node's lease may have expired
VOLUME_CHECK_INTERVAL = 5.0  # s between measurements of disk emptyDirs that have a sizeLimit


@dataclass(frozen=True, slots=True)
class WorkerDeps:
    runtime: Runtime
    network: NodeNetwork | None
    images: ImageStore
    log_dir: Path
    report: Report
    default_pids: int = DEFAULT_PIDS_LIMIT  # 0: unlimited
    started: Callable[[str], None] = lambda app: None  # an instance of app is given to this node (metrics)
    exited: Callable[[str, str], None] = lambda app, reason: None  # its main process exited, and why
    resolv_conf: Callable[[str], str] | None = None  # app -> its containers' resolv.conf (node/dns)
    secrets: Lookup = lambda name: None  # the latest desired set's opened secrets (in memory only)
    # Bounded pools of their own (the agent's); None: the loop's default executor.
    probes: Executor | None = None
    pulls: Executor | None = None
    volumes: NodeVolumes | None = None  # None: no volumes here (an app with some fails to start)


def container_config(
    inst: pb.Instance,
    image: PreparedImage,
    log_dir: Path,
    default_pids: int = DEFAULT_PIDS_LIMIT,
    resolv_conf: str = "",
    secrets: Mapping[str, str] | None = None,
    mounts: tuple[Mount, ...] = (),
    secret_files: tuple[SecretMount, ...] = (),
) -> ContainerConfig:
    """The instance's spec over the image's defaults (Docker's rules) and the node's default limits."""
    spec = inst.spec
    process = effective_process(
        image.config, list(spec.command), list(spec.args), dict(spec.env), spec.working_dir or None, spec.user or None
    )
    env = dict(process.env)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", inst.name)
    return ContainerConfig(
        id=inst.name,
        rootfs=image.lower_dirs[0],
        lower_dirs=image.lower_dirs,
        argv=process.argv,
        env=env,
        log_path=log_file(log_dir, inst.name),
        hostname=inst.name,
        working_dir=process.working_dir or "/",
        user=process.user,
        cap_add=tuple(spec.capabilities.add),
        cap_drop=tuple(spec.capabilities.drop),
        read_only_rootfs=spec.read_only_root_fs,
        user_namespace=spec.user_namespace,
        seccomp=spec.seccomp or SECCOMP_DEFAULT,  # "unconfined"; the runtime refuses what it does not know
        init=spec.init,  # False: the command is PID 1, as under Docker
        cpu_millis=spec.resources.cpu_millis,
        memory_bytes=spec.resources.memory_bytes,
        pids=spec.resources.pids or default_pids,
        resolv_conf=resolv_conf,  # "": a copy of the host's (a node without a bridge)
        secret_env=dict(secrets or {}),  # never written to the node's disk (runtime/model.py)
        mounts=mounts,  # node/volumes.py: emptyDirs and allowed hostPaths
        secret_mounts=secret_files,  # node/secret_volumes.py: in memory only, like secret_env
    )


def exit_status(state: ContainerState, restarts: int) -> pb.InstanceStatus:
    code = state.exit_code if state.exit_code is not None else -1
    status = pb.InstanceStatus(
        state=pb.INSTANCE_STATE_SUCCEEDED if code == 0 else pb.INSTANCE_STATE_FAILED,
        reason=state.reason or ("Completed" if code == 0 else "Error"),
        message=state.message,
        exit_code=code,
        has_exit_code=True,
        restarts=restarts,
    )
    if state.finished_at:
        status.finished_at.FromNanoseconds(int(state.finished_at * 1e9))
    return status


class InstanceWorker:
    def __init__(self, inst: pb.Instance, deps: WorkerDeps, adopted: ContainerState | None = None) -> None:
        self.instance = inst
        self._deps = deps
        deps.started(inst.app)  # its exit counters exist before any exit
        self._adopted = adopted
        self._stop = asyncio.Event()
        self._tracker = RestartTracker(inst.spec.restart_policy)
        self._pulls = RestartTracker(pb.RESTART_POLICY_ALWAYS, initial=1.0, maximum=60.0)
        first, longest = AGENT_ERROR_BACKOFF
        self._errors = RestartTracker(pb.RESTART_POLICY_ALWAYS, initial=first, maximum=longest)
        self.status = pb.InstanceStatus(state=pb.INSTANCE_STATE_STARTING)
        self.ip = ""
        self._republish = False  # an adopted container's hostPorts, published again while it runs
        self.task: asyncio.Task[None] | None = None
        self.fenced = ""  # why it was killed for good (self-fencing); "" if it was not
        self._probe_restart: Restart | None = None  # a probe had the running container killed
        self._last: pb.Termination | None = None  # how the previous incarnation ended
        self.evicted = ""  # why the container was killed: an emptyDir over its sizeLimit

    def start(self, after: asyncio.Task[None] | None = None) -> None:
        """after: a previous worker of the same instance that is still stopping its container."""
        self.task = asyncio.create_task(self._run_after(after), name=f"worker-{self.instance.name}")

    async def _run_after(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait({previous})
            if self._stop.is_set():
                return  # removed again before it began: nothing of ours to tear down
        await self._run()

    def request_stop(self) -> None:
        self._stop.set()

    def fence(self, message: str) -> None:
        """Self-fencing (node/fencing.py): SIGKILL to PID 1 now, on the event loop (no thread, no
        grace period; the kernel kills the rest of its PID namespace), and never run again here:
        the teardown reports it Failed/NodeLost, and the scheduler replaces it."""
        if self.fenced:
            return
        self.fenced = message
        self._stop.set()
        try:
            self._deps.runtime.kill(self.instance.name, signal.SIGKILL)
        except (ContainerError, OSError) as e:  # the teardown kills again
            log.warning("instance %s: fencing kill failed: %s", self.instance.name, e)

    def _set(self, status: pb.InstanceStatus) -> None:
        status.ip = status.ip or self.ip
        status.restarts = self._tracker.restarts
        if self._last is not None:
            status.last_termination.CopyFrom(self._last)
        self.status = status
        self._deps.report(self.instance, status)

    async def _run(self) -> None:
        state = self._adopted  # a container found running (or exited) after an agent restart
        if state is not None and state.status is ContainerStatus.RUNNING and self._deps.network is not None:
            self.ip = await self._adopted_address(self._deps.network)  # in its first status report
            self._republish = bool(self._host_ports())  # beside its supervision (_wait_exit)
            if self._republish and not self.ip:
                log.warning(
                    "instance %s: no address in the IPAM state: its hostPorts stay unpublished", self.instance.name
                )
                self._republish = False
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    await self._supervise(state)
                except Exception as e:
                    log.exception("instance %s: worker failed", self.instance.name)
                    if not await self._after_agent_error(e, time.monotonic() - began):
                        await self._stop.wait()  # given up: the scheduler places a replacement
                    state = await self._existing()
        finally:
            if self._stop.is_set():
                await self._teardown()

    async def _supervise(self, state: ContainerState | None) -> None:
        """Keeps the container running per its restart policy until a stop is requested."""
        while not self._stop.is_set():
            if state is None:
                state = await self._start()
                continue  # None after a failed start and its backoff
            if state.status == ContainerStatus.RUNNING:
                self._set(self._running_status(state))
                state = await self._wait_exit(state)
                if state is None:
                    return  # stop requested
            if not await self._after_exit(state):
                await self._stop.wait()  # finished for good; keep it until told to remove it
            state = None

    async def _after_agent_error(self, error: Exception, ran_for: float) -> bool:
        """Report and wait out the backoff. False: given up (Failed/AgentError)."""
        delay = self._errors.next(1, ran_for).delay or self._errors.initial
        what = f"{type(error).__name__}: {error}"
        if self._errors.failures >= AGENT_ERROR_LIMIT:
            message = f"gave up after {self._errors.failures} attempts: {what}"
            self._set(pb.InstanceStatus(state=pb.INSTANCE_STATE_FAILED, reason="AgentError", message=message))
            return False
        message = f"{what}; retrying in {delay:.0f}s"
        self._set(pb.InstanceStatus(state=pb.INSTANCE_STATE_FAILED, reason="AgentErrorBackOff", message=message))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=delay)
        return True

    async def _existing(self) -> ContainerState | None:
        """The container a failed attempt left, adopted as after an agent restart."""
        try:
            state = await asyncio.to_thread(self._deps.runtime.state, self.instance.name)
        except (ContainerError, OSError):  # NotFound: nothing to adopt
            return None
        return state if state.status in (ContainerStatus.RUNNING, ContainerStatus.EXITED) else None

    async def _start(self) -> ContainerState | None:
        inst = self.instance
        image = await self._pull()
        if image is None:
            return None
        self._set(pb.InstanceStatus(state=pb.INSTANCE_STATE_STARTING))
        try:
            deps = self._deps
            resolv = deps.resolv_conf(inst.app) if deps.resolv_conf else ""
            from_secrets = secret_env(inst.spec, deps.secrets)
            files = secret_mounts(inst.spec, deps.secrets)
            on_node = any(not v.HasField("secret") for v in inst.spec.volumes)  # secret ones: in the container
            mounts = await asyncio.to_thread(self._volumes().prepare, inst) if on_node else ()
            config = container_config(inst, image, deps.log_dir, deps.default_pids, resolv, from_secrets, mounts, files)
            if deps.network is not None:  # the node's own policy, whatever the scheduler sent
                await asyncio.to_thread(deps.network.check_host_ports, inst.name, self._host_ports())
            await asyncio.to_thread(self._remove_leftover)
            return await asyncio.to_thread(self._deps.runtime.start, config, self._on_netns)
        except (ContainerError, NetworkError, OSError, ValueError, VolumeError) as e:
            log.warning("instance %s: start failed: %s", inst.name, e)
            reason = e.reason if isinstance(e, HostPortNotAllowed | SecretEnvError | VolumeError) else "StartError"
            self._set(pb.InstanceStatus(state=pb.INSTANCE_STATE_FAILED, reason=reason, message=str(e)))
            await self._detach()  # a failed start holds no address and no hostPort
            return await self._backoff_or_none(1)

    def _volumes(self) -> NodeVolumes:
        if self._deps.volumes is None:
            raise VolumeError("FailedMount", "this node has no volume directory")
        return self._deps.volumes

    async def _watch_volumes(self) -> None:
        """Evicts the container once a disk emptyDir is over its sizeLimit (the kubelet's way)."""
        volumes, inst = self._deps.volumes, self.instance
        if volumes is None or not any(v.empty_dir.size_limit_bytes for v in inst.spec.volumes):
            return
        loop = asyncio.get_running_loop()
        while not self.evicted:
            await asyncio.sleep(VOLUME_CHECK_INTERVAL)
            self.evicted = await loop.run_in_executor(self._deps.probes, volumes.over_limit, inst)
        log.warning("instance %s: evicted: %s", inst.name, self.evicted)
        await asyncio.to_thread(self._deps.runtime.kill, inst.name, signal.SIGKILL)

    def _remove_leftover(self) -> None:
        """Whatever a previous attempt left of the container, in whatever state (blocking)."""
        runtime, name = self._deps.runtime, self.instance.name
        try:
            runtime.stop(name, 0)  # a start that died half-way may still have a live shim
        except NotFound:
            return
        runtime.remove(name)

    async def _pull(self) -> PreparedImage | None:
        """The image, pulled if needed; None after a failed pull and its backoff (or a stop)."""
        image = self.instance.spec.image
        images = self._deps.images
        loop = asyncio.get_running_loop()
        try:
            if not await loop.run_in_executor(self._deps.pulls, images.is_present, image):
                self._set(
                    pb.InstanceStatus(state=pb.INSTANCE_STATE_PULLING, reason="Pulling", message=f"pulling {image}")
                )
            prepared = await loop.run_in_executor(self._deps.pulls, images.prepare, image)
        except (ImageError, OSError) as e:
            log.warning("instance %s: %s", self.instance.name, e)
            delay = self._pulls.next(1, 0.0).delay or 1.0
            self._set(
                pb.InstanceStatus(
                    state=pb.INSTANCE_STATE_PULLING,
                    reason="ImagePullBackOff" if self._pulls.restarts > 1 else "ErrImagePull",
                    message=f"{e}; retrying in {delay:.0f}s",
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=delay)
            return None
        self._pulls = RestartTracker(pb.RESTART_POLICY_ALWAYS, initial=1.0, maximum=60.0)
        return prepared

    async def _backoff_or_none(self, code: int) -> ContainerState | None:
        decision = self._tracker.next(code, 0.0)
        if not decision.restart:
            await self._stop.wait()
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=max(decision.delay, 0.5))
        return None

    def _host_ports(self) -> list[PortMapping]:
        return [
            PortMapping(p.host_port, p.container_port, p.protocol or "tcp")
            for p in self.instance.spec.ports
            if p.host_port
        ]

    def _on_netns(self, pid: int) -> str | None:
        """Wires the container's network namespace; the IP goes into its /etc/hosts."""
        if self._deps.network is None:
            return None
        self.ip = self._deps.network.attach(self.instance.name, pid, self._host_ports()).ip
        return self.ip

    async def _adopted_address(self, network: NodeNetwork) -> str:
        """A container found running after an agent restart: its address, from the IPAM state."""
        try:
            return (await asyncio.to_thread(network.addresses)).get(self.instance.name, "")
        except NetworkError as e:
            log.warning("instance %s: reading its address: %s", self.instance.name, e)
            return ""

    async def _republish_host_ports(self, network: NodeNetwork, ran: asyncio.Event) -> None:
        """An adopted container's hostPorts published again (level-triggered: heals a lost or
        unreadable record), retried with backoff until it works (iptables starved) or `ran` is
        set: the container exited or the instance stops, and then nothing is published for it."""
        name, ports = self.instance.name, self._host_ports()
        delay, longest = AGENT_ERROR_BACKOFF
        while not ran.is_set():
            try:
                await asyncio.to_thread(network.host_ports.publish, name, self.ip, ports)
                return
            except (NetworkError, OSError) as e:  # a port refused now too (HostPortNotAllowed)
                log.warning("instance %s: publishing its hostPorts: %s; again in %.0fs", name, e, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ran.wait(), delay)
            delay = min(longest, delay * 2)

    async def _detach(self) -> None:
        if self._deps.network is None:
            return
        try:
            await asyncio.to_thread(self._deps.network.detach, self.instance.name)
        except NetworkError as e:  # the next attach replaces a leftover veth
            log.warning("instance %s: detach failed: %s", self.instance.name, e)

    def _running_status(self, state: ContainerState) -> pb.InstanceStatus:
        status = pb.InstanceStatus(state=pb.INSTANCE_STATE_RUNNING, pid=state.pid or 0, ip=self.ip)
        # Without a readiness or startup probe, running is ready; with one, the probes decide.
        status.ready = not any(self.instance.spec.HasField(p) for p in ("readiness", "startup"))
        if state.started_at:
            status.started_at.FromNanoseconds(int(state.started_at * 1e9))
        return status

    async def _wait_exit(self, state: ContainerState) -> ContainerState | None:
        """Until the container ends (its state) or a stop is requested (None)."""
        name = self.instance.name
        try:
            fd = self._deps.runtime.exit_fd(name)
        except ContainerError:
            return self._deps.runtime.state(name)
        exited = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, exited.set)
        self._probe_restart = None
        probes = asyncio.create_task(self._probe_loop(state))
        watch = asyncio.create_task(self._watch_volumes())
        ran = asyncio.Event()  # this incarnation's run is over: no hostPort publish of it after this
        republish = None
        if self._republish and self._deps.network is not None:
            republish = asyncio.create_task(
                self._republish_host_ports(self._deps.network, ran), name=f"republish-{name}"
            )
        self._republish = False
        try:
            stop = asyncio.create_task(self._stop.wait())
            done = asyncio.create_task(exited.wait())
            await asyncio.wait({stop, done}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            done.cancel()
        finally:
            probes.cancel()
            watch.cancel()
            loop.remove_reader(fd)
            os.close(fd)
            if republish is not None:  # a publish in flight ends before anything can unpublish
                ran.set()
                await asyncio.wait({republish})
                if not republish.cancelled() and (e := republish.exception()) is not None:
                    log.error("instance %s: publishing its hostPorts: %r", self.instance.name, e)
        if self._stop.is_set():
            return None
        return await self._final_state(name)

    async def _probe_loop(self, state: ContainerState) -> None:
        """The probes of the running container; kills it when one calls for a restart."""
        spec = self.instance.spec
        if not any(spec.HasField(p) for p in PROBES):
            return
        ran_for = max(time.time() - state.started_at, 0.0) if state.started_at else 0.0  # adopted: started earlier
        restart = await run_probes(
            spec, self.ip, self._deps.runtime, self.instance.name, time.monotonic() - ran_for, self._on_probes,
            self._deps.probes,
        )  # fmt: skip
        log.info("instance %s: %s; restarting it", self.instance.name, restart.message)
        self._probe_restart = restart
        runtime, name = self._deps.runtime, self.instance.name
        try:  # as a stop: SIGTERM, SIGKILL after the grace period (the exit cancels this task)
            await asyncio.to_thread(runtime.kill, name, signal.SIGTERM)
            await asyncio.sleep((spec.stop_grace_period_ms or 10_000) / 1000)
            await asyncio.to_thread(runtime.kill, name, signal.SIGKILL)
        except (ContainerError, OSError) as e:
            log.warning("instance %s: kill after the failed %s probe: %s", name, restart.kind.value, e)

    def _on_probes(self, ready: bool, message: str) -> None:
        if ready != self.status.ready or message != self.status.message:
            status = pb.InstanceStatus()
            status.CopyFrom(self.status)
            status.ready = ready
            status.message = message
            self._set(status)

    async def _final_state(self, name: str) -> ContainerState:
        # The supervisor writes the exit record right before it ends; allow it a moment.
        for _ in range(50):
            state = await asyncio.to_thread(self._deps.runtime.state, name)
            if state.status == ContainerStatus.EXITED:
                return state
            await asyncio.sleep(0.02)
        return state

    async def _after_exit(self, state: ContainerState) -> bool:
        """Report the exit; wait out the backoff. False: do not restart."""
        code = state.exit_code if state.exit_code is not None else -1
        ran_for = (state.finished_at or time.time()) - (state.started_at or time.time())
        killed = self._probe_restart
        # Killed for a failed probe: restarted unless the policy is Never, whatever the exit code (Kubernetes).
        decision = self._tracker.next((code or 1) if killed else code, ran_for)
        status = exit_status(state, self._tracker.restarts)
        if killed is not None:
            status.reason, status.message = killed.reason, f"{killed.message}; killed (exit code {code})"
        if self.evicted:  # its emptyDirs start empty again, as a new pod's would
            status.reason, status.message, self.evicted = "Evicted", self.evicted, ""
            await asyncio.to_thread(self._volumes().remove, self.instance.name)
        self._deps.exited(self.instance.app, status.reason)  # before a CrashLoopBackOff hides why
        if not decision.restart:
            self._set(status)
            return False
        self._last = pb.Termination(reason=status.reason, message=status.message, exit_code=code)
        self._last.finished_at.CopyFrom(status.finished_at)
        await self._keep_log()
        if decision.delay > 0:
            status.reason = "CrashLoopBackOff"
            status.message = f"exit code {code}; restarting in {decision.delay:.1f}s"
        self._set(status)
        await self._detach()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=decision.delay)
        return True

    async def _keep_log(self) -> None:
        """The log of the incarnation that ended becomes the previous one (`orch logs -p`)."""
        try:
            await asyncio.to_thread(keep_previous, log_file(self._deps.log_dir, self.instance.name))
        except OSError as e:  # the next incarnation appends to it instead
            log.warning("instance %s: keeping its previous log: %s", self.instance.name, e)

    async def _teardown(self) -> None:
        """Stop and remove the container, free its address, report Stopped."""
        name = self.instance.name
        grace = 0.0 if self.fenced else (self.instance.spec.stop_grace_period_ms or 10_000) / 1000
        try:
            state = await self._stop_container(name, grace)
            await asyncio.to_thread(self._deps.runtime.remove, name)
            if self._deps.volumes is not None:  # its emptyDirs go with it (a leftover: the next sweep)
                await asyncio.to_thread(self._deps.volumes.remove, name)
        except (ContainerError, OSError) as e:
            log.warning("instance %s: stop failed: %s", name, e)
            state = None
        await self._detach()
        status = pb.InstanceStatus(state=pb.INSTANCE_STATE_STOPPED, reason="Stopped")
        if self.fenced:
            status = pb.InstanceStatus(state=pb.INSTANCE_STATE_FAILED, reason=FENCED_REASON, message=self.fenced)
        if state is not None and state.exit_code is not None:
            status.exit_code = state.exit_code
            status.has_exit_code = True
        self._set(status)

    async def _stop_container(self, name: str, grace: float) -> ContainerState:
        """Runtime.stop, with the grace period waited on the loop: a thread held for it (up to
        stopGracePeriod, and a PID 1 without a SIGTERM handler uses all of it) would be one
        fewer for starts. SIGTERM, the wait for the end, then stop(0) kills what is left."""
        runtime = self._deps.runtime
        if grace > 0:
            await asyncio.to_thread(runtime.kill, name, signal.SIGTERM)
            fd = await asyncio.to_thread(runtime.exit_fd, name)
            ended = asyncio.Event()
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, ended.set)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), grace)
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        return await asyncio.to_thread(runtime.stop, name, 0)
