"""The node agent: wires session, workers, runtime and network together.

Level-triggered: every desired set is diffed against the workers; removed
ones are told to stop and finish in the background, added ones start at
once, so a slow stop never delays the next desired set. Containers found at
start-up (the agent was restarted) are adopted, not restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client import start_http_server

from node.api import NodeAgentService
from node.capacity import host_capacity, minus_reserve
from node.images import ImageStore
from node.metrics import NodeMetrics
from node.network import NetworkConfig, NetworkError, NodeNetwork, PortRange
from node.reconcile import diff
from node.runtime import ContainerError, ContainerState, Runtime
from node.runtime.cgroups.placement import place_agent, placement_for_cleanup
from node.runtime.seccomp import DEFAULT_PROFILE
from node.runtime.userns import IdRange
from node.session import Session
from node.usage import sample_usage
from node.worker import DEFAULT_PIDS_LIMIT, InstanceWorker, WorkerDeps
from orch import sdnotify
from orch.tls import Credentials, add_port
from orch.v1 import agent_pb2 as apb
from orch.v1 import agent_pb2_grpc
from orch.v1 import types_pb2 as pb
from orch.version import version

log = logging.getLogger(__name__)
VERSION = version()
GOODBYE_TIMEOUT = 2.0  # s to wait for the scheduler to confirm it holds the node for our restart
# Threads for blocking work, each kind in a bounded pool of its own so that none starves another:
# starts, stops and state reads on the loop's default executor; probes, image pulls (and gc) apart.
# Log follows and usage samples have theirs in api.py. Waits (exits, grace periods) use no thread.
LIFECYCLE_THREADS = 8
PROBE_THREADS = 4
PULL_THREADS = 3


@dataclass(frozen=True, slots=True)
class AgentConfig:
    name: str
    state_dir: Path
    schedulers: tuple[str, ...] = ("127.0.0.1:7070",)
    labels: dict[str, str] = field(default_factory=dict)
    capacity: pb.Resources | None = None  # None: what the host has
    reserve: pb.Resources = field(default_factory=pb.Resources)
    bridge: str = ""  # empty: containers get only a loopback network namespace
    subnet: str = ""
    metrics_listen: str = ""  # host:port
    listen: str = "127.0.0.1:0"  # the agent's own gRPC API (logs), reported to the scheduler
    insecure_registries: tuple[str, ...] = ()  # plain HTTP besides loopback
    image_gc_interval: float = 300.0  # seconds between sweeps of images no instance here uses
    image_gc_above: int = 0  # sweep only while the store holds more bytes than this
    cgroup: str = ""  # cgroup parent of the containers; "": chosen (node/runtime/cgroups/placement.py)
    userns_ids: IdRange = field(default_factory=IdRange)  # host ids for hostUsers: false containers
    publish_address: str = ""  # hostPorts only on this local address; "" = every local one but loopback
    host_port_range: PortRange = field(default_factory=PortRange)  # hostPorts this node publishes at all
    tls: Credentials | None = None  # mutual TLS: to the schedulers, and for our own API
    default_pids_limit: int = DEFAULT_PIDS_LIMIT  # pids.max for apps that set none; 0: unlimited
    seccomp_profile: Path = DEFAULT_PROFILE  # Docker's JSON format; `seccomp: unconfined` apps skip it


def network_config(config: AgentConfig) -> NetworkConfig:
    return NetworkConfig(
        config.bridge,
        config.subnet,
        config.state_dir / "ipam",
        publish_address=config.publish_address,
        host_port_range=config.host_port_range,
        node=config.name,
    )


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        # Private: container specs hold the apps' env (secrets), logs their output.
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(config.state_dir, 0o700)
        try:
            cgroups = place_agent(config.name, config.cgroup, config.state_dir)
        except (ContainerError, OSError) as e:
            raise SystemExit(f"orch node: cgroups: {e}") from None
        self.runtime = Runtime(
            config.state_dir / "containers",
            cgroups.containers,
            userns_ids=config.userns_ids,
            seccomp_profile=config.seccomp_profile,
            supervisors=cgroups.supervisors,
        )
        try:  # the C programs every container needs: compiled now, so a node that cannot says so at once
            log.debug("container supervisor: %s", self.runtime.native.shim)
        except ContainerError as e:
            raise SystemExit(f"orch node: {e}") from None
        self.network = NodeNetwork(network_config(config)) if config.bridge else None
        self.metrics = NodeMetrics(VERSION)
        self.metrics.watch_usage(self._running_instances, self.runtime.stats, self._resources_of)
        self.workers: dict[str, InstanceWorker] = {}  # the instances the scheduler wants here
        self.stopping: dict[str, InstanceWorker] = {}  # removed, still stopping their container
        self._adoptable: dict[str, ContainerState] = {}
        log_dir = config.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.images = ImageStore(config.state_dir / "images", insecure=config.insecure_registries)
        self._probes = ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="orch-probes")
        self._pulls = ThreadPoolExecutor(PULL_THREADS, thread_name_prefix="orch-pulls")
        self._deps = WorkerDeps(
            self.runtime,
            self.network,
            self.images,
            log_dir,
            self._report,
            config.default_pids_limit,
            started=self.metrics.started,
            exited=self.metrics.exited,
            probes=self._probes,
            pulls=self._pulls,
        )
        self.session = Session(config.schedulers, self._register, self._full_report, self.apply_desired, tls=config.tls)
        self._apply_lock = asyncio.Lock()
        self._swept = False
        self.address = config.listen
        self._server: grpc.aio.Server | None = None

    def _running_instances(self) -> list[tuple[str, str]]:
        # Called from the metrics server's thread: copy before iterating.
        return [
            (name, w.instance.app)
            for name, w in list(self.workers.items())
            if w.status.state == pb.INSTANCE_STATE_RUNNING
        ]

    def _resources_of(self, name: str) -> pb.Resources | None:
        worker = self.workers.get(name)  # the metrics thread: one lookup, no iteration
        return worker.instance.spec.resources if worker is not None else None

    def _register(self, lease_id: int) -> apb.Register:
        capacity = self.config.capacity or host_capacity()
        return apb.Register(
            node=self.config.name,
            address=self.address,
            metrics_address=self.config.metrics_listen,
            capacity=capacity,
            allocatable=minus_reserve(capacity, self.config.reserve),
            labels=self.config.labels,
            version=VERSION,
            lease_id=lease_id,
            host_port_min=self.config.host_port_range.first,
            host_port_max=self.config.host_port_range.last,
        )

    def _report(self, inst: pb.Instance, status: pb.InstanceStatus) -> None:
        self.metrics.observe(status)
        report = apb.StatusReport(instances=[apb.InstanceReport(name=inst.name, app=inst.app, status=status)])
        self.session.send_status(report)

    def _full_report(self) -> apb.StatusReport:
        return apb.StatusReport(
            # Stopping ones too: the scheduler counts an instance missing here as stopped.
            instances=[
                apb.InstanceReport(name=w.instance.name, app=w.instance.app, status=w.status)
                for w in self._all_workers()
            ],
            full=True,
        )

    def _all_workers(self) -> list[InstanceWorker]:
        """Wanted and still-stopping workers: both have a container on this host."""
        return [*self.stopping.values(), *self.workers.values()]

    async def apply_desired(self, desired: apb.DesiredSet) -> None:
        async with self._apply_lock:
            d = diff(desired.instances, self.workers)
            for name in d.removed:
                self._stop_worker(self.workers.pop(name))
            for inst in d.added:
                self._start_worker(inst)
            await self._stop_unclaimed()
            if not self._swept:
                # Once the scheduler said what it wants: exited containers of a previous
                # run that it no longer wants, and cgroups without state, are leftovers.
                keep = {w.instance.name for w in self._all_workers()}
                try:
                    await asyncio.to_thread(self.runtime.remove_unknown, keep)
                except (ContainerError, OSError) as e:
                    log.warning("sweeping leftovers failed: %s", e)
                self._swept = True
            self.metrics.instances.set(len(self.workers))

    def _stop_worker(self, worker: InstanceWorker) -> None:
        """Stops in the background (grace period, shim wait): the receive loop must not wait."""
        name = worker.instance.name
        worker.request_stop()
        if worker.task is None or worker.task.done():
            return
        self.stopping[name] = worker

        def forget(_: object) -> None:
            if self.stopping.get(name) is worker:
                del self.stopping[name]

        worker.task.add_done_callback(forget)

    def _start_worker(self, inst: pb.Instance) -> None:
        worker = InstanceWorker(inst, self._deps, adopted=self._adoptable.pop(inst.name, None))
        self.workers[inst.name] = worker
        # The same instance back while its old worker still stops it: start once that is done,
        # or the old teardown would remove the new container.
        previous = self.stopping.get(inst.name)
        worker.start(after=previous.task if previous is not None else None)

    async def wait_stopping(self) -> None:
        """Let stops in flight finish, so no container is left half-stopped."""
        tasks = {w.task for w in self.stopping.values() if w.task is not None}
        if tasks:
            log.info("waiting for %d instances to stop", len(tasks))
            await asyncio.wait(tasks)

    async def _stop_unclaimed(self) -> None:
        """Containers from before a restart that the scheduler no longer wants, all at once:
        one by one, their grace periods would add up in front of the next desired set."""
        names = list(self._adoptable)
        self._adoptable.clear()
        await asyncio.gather(*(self._remove_unclaimed(name) for name in names))

    async def _remove_unclaimed(self, name: str) -> None:
        log.info("removing container %s: not in the desired set", name)
        try:
            await asyncio.to_thread(self.runtime.stop, name, 2.0)
            await asyncio.to_thread(self.runtime.remove, name)
            if self.network is not None:
                await asyncio.to_thread(self.network.detach, name)
        except (ContainerError, NetworkError, OSError) as e:  # swept again at the next start
            log.warning("could not remove container %s: %s", name, e)

    async def serve_api(self) -> None:
        self._server = grpc.aio.server()
        log_dir = self.config.state_dir / "logs"
        usage = functools.partial(sample_usage, self.config.name, self._running_instances, self.runtime.stats)
        service = NodeAgentService(
            log_dir, lambda name: name in self.workers or name in self.stopping, usage, self.runtime.exec
        )
        agent_pb2_grpc.add_NodeAgentServicer_to_server(service, self._server)
        port = add_port(self._server, self.config.listen, self.config.tls)
        if port == 0:
            raise SystemExit(f"orch node: cannot listen on {self.config.listen}")
        host = self.config.listen.rpartition(":")[0] or "127.0.0.1"
        self.address = f"{host}:{port}"
        await self._server.start()

    async def collect_images(self) -> None:
        """Level-triggered image GC: keep what the current instances use."""
        while True:
            await asyncio.sleep(self.config.image_gc_interval)
            try:
                loop = asyncio.get_running_loop()
                usage = await loop.run_in_executor(self._pulls, self.images.disk_usage)
                if usage.total_bytes <= self.config.image_gc_above:
                    continue
                keep = {w.instance.spec.image for w in self._all_workers()}
                result = await loop.run_in_executor(self._pulls, self.images.gc, keep)
                if result.freed_bytes:
                    log.info("image gc: freed %d bytes (%d layers)", result.freed_bytes, result.removed_layers)
            except Exception as e:  # whatever it was, the next round tries again: the task lives on
                log.warning("image gc failed: %s", e)

    async def run(self) -> None:
        await self.serve_api()
        gc_task = asyncio.create_task(self.collect_images(), name="image-gc")
        try:
            await self._run_session()
        finally:
            gc_task.cancel()

    async def _run_session(self) -> None:
        if self.network is not None:
            await asyncio.to_thread(self.network.ensure_bridge)
        self._adoptable = {s.id: s for s in await asyncio.to_thread(self.runtime.list)}
        if self._adoptable:
            log.info("found %d containers from a previous run", len(self._adoptable))
        if self.config.metrics_listen:
            host, _, port = self.config.metrics_listen.rpartition(":")
            start_http_server(int(port), addr=host or "127.0.0.1", registry=self.metrics.registry)
        sdnotify.ready(f"serving on {self.address}")  # Type=notify: `systemctl start` returns now
        await self.session.run()


def cleanup(config: AgentConfig) -> None:
    """Stop and remove every container and network object this node created."""
    cgroups = placement_for_cleanup(config.name, config.cgroup, config.state_dir)
    Runtime(config.state_dir / "containers", cgroups.containers, supervisors=cgroups.supervisors).cleanup_all()
    if config.bridge:
        NodeNetwork(network_config(config)).teardown()


async def leave(agent: Agent, task: asyncio.Task[None]) -> None:
    """A planned exit (SIGTERM: systemd's restart or stop, an upgrade): the containers keep
    running for the next agent to adopt, so first ask the scheduler to hold the node
    rather than replace them when our lease lapses. Then stop the session."""
    held_until = await agent.session.goodbye(GOODBYE_TIMEOUT)
    if held_until:
        left = held_until - time.time()
        log.info("the scheduler keeps this node's instances for %.0fs while the agent restarts", left)
    else:
        log.warning("the scheduler did not confirm a hold for this restart: its instances may be replaced")
    task.cancel()


def main(config: AgentConfig) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(LIFECYCLE_THREADS, thread_name_prefix="orch-lifecycle"))
        agent = Agent(config)
        task = asyncio.create_task(agent.run())
        leaving: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            if leaving:  # asked twice: stop waiting for the scheduler
                task.cancel()
            else:
                sdnotify.stopping()
                leaving.append(asyncio.create_task(leave(agent, task)))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await agent.wait_stopping()
        if agent._server is not None:
            await agent._server.stop(grace=0.5)
        # Containers keep running on purpose: an agent restart must not
        # restart workloads (the next agent adopts them).
        log.info("agent %s stopped; %d containers left running", config.name, len(agent.workers))

    asyncio.run(run())
