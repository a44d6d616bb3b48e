"""The node agent: wires session, workers, runtime and network together.

Level-triggered: every desired set is diffed against the workers; removed
ones are told to stop and finish in the background, added ones start at
once, so a slow stop never delays the next desired set. Containers found at
start-up (the agent was restarted) are adopted, not restarted.

Instances of `onNodeLost: Stop` apps are killed by the agent itself once its
node's lease may have expired (node/fencing.py), and never run here again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import start_http_server

from node import fencing
from node.api import NodeAgentService
from node.capacity import host_capacity, minus_reserve
from node.discovery import ServiceDiscovery
from node.images import ImageStore
from node.metrics import NodeMetrics
from node.network import NetworkConfig, NetworkError, NodeNetwork, PortRange
from node.network.cluster import ANY_SUBNET, ClusterNetwork, ClusterNetworkConfig
from node.network.services import ServiceProxy
from node.networking import Networking, node_ip_for
from node.reconcile import diff
from node.runtime import ContainerError, ContainerState, Runtime
from node.runtime.cgroups.placement import place_agent, placement_for_cleanup
from node.runtime.exec_client import ExecProcess
from node.runtime.logs import remove_logs, remove_unknown_logs
from node.runtime.seccomp import DEFAULT_PROFILE
from node.runtime.userns import IdRange
from node.secret_env import SecretEnvError, secret_env
from node.session import Session
from node.usage import sample_usage
from node.volumes import NodeVolumes
from node.worker import DEFAULT_PIDS_LIMIT, InstanceWorker, WorkerDeps
from orch import malloc, sdnotify
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
    subnet: str = ""  # empty: the scheduler assigns one (docs/networking.md)
    node_ip: str = ""  # where other nodes route our subnet; "": --listen's address, else towards the scheduler
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
    cluster_domain: str = "orch"  # <app>.<domain> answered on the bridge gateway (node/dns)
    resolv_conf: Path = Path("/etc/resolv.conf")  # the node's resolvers: other names are forwarded there
    allowed_host_paths: tuple[str, ...] = ()  # directories hostPath volumes may use (--allow-host-path)


def cluster_network(config: AgentConfig) -> ClusterNetwork:
    base = NetworkConfig(
        config.bridge,
        config.subnet or ANY_SUBNET,  # the real one comes from the scheduler (or --subnet)
        config.state_dir / "ipam",
        publish_address=config.publish_address,
        host_port_range=config.host_port_range,
        node=config.name,
    )
    return ClusterNetwork(ClusterNetworkConfig(config.bridge, config.state_dir, config.subnet, config.name, base))


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
        self.network: NodeNetwork | None = None  # once the node has its subnet (self.networking)
        self.networking = self._networking() if config.bridge else None
        # DNS and VIPs need a bridge: containers without one have no way to the gateway.
        self.discovery = ServiceDiscovery(config.cluster_domain, config.resolv_conf) if config.bridge else None
        self._attaching: asyncio.Task[None] | None = None  # discovery moving to a new network
        self.metrics = NodeMetrics(VERSION)
        self.metrics.watch_usage(self._running_instances, self.runtime.stats, self._resources_of)
        if config.bridge:  # without one, containers have only lo: no per-instance traffic
            self.metrics.watch_network(self._running_instances, self._veth_of)
        self.workers: dict[str, InstanceWorker] = {}  # the instances the scheduler wants here
        self.stopping: dict[str, InstanceWorker] = {}  # removed, still stopping their container
        self._adoptable: dict[str, ContainerState] = {}
        log_dir = config.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.images = ImageStore(config.state_dir / "images", insecure=config.insecure_registries)
        self._probes = ThreadPoolExecutor(PROBE_THREADS, thread_name_prefix="orch-probes")
        self._pulls = ThreadPoolExecutor(PULL_THREADS, thread_name_prefix="orch-pulls")
        self.volumes = NodeVolumes(config.state_dir / "volumes", config.allowed_host_paths)
        self.secrets: dict[str, pb.SecretData] = {}  # from the scheduler, for variables from secrets
        self._deps = WorkerDeps(
            self.runtime,
            self.network,
            self.images,
            log_dir,
            self._report,
            config.default_pids_limit,
            resolv_conf=self.discovery.resolv_conf if self.discovery else None,
            started=self.metrics.started,
            exited=self.metrics.exited,
            probes=self._probes,
            pulls=self._pulls,
            volumes=self.volumes,
            secrets=lambda name: self.secrets.get(name),
        )
        # Self-fencing: what the previous agent process knew (a restart), then what the scheduler says.
        self._fencing_file = config.state_dir / "fencing.json"
        saved = fencing.load(self._fencing_file)
        self.lease = fencing.LeaseWatch(valid_until=saved.valid_until)
        self.lease.on_lapse = self._fence
        self._fence_on_lapse = set(saved.instances)  # instances of Stop apps, saved for the next process
        self.fenced: dict[str, str] = {}  # instance -> why it was killed for good
        net = self.networking
        self.session = Session(
            config.schedulers,
            self._register,
            self._full_report,
            self.apply_desired,
            tls=config.tls,
            on_endpoints=self.discovery.update if self.discovery else None,
            lease=self.lease,
            on_registered=net.on_registered if net else None,
            on_routes=net.on_routes if net else None,
        )
        self._apply_lock = asyncio.Lock()
        self._swept = False
        self.address = config.listen
        self._server: grpc.aio.Server | None = None

    def _networking(self) -> Networking:
        def node_ip() -> str:
            return node_ip_for(self.config.node_ip, self.address, self.config.schedulers[0])

        def use(network: NodeNetwork) -> None:  # workers started from now on attach to it
            self.network = network
            self._deps = dataclasses.replace(self._deps, network=network)
            if self.discovery is not None:  # DNS on the (new) gateway, VIP rules on its bridge
                self._attaching = asyncio.get_running_loop().create_task(self.discovery.attach(network))

        return Networking(cluster_network(self.config), node_ip, use)

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

    def _veth_of(self, name: str) -> str | None:
        network = self.network  # the metrics thread: read once
        return network.veth_name(name) if network is not None else None

    def _register(self, lease_id: int) -> apb.Register:
        capacity = self.config.capacity or host_capacity()
        reg = apb.Register(
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
            allowed_host_paths=self.config.allowed_host_paths,
        )
        if self.networking is not None:
            reg.MergeFrom(self.networking.register_fields())
        return reg

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
            self.secrets = dict(desired.secrets)  # memory only; what the next starts see
            d = diff(desired.instances, self.workers)
            for name in d.removed:
                self._stop_worker(self.workers.pop(name))
            for inst in d.added:
                self._start_worker(inst)
            await self._stop_unclaimed()
            self.save_fencing()
            if not self._swept:
                # Once the scheduler said what it wants: exited containers of a previous
                # run that it no longer wants, and cgroups without state, are leftovers.
                keep = {w.instance.name for w in self._all_workers()}
                try:
                    await asyncio.to_thread(self.runtime.remove_unknown, keep)
                    # emptyDirs of instances gone meanwhile; a container still running keeps its own
                    running = {s.id for s in await asyncio.to_thread(self.runtime.list)}
                    await asyncio.to_thread(self.volumes.remove_unknown, keep | running)
                    await asyncio.to_thread(remove_unknown_logs, self._deps.log_dir, keep | running)
                except (ContainerError, OSError) as e:
                    log.warning("sweeping leftovers failed: %s", e)
                self._swept = True
            self.metrics.instances.set(len(self.workers))

    def _stop_worker(self, worker: InstanceWorker) -> None:
        """Stops in the background (grace period, shim wait): the receive loop must not wait."""
        name = worker.instance.name
        worker.request_stop()
        if worker.task is None or worker.task.done():
            self._drop_logs(name)
            return
        self.stopping[name] = worker

        def forget(_: object) -> None:
            if self.stopping.get(name) is worker:
                del self.stopping[name]
            self._drop_logs(name)

        worker.task.add_done_callback(forget)

    def _drop_logs(self, name: str) -> None:
        """The instance left the desired set (its record is gone) and its container too: its
        logs go, unless the same instance came back meanwhile."""
        if name in self.workers or name in self.stopping:
            return
        try:
            remove_logs(self._deps.log_dir, name)
        except OSError as e:  # swept at the next start
            log.warning("could not remove the logs of %s: %s", name, e)

    def _start_worker(self, inst: pb.Instance) -> None:
        worker = InstanceWorker(inst, self._deps, adopted=self._adoptable.pop(inst.name, None))
        self.workers[inst.name] = worker
        if inst.name in self.fenced:  # never again here: the scheduler replaces it
            worker.fence(self.fenced[inst.name])
        elif fences_itself(inst) and self.lease.lapsed():
            worker.fence(self._fence_message())
        # The same instance back while its old worker still stops it: start once that is done,
        # or the old teardown would remove the new container.
        previous = self.stopping.get(inst.name)
        worker.start(after=previous.task if previous is not None else None)

    def _fence_message(self) -> str:
        return "killed by its agent: the node's lease may have expired (no renewal heard; onNodeLost: Stop)"

    def _fence(self) -> None:
        """The lease may have expired (LeaseWatch.on_lapse): kill the instances of Stop apps now,
        including containers of a previous agent process not yet claimed by a desired set."""
        message = self._fence_message()
        # Those still stopping too: their grace period may outlast the lease.
        victims = [w for w in self._all_workers() if fences_itself(w.instance) and not w.fenced]
        unclaimed = sorted(n for n in self._fence_on_lapse if n in self._adoptable and n not in self.fenced)
        if not victims and not unclaimed:
            return
        log.warning("lease may have expired: killing %d instances of onNodeLost: Stop apps",
                    len(victims) + len(unclaimed))  # fmt: skip
        for w in victims:
            self.fenced[w.instance.name] = message
            w.fence(message)
        for name in unclaimed:
            self.fenced[name] = message
            try:
                self.runtime.kill(name, signal.SIGKILL)
            except (ContainerError, OSError) as e:
                log.warning("instance %s: fencing kill failed: %s", name, e)

    def save_fencing(self, force: bool = False) -> None:
        """The Stop apps' instances and the lease bound, for the next agent process (a restart)."""
        names = {n for n, w in self.workers.items() if fences_itself(w.instance) and not w.fenced}
        self.lease.needed = bool(names)
        if names == self._fence_on_lapse and not force:
            return
        self._fence_on_lapse = names
        try:
            fencing.save(self._fencing_file, self.lease.valid_until, names)
        except OSError as e:
            log.warning("could not save %s: %s", self._fencing_file, e)

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

    def _exec(self, name: str, argv: Sequence[str], **kw: Any) -> ExecProcess:
        """`orch exec`: the container's environment includes its variables from secrets, which
        spec.json never holds (runtime/model.py): from memory, over the exec socket."""
        worker = self.workers.get(name)
        env: dict[str, str] = {}
        if worker is not None:
            with contextlib.suppress(SecretEnvError):  # a secret deleted since: the rest still works
                env = secret_env(worker.instance.spec, self.secrets.get)
        return self.runtime.exec(name, argv, env=env | dict(kw.pop("env", None) or {}), **kw)

    async def serve_api(self) -> None:
        self._server = grpc.aio.server()
        log_dir = self.config.state_dir / "logs"
        usage = functools.partial(sample_usage, self.config.name, self._running_instances, self.runtime.stats)
        service = NodeAgentService(
            log_dir, lambda name: name in self.workers or name in self.stopping, usage, self._exec
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
        tasks = [asyncio.create_task(self.collect_images(), name="image-gc")]
        if self.networking is not None:
            tasks.append(asyncio.create_task(self.networking.run(), name="networking"))
        try:
            await self._run_session()
        finally:
            for task in tasks:
                task.cancel()

    async def _warm_runtime(self) -> None:
        """A fresh node's zygote, started while the session registers, so that the first desired
        set does not wait for it."""
        try:
            await asyncio.to_thread(self.runtime.warm)
        except Exception as e:  # whatever it was, the first start tries again and reports it
            log.warning("starting the container fork server failed: %s", e)

    async def _run_session(self) -> None:
        if self.networking is not None:  # the network of before set up again (healed) at once
            await self.networking.start()
        discovery = None
        if self.discovery is not None:  # attached to the network when it arrives (_networking)
            discovery = asyncio.create_task(self.discovery.run(), name="service-rules")
        self._adoptable = {s.id: s for s in await asyncio.to_thread(self.runtime.list)}
        warm = None
        if self._adoptable:
            # A restart: what runs is adopted, not started. Warming up would only take CPU from
            # registering within the scheduler's hold and from the first lease renewals, which
            # the Stop apps' instances depend on; the next start starts the zygote.
            log.info("found %d containers from a previous run", len(self._adoptable))
        else:
            warm = asyncio.create_task(self._warm_runtime(), name="warm-runtime")
        # Once the containers are known: the previous process's bound may have passed already.
        fence_task = asyncio.create_task(self.lease.run(), name="fencing")
        if self.config.metrics_listen:
            host, _, port = self.config.metrics_listen.rpartition(":")
            start_http_server(int(port), addr=host or "127.0.0.1", registry=self.metrics.registry)
        sdnotify.ready(f"serving on {self.address}")  # Type=notify: `systemctl start` returns now
        try:
            await self.session.run()
        finally:
            fence_task.cancel()
            if warm is not None:
                warm.cancel()
            if discovery is not None:
                discovery.cancel()
            if self.discovery is not None:
                await self.discovery.close()


def fences_itself(inst: pb.Instance) -> bool:
    return inst.spec.on_node_lost == pb.NODE_LOST_ACTION_STOP


def cleanup(config: AgentConfig) -> None:
    """Stop and remove every container and network object this node created."""
    cgroups = placement_for_cleanup(config.name, config.cgroup, config.state_dir)
    Runtime(config.state_dir / "containers", cgroups.containers, supervisors=cgroups.supervisors).cleanup_all()
    NodeVolumes(config.state_dir / "volumes").cleanup_all()  # emptyDirs, their tmpfs unmounted
    if config.bridge:  # VIP rules, then routes, NAT, bridge, IPAM state and the recorded subnet
        ServiceProxy(config.bridge, config.subnet).teardown()  # their route goes with the bridge
        cluster_network(config).teardown()


async def leave(agent: Agent, task: asyncio.Task[None]) -> None:
    """A planned exit (SIGTERM: systemd's restart or stop, an upgrade): the containers keep
    running for the next agent to adopt, so first ask the scheduler to hold the node
    rather than replace them when our lease lapses. Then stop the session."""
    held_until = await agent.session.goodbye(GOODBYE_TIMEOUT)
    agent.save_fencing(force=True)  # with the hold: the next process keeps the Stop apps' instances
    if held_until:
        left = held_until - time.time()
        log.info("the scheduler keeps this node's instances for %.0fs while the agent restarts", left)
    else:
        log.warning("the scheduler did not confirm a hold for this restart: its instances may be replaced")
    task.cancel()


def main(config: AgentConfig) -> None:
    malloc.limit_arenas()  # before grpc's and the lifecycle pool's threads (orch/malloc.py)
    # First of all: how long the start takes after this (fork server, network, adoption,
    # registration) shows in the log apart from the interpreter's own start and imports.
    log.info("agent %s starting (orch %s, state in %s)", config.name, VERSION, config.state_dir)

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
        try:
            await task
        except asyncio.CancelledError:
            pass
        except NetworkError as e:  # a --subnet against the recorded one (node/networking.py): no traceback
            raise SystemExit(f"orch node {config.name}: network: {e}") from None
        await agent.wait_stopping()
        if agent._server is not None:
            await agent._server.stop(grace=0.5)
        # Containers keep running on purpose: an agent restart must not
        # restart workloads (the next agent adopts them).
        log.info("agent %s stopped; %d containers left running", config.name, len(agent.workers))

    asyncio.run(run())
