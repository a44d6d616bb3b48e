"""The user-facing gRPC service. Translates our errors into gRPC status
codes at this edge; reads come from one consistent snapshot."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from orch.templates import template_of, with_template
from orch.tls import Credentials
from orch.v1 import api_pb2 as api
from orch.v1 import api_pb2_grpc
from orch.v1 import exec_pb2 as xpb
from orch.v1 import types_pb2 as pb
from orch.validation import normalize_app_spec, validate_app_spec
from orch.version import version
from scheduler import secret_api
from scheduler.cache import ClusterCache
from scheduler.drain_plan import DrainPlan, plan_drain
from scheduler.errors import Conflict, InvalidRequest, NotFound, Refused, SchedulerError, StoreUnavailable
from scheduler.events import EventLog
from scheduler.exec_relay import ExecFailed, InstanceNotRunning, NodeUnreachable, exec_target, relay_exec
from scheduler.generations import change_cause, generation_writes, history, undo_target
from scheduler.generations import deletes as generation_deletes
from scheduler.generations import first as first_generation
from scheduler.liveness import NodeState, node_state
from scheduler.logs import LogsUnavailable, log_sources, stream_logs
from scheduler.moves import replaced_by
from scheduler.placement import node_views, request_for
from scheduler.placement.explain import summary, verdicts
from scheduler.reconcile import DONE, event
from scheduler.rollout import is_ready, progress, started
from scheduler.secrets import KeyRing, SecretsDisabled
from scheduler.services import DEFAULT_SERVICE_CIDR, ServiceCidrError, release_writes, service_ip_writes
from scheduler.snapshot import ClusterSnapshot, wants_to_run
from scheduler.store import Delete, Put, Store
from scheduler.subnet_claims import SubnetClaims
from scheduler.subnets import DEFAULT_CLUSTER_CIDR, SubnetPool
from scheduler.timeutil import ts
from scheduler.top import top

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext[Any, Any]
MAX_WATCHES = 256  # open Watch streams; each costs an event and a wakeup per change
WATCH_COALESCE = 0.1  # s: changes within it make one Watch message

ACTION_WORDS = {api.APPLY_ACTION_CREATED: "created", api.APPLY_ACTION_CONFIGURED: "configured"}

DEFAULT_SERVICE_NETWORK = ipaddress.IPv4Network(DEFAULT_SERVICE_CIDR)

STATUS_OF: dict[type[SchedulerError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    InstanceNotRunning: grpc.StatusCode.FAILED_PRECONDITION,
    NodeUnreachable: grpc.StatusCode.UNAVAILABLE,
    ExecFailed: grpc.StatusCode.INTERNAL,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Refused: grpc.StatusCode.FAILED_PRECONDITION,
    Conflict: grpc.StatusCode.ABORTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    SecretsDisabled: grpc.StatusCode.FAILED_PRECONDITION,
}


def spec_problems(spec: pb.AppSpec, name: str) -> list[str]:
    """What apply refuses in a spec, one line each; `orch scale` asks the same of the spec it makes."""
    return [f"app {name}: {e.path}: {e.message}" for e in validate_app_spec(spec)]


def runtime_part(spec: pb.AppSpec) -> bytes:
    """What instances run, the template (orch/templates.py): changing anything else rolls nothing."""
    return template_of(spec).SerializeToString(deterministic=True)


def drain_progress(snap: ClusterSnapshot, node: str, overdue: bool) -> api.DrainProgress:
    """How far a drain is: instances still on the node, and what blocks their replacements."""
    gone = DONE | {pb.INSTANCE_STATE_LOST}
    on_node = [i for i in snap.on_node(node) if wants_to_run(i) or i.status.state not in gone]
    if not on_node:
        return api.DrainProgress(done=True, forced=overdue, message=f"node/{node} drained")
    apps = {i.app for i in on_node}
    blocked = sorted(
        {v.value.status.message for v in snap.instances.values() if v.value.app in apps and is_unschedulable(v.value)}
    )
    names = ", ".join(sorted(i.name for i in on_node)[:5])
    return api.DrainProgress(
        remaining=len(on_node),
        message=f"{len(on_node)} instance(s) left: {names}",
        blocked="; ".join(blocked),
        forced=overdue,
    )


def plan_lines(plan: DrainPlan) -> list[str]:
    """The plan as `orch drain --dry-run` prints it."""
    lines = [f"node/{plan.node}: drain plan (dry run; nothing changes)"]
    if not plan.steps and not plan.remaining:
        return [*lines, "  nothing to move"]
    for k, step in enumerate(plan.steps, 1):
        moves = [f"start a replacement of {what} on {node}" for what, node in step.started]
        moves += [f"stop {name}" for name in step.stopped]
        lines.append(f"  step {k}: " + "; ".join(moves))
    for why in plan.blocked:
        lines.append(f"  blocked: {why}")
    if plan.remaining:
        lines.append(f"  left at the deadline (then stopped without a replacement): {', '.join(plan.remaining)}")
    return lines


def is_unschedulable(inst: pb.Instance) -> bool:
    return not inst.node and wants_to_run(inst) and inst.status.reason == "Unschedulable"


def app_info(snap: ClusterSnapshot, app: pb.App) -> api.AppInfo:
    """Counts over the app's instances, as stored (a cache's records) or hydrated alike: readiness
    needs only the probes, so each generation's template is looked up once and nothing is
    copied (hydrating 10,000 instances for a count took ~70 ms of the scheduler's CPU per poll)."""
    insts = [v.value for v in snap.instances_of(app.spec.name) if wants_to_run(v.value)]
    specs: dict[int, pb.AppSpec] = {}  # generation -> spec, for records as stored

    def spec(inst: pb.Instance) -> pb.AppSpec:
        if inst.HasField("spec"):  # hydrated, or written by an older scheduler
            return inst.spec
        if inst.app_generation not in specs:
            specs[inst.app_generation] = snap.spec_of(inst)
        return specs[inst.app_generation]

    seen = progress(app, insts, spec)
    return api.AppInfo(
        app=app,
        running=sum(1 for i in insts if i.status.state == pb.INSTANCE_STATE_RUNNING),
        ready=sum(1 for i in insts if is_ready(i, spec(i))),
        pending=sum(1 for i in insts if i.status.state == pb.INSTANCE_STATE_PENDING),
        placed=sum(1 for i in insts if i.node),
        rollout=api.RolloutProgress(updated=seen.updated, available=seen.available, old=seen.old, done=seen.done),
    )


NODE_STATES = {
    NodeState.READY: api.NODE_STATE_READY,
    NodeState.NOT_READY: api.NODE_STATE_NOT_READY,
    NodeState.RESTARTING: api.NODE_STATE_RESTARTING,
}


def node_infos(snap: ClusterSnapshot, now: float) -> list[api.NodeInfo]:
    views = node_views(snap)
    out = []
    for name in sorted(snap.nodes):
        view = views[name]
        out.append(
            api.NodeInfo(
                node=snap.nodes[name].value,
                state=NODE_STATES[node_state(snap, name, now)],
                allocated=pb.Resources(cpu_millis=view.cpu, memory_bytes=view.memory, pids=view.pids),
                instances=view.total,
            )
        )
    return out


class OrchService(api_pb2_grpc.OrchServicer):
    def __init__(
        self,
        store: Store,
        events: EventLog,
        on_change: Callable[[], None] = lambda: None,
        agent_tls: Credentials | None = None,  # our certificate when we call agents (logs, top)
        cache: ClusterCache | None = None,  # what Watch follows
        service_network: ipaddress.IPv4Network = DEFAULT_SERVICE_NETWORK,  # where virtual IPs come from
        subnets: SubnetClaims | None = None,
        secret_keys: KeyRing | None = None,  # --secret-key-file; None: secrets are disabled
    ) -> None:
        self._secret_keys = secret_keys
        self._service_network = service_network
        self._cache = cache
        self._watches = 0
        self._store = store
        self._events = events
        self._on_change = on_change
        self._agent_tls = agent_tls
        self._subnets = subnets or SubnetClaims(store, SubnetPool.parse(DEFAULT_CLUSTER_CIDR))

    async def _call(self, context: Ctx, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except SchedulerError as e:
            await self._abort(context, e)
            raise  # unreachable: abort raises

    async def _abort(self, context: Ctx, e: SchedulerError) -> None:
        code = next((c for cls, c in STATUS_OF.items() if isinstance(e, cls)), grpc.StatusCode.INTERNAL)
        await context.abort(code, str(e))

    async def _read(self, context: Ctx, app: str = "", hydrate: bool = True) -> ClusterSnapshot:
        """The cluster now: the cache's once it holds everything etcd held when asked (a
        consistent read from cache: ClusterCache.current), else read from etcd, which decodes
        every record at every poll (10,000 instances: ~1 s of CPU before records lost their
        spec, 107-159 ms with hydration on 2026-12-01). app: only that app's instances are in
        it. hydrate=False: the cache's records as they are, for a caller that needs no spec on
        each of them (app_info, node_infos)."""
        if self._cache is not None:
            try:
                cached = await self._cache.current()
            except SchedulerError as e:
                await self._abort(context, e)
                raise  # unreachable: abort raises
            if cached is not None:
                return await asyncio.to_thread(cached.hydrated, {}, app) if hydrate else cached
        return await self._call(context, self._store.snapshot)

    async def Apply(self, request: api.ApplyRequest, context: Ctx) -> api.ApplyResponse:
        return await self._call(context, lambda: self._apply(request))

    def _apply(
        self, request: api.ApplyRequest | Callable[[], tuple[api.ApplyRequest, str]], attempts: int = 8
    ) -> api.ApplyResponse:
        """request: or how to make it from a fresh read, with the change cause of the new generations (an undo)."""
        # A conflict is another writer between our read and our commit (another Apply took the
        # virtual IP we chose, or changed the app): read again and decide again. Each round
        # one of the racers wins, so a few rounds settle a burst of applies.
        for attempt in range(attempts):
            try:
                made, cause = (request, "") if isinstance(request, api.ApplyRequest) else request()
                return self._apply_once(made, cause)
            except Conflict:
                if attempt == attempts - 1:
                    raise
                time.sleep(random.uniform(0, 0.02))  # runs in a worker thread (_call)
        raise AssertionError("unreachable")

    def _apply_once(self, request: api.ApplyRequest, cause: str = "") -> api.ApplyResponse:
        specs = [normalize_app_spec(s) for s in request.apps]
        problems = [p for i, s in enumerate(specs) for p in spec_problems(s, s.name or "#" + str(i))]
        names = [s.name for s in specs]
        problems += [f'app "{n}" appears more than once' for n in sorted({n for n in names if names.count(n) > 1})]
        if problems:
            raise InvalidRequest(problems)
        now = time.time()
        writes: list[Put | Delete] = []
        results = []
        used: set[str] | None = None  # virtual IPs taken, read once if an app needs one
        for spec in specs:
            key = self._store.keys.app(spec.name)
            existing = self._store.get(pb.App, key)
            before = existing.value if existing else None
            action, app = self._next_app(
                before, spec, now, first_generation(self._store, spec.name) if not before else 1
            )
            result = api.ApplyResult(name=spec.name, action=action, generation=app.generation, spec=app.spec)
            if before is not None:
                result.previous.CopyFrom(before.spec)
                result.previous_generation = before.generation
            results.append(result)
            if action == api.APPLY_ACTION_UNCHANGED:
                continue
            writes.append(Put(key, app, existing.mod_revision if existing else 0))
            if not request.dry_run and (before is None or app.generation != before.generation):
                # The new generation's template, in the same transaction as the app.
                writes += generation_writes(self._store, before, app, change_cause(before, app, cause), now)
            if spec.HasField("service") or app.service_ip:
                if used is None:
                    used = self._service_ips()
                try:
                    writes += service_ip_writes(self._store.keys, before, app, self._service_network, used)
                except ServiceCidrError as e:
                    raise InvalidRequest([f"app {spec.name}: spec.service: {e}"]) from None
                used.add(app.service_ip)
        if writes and not request.dry_run:
            self._store.commit(writes)  # one transaction: all apps or none (up to 128)
            self._events.record(
                [
                    event(now, "App", r.name, "Applied", f"{ACTION_WORDS[r.action]}, generation {r.generation}")
                    for r in results
                    if r.action != api.APPLY_ACTION_UNCHANGED
                ]
            )
            self._on_change()
        return api.ApplyResponse(results=results)

    def _service_ips(self) -> set[str]:
        return {v.value.ip for v in self._store.list_prefix(pb.ServiceIp, self._store.keys.service_ip(""))}

    @staticmethod
    def _next_app(
        current: pb.App | None, spec: pb.AppSpec, now: float, first: int = 1
    ) -> tuple[api.ApplyAction.ValueType, pb.App]:
        if current is None:
            app = pb.App(
                spec=spec, generation=first, created_at=ts(now), updated_at=ts(now), rollout=started(first, now)
            )
            return api.APPLY_ACTION_CREATED, app
        if current.spec == spec:
            return api.APPLY_ACTION_UNCHANGED, current
        app = pb.App()
        app.CopyFrom(current)
        app.spec.CopyFrom(spec)
        if runtime_part(current.spec) != runtime_part(spec):
            app.generation += 1
            app.rollout.CopyFrom(started(app.generation, now))
        app.updated_at.CopyFrom(ts(now))
        return api.APPLY_ACTION_CONFIGURED, app

    async def GetApp(self, request: api.GetAppRequest, context: Ctx) -> api.AppInfo:
        snap = await self._read(context, request.name, hydrate=False)

        def get() -> api.AppInfo:
            if request.name not in snap.apps:
                raise NotFound("app", request.name)
            return app_info(snap, snap.apps[request.name].value)

        return await self._call(context, get)

    async def ListApps(self, request: api.ListAppsRequest, context: Ctx) -> api.ListAppsResponse:
        snap = await self._read(context, hydrate=False)
        return await self._call(
            context,
            lambda: api.ListAppsResponse(apps=[app_info(snap, snap.apps[n].value) for n in sorted(snap.apps)]),
        )

    async def DeleteApp(self, request: api.DeleteAppRequest, context: Ctx) -> api.DeleteAppResponse:
        def delete() -> api.DeleteAppResponse:
            key = self._store.keys.app(request.name)
            existing = self._store.get(pb.App, key)
            if existing is None:
                raise NotFound("app", request.name)
            # The reconciler stops and removes its instances (they outlive the app key and its history).
            released = release_writes(self._store.keys, existing.value)
            forgotten = generation_deletes(self._store, request.name)
            self._store.commit([Delete(key, existing.mod_revision), *released, *forgotten])
            self._events.record([event(time.time(), "App", request.name, "Deleted", "stopping its instances")])
            self._on_change()
            return api.DeleteAppResponse(deleted=True)

        return await self._call(context, delete)

    async def CreateSecret(self, request: api.CreateSecretRequest, context: Ctx) -> api.SecretInfo:
        created = await self._call(context, lambda: secret_api.create(self._store, self._secret_keys, request))
        self._on_change()  # instances waiting for it may start now
        return created

    async def ListSecrets(self, request: api.ListSecretsRequest, context: Ctx) -> api.ListSecretsResponse:
        return await self._call(context, lambda: secret_api.list_all(self._store))

    async def DeleteSecret(self, request: api.DeleteSecretRequest, context: Ctx) -> api.DeleteSecretResponse:
        return await self._call(context, lambda: secret_api.delete(self._store, request.name))

    async def Scale(self, request: api.ScaleRequest, context: Ctx) -> api.AppInfo:
        def scale() -> api.AppInfo:
            def set_replicas(app: pb.App) -> None:
                app.spec.replicas = request.replicas
                if problems := spec_problems(app.spec, request.name):  # apply's checks: the spec as it would be
                    raise InvalidRequest(problems)
                app.updated_at.CopyFrom(ts(time.time()))

            app = self._store.update(pb.App, self._store.keys.app(request.name), set_replicas)
            if app is None:
                raise NotFound("app", request.name)
            self._on_change()
            return app_info(self._store.snapshot(), app)

        return await self._call(context, scale)

    async def ListNodes(self, request: api.ListNodesRequest, context: Ctx) -> api.ListNodesResponse:
        snap = await self._read(context, hydrate=False)  # node_views takes one spec per generation
        return await self._call(context, lambda: api.ListNodesResponse(nodes=node_infos(snap, time.time())))

    async def SetSchedulable(self, request: api.SetSchedulableRequest, context: Ctx) -> api.NodeInfo:
        def set_schedulable() -> api.NodeInfo:
            def set_flag(node: pb.Node) -> None:
                node.unschedulable = not request.schedulable
                if request.schedulable:  # uncordon also ends a drain
                    node.draining = False
                    node.ClearField("drain_deadline")

            if self._store.update(pb.Node, self._store.keys.node(request.name), set_flag) is None:
                raise NotFound("node", request.name)
            verb = "Uncordoned" if request.schedulable else "Cordoned"
            self._events.record([event(time.time(), "Node", request.name, verb, f"node {verb.lower()}")])
            self._on_change()
            return next(n for n in node_infos(self._store.snapshot(), time.time()) if n.node.name == request.name)

        return await self._call(context, set_schedulable)

    async def DeleteNode(self, request: api.DeleteNodeRequest, context: Ctx) -> api.DeleteNodeResponse:
        return await self._call(context, lambda: self._delete_node(request.name))

    def _delete_node(self, name: str) -> api.DeleteNodeResponse:
        """Forget a node that left: its record and its subnet claim, in one transaction. Its
        instances, if any still want to run, are NotReady's to evict (liveness.py)."""
        snap = self._store.snapshot()
        node = snap.nodes.get(name)
        if node is None:
            raise NotFound("node", name)
        state = node_state(snap, name, time.time())
        if state is not NodeState.NOT_READY:
            raise Refused(
                "NodeInUse",
                f"node {name} is {state.value}: only a NotReady node can be deleted; stop its agent first "
                "(`orch node ... --cleanup` also removes its containers and network)",
            )
        self._store.commit([Delete(self._store.keys.node(name), node.mod_revision), *self._subnets.release(name)])
        freed = f"; subnet {node.value.subnet} is free again" if node.value.subnet else ""
        self._events.record([event(time.time(), "Node", name, "NodeDeleted", f"node deleted{freed}")])
        self._on_change()
        return api.DeleteNodeResponse()

    async def Drain(self, request: api.DrainRequest, context: Ctx) -> AsyncIterator[api.DrainProgress]:
        if request.dry_run:
            plan = await self._call(context, lambda: self._drain_plan(request.name))
            for line in plan_lines(plan):
                yield api.DrainProgress(message=line)
            yield api.DrainProgress(done=True, remaining=len(plan.remaining), blocked="; ".join(plan.blocked))
            return
        timeout = (request.timeout_ms or 300_000) / 1000
        deadline = time.time() + timeout
        await self._call(context, lambda: self._mark_draining(request.name, deadline))
        self._on_change()
        yield api.DrainProgress(message=f"node/{request.name} cordoned; draining (timeout {timeout:.0f}s)")
        last: api.DrainProgress | None = None
        while True:
            snap = await self._call(context, self._store.snapshot)
            progress = drain_progress(snap, request.name, time.time() >= deadline)
            if progress != last:
                yield progress
                last = progress
            if progress.done:
                return
            await asyncio.sleep(0.3)

    def _drain_plan(self, name: str) -> DrainPlan:
        snap = self._store.snapshot()
        if name not in snap.nodes:
            raise NotFound("node", name)
        return plan_drain(snap, name, time.time())

    def _mark_draining(self, name: str, deadline: float) -> None:
        def drain(node: pb.Node) -> None:
            node.unschedulable = True
            node.draining = True
            node.drain_deadline.CopyFrom(ts(deadline))

        if self._store.update(pb.Node, self._store.keys.node(name), drain) is None:
            raise NotFound("node", name)
        self._events.record([event(time.time(), "Node", name, "Draining", "cordoned; migrating instances")])

    async def ListInstances(self, request: api.ListInstancesRequest, context: Ctx) -> api.ListInstancesResponse:
        def list_instances() -> api.ListInstancesResponse:
            # One app's keys, or all instances: never the whole cluster's state for a listing.
            found = self._store.list_prefix(pb.Instance, self._store.keys.instances(request.app))
            insts = [v.value for v in found if not request.node or v.value.node == request.node]
            insts.sort(key=lambda i: (i.app, i.name))
            return api.ListInstancesResponse(instances=insts)

        return await self._call(context, list_instances)

    async def Logs(self, request: pb.LogsRequest, context: Ctx) -> AsyncIterator[pb.LogEntry]:
        snap = await self._call(context, self._store.snapshot)
        try:
            sources = log_sources(snap, request.name)
            async for entry in stream_logs(sources, request, self._agent_tls):
                yield entry
        except NotFound as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except LogsUnavailable as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))

    async def Top(self, request: api.TopRequest, context: Ctx) -> api.TopResponse:
        snap = await self._call(context, self._store.snapshot)
        try:
            return await top(snap, request, self._agent_tls)
        except NotFound as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(e))
            raise  # abort raises; this keeps mypy sure that nothing is returned

    async def Exec(self, request_iterator: AsyncIterator[xpb.ExecInput], context: Ctx) -> AsyncIterator[xpb.ExecOutput]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("msg") != "start" or not first.start.command:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must say what to run")
            return
        snap = await self._call(context, self._store.snapshot)
        try:
            target = exec_target(snap, first.start.instance)
            async for out in relay_exec(target, first, request_iterator, self._agent_tls):
                yield out
        except (NotFound, InstanceNotRunning, NodeUnreachable, ExecFailed) as e:
            await context.abort(STATUS_OF[type(e)], str(e))

    async def Watch(self, request: api.WatchRequest, context: Ctx) -> AsyncIterator[api.WatchResponse]:
        if self._cache is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this scheduler serves no watches")
            return
        if self._watches >= MAX_WATCHES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_WATCHES} watches are open; poll instead")
            return
        changed = asyncio.Event()
        unsubscribe = self._cache.watch(changed)
        self._watches += 1
        try:
            yield api.WatchResponse(revision=self._cache.revision)
            while True:
                await changed.wait()
                await asyncio.sleep(WATCH_COALESCE)  # a burst of status reports: one message
                changed.clear()
                yield api.WatchResponse(revision=self._cache.revision)
        finally:
            unsubscribe()
            self._watches -= 1

    async def Explain(self, request: api.ExplainRequest, context: Ctx) -> api.Explanation:
        def explain_one() -> api.Explanation:
            snap = self._store.snapshot()
            v = snap.instances.get(request.instance)
            if v is None:
                raise NotFound("instance", request.instance)
            inst = v.value
            views = node_views(snap, without=inst.name)
            judged = verdicts(request_for(inst.spec, frozenset(inst.avoid_nodes)), [views[n] for n in sorted(views)])
            nodes = [
                api.NodeVerdict(
                    node=j.node, rejected=j.rejected, scores=[api.Score(name=n, value=s) for n, s in j.scores]
                )
                for j in judged
            ]
            events = self._events.list(limit=50, of=inst.name)
            successor = replaced_by(inst.name, (i.value for i in snap.instances_of(inst.app)))
            return api.Explanation(
                instance=inst,
                summary=summary(inst, judged),
                nodes=nodes,
                avoided=inst.avoid_nodes,
                events=events,
                replaced_by=successor,
            )

        return await self._call(context, explain_one)

    async def Version(self, request: api.VersionRequest, context: Ctx) -> api.VersionInfo:
        def versions() -> api.VersionInfo:
            nodes = self._store.list_prefix(pb.Node, self._store.keys.node(""))
            return api.VersionInfo(
                scheduler=version(), api="orch.v1", nodes={n.value.name: n.value.version for n in nodes}
            )

        return await self._call(context, versions)

    async def RolloutHistory(self, request: api.RolloutHistoryRequest, context: Ctx) -> api.RolloutHistoryResponse:
        def list_history() -> api.RolloutHistoryResponse:
            app, kept = history(self._store, request.app)
            return api.RolloutHistoryResponse(generations=kept, current=app.generation)

        return await self._call(context, list_history)

    async def RolloutUndo(self, request: api.RolloutUndoRequest, context: Ctx) -> api.ApplyResult:
        return await self._call(context, lambda: self._undo(request.app, request.to_generation))

    def _undo(self, name: str, to: int) -> api.ApplyResult:
        """The target's template under the current replicas, labels, service and deadline, applied."""
        target = 0

        def request() -> tuple[api.ApplyRequest, str]:  # from a fresh read on each attempt
            nonlocal target
            app, found = history(self._store, name)
            chosen = undo_target(app, {g.generation: g for g in found}, to)
            target = chosen.generation
            return api.ApplyRequest(apps=[with_template(app.spec, chosen.template)]), f"undo to generation {target}"

        result = self._apply(request).results[0]
        told = f"back to generation {target}'s template, as generation {result.generation}"
        self._events.record([event(time.time(), "App", name, "RolledBack", told)])
        return result

    async def ListEvents(self, request: api.ListEventsRequest, context: Ctx) -> api.ListEventsResponse:
        def read() -> api.ListEventsResponse:
            found = self._events.list(request.limit, request.object, request.with_instances)
            return api.ListEventsResponse(events=found)

        return await self._call(context, read)
