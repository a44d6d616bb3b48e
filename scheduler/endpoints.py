"""The cluster's endpoints for the agents' DNS servers and VIP rules.

Every agent needs the same cluster-wide view: each app with its virtual IP and
the address of each of its running instances, on any node, marked ready or
not. `endpoints_of` computes it from a set of instances (pure); `EndpointsFeed`
keeps it up to date from the cache's changes, one instance at a time, and wakes
the agent sessions only when an endpoint really changed, so a status report
that moves no endpoint costs the sessions nothing.

What a session sends: the whole view first, then only what changed since its
previous message (`since`): each change of an instance reaches every agent
once, as one endpoint, instead of the whole cluster's endpoints again. At 1,000
nodes and 10,000 instances the whole view on every change made the scheduler
send gigabytes and grow to 1.7 GiB (docs/benchmarks.md, hollow). The feed
keeps a log of which (app, instance) changed at which version; a session too
far behind it (the log is trimmed) gets the whole view again. Updates are paced
so that the sessions send about FANOUT_PER_S messages a second between them,
woken a chunk at a time. Agents that do
not take updates (`Register.accepts_endpoint_updates`) get the whole view on
every change, as before.

What counts: an instance the scheduler still wants (desired RUN) that its node
reports Running with an address. `ready` is the readiness rule of the
reconciler (`rollout.is_ready`): an instance that stops being ready, or is
told to stop, leaves `<app>.<domain>` and the VIP at the next update, before
its container is gone.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.cache import Changes, ClusterCache
from scheduler.rollout import is_ready
from scheduler.snapshot import wants_to_run

__all__ = ["EndpointsFeed", "endpoints_of"]


def _serves(inst: pb.Instance) -> bool:
    return (
        wants_to_run(inst)
        and bool(inst.node)
        and inst.status.state == pb.INSTANCE_STATE_RUNNING
        and bool(inst.status.ip)
    )


def _own_spec(inst: pb.Instance) -> pb.AppSpec | None:
    return inst.spec


def endpoints_of(
    apps: Mapping[str, pb.App],
    instances: Iterable[pb.Instance],
    service_cidr: str,
    template_of: Callable[[pb.Instance], pb.AppSpec | None] = _own_spec,
) -> apb.Endpoints:
    """Every app (sorted), each with its running instances (sorted by name). template_of: where an
    instance's probes are found (the cache's instances carry no spec); without one it serves nobody."""
    by_app: dict[str, list[apb.Endpoint]] = defaultdict(list)
    for inst in instances:
        if inst.app in apps and _serves(inst) and (template := template_of(inst)) is not None:
            ready = is_ready(inst, template)
            by_app[inst.app].append(apb.Endpoint(instance=inst.name, ip=inst.status.ip, node=inst.node, ready=ready))
    out = apb.Endpoints(service_cidr=service_cidr)
    for name in sorted(apps):
        entry = out.apps.add()
        entry.CopyFrom(_header(name, apps[name]))
        entry.endpoints.extend(sorted(by_app.get(name, ()), key=lambda e: e.instance))
    return out


def _header(name: str, app: pb.App) -> apb.AppEndpoints:
    """An app's entry without its endpoints: its name, VIP and service ports."""
    entry = apb.AppEndpoints(app=name, service_ip=app.service_ip)
    if app.spec.HasField("service"):
        entry.service.CopyFrom(app.spec.service)
    return entry


def _endpoint(inst: pb.Instance, template_of: Callable[[pb.Instance], pb.AppSpec | None]) -> apb.Endpoint | None:
    if not _serves(inst) or (template := template_of(inst)) is None:
        return None
    return apb.Endpoint(instance=inst.name, ip=inst.status.ip, node=inst.node, ready=is_ready(inst, template))


MIN_INTERVAL = 0.05  # s between two recomputations: a burst of status reports becomes one update
# Messages a second the sessions send between them: the interval grows with the sessions (1,000
# agents: an update every 0.5 s; 5,000: 2.5 s), so fan-out costs the event loop a bounded share
# whatever the fleet, each update carries more, and all sessions send the same bytes (one
# serialization). As Istio's debounce of pushes to Envoys, kube-proxy's minimum sync period.
FANOUT_PER_S = 2000
APP = ""  # in the change log: the app's own entry (its VIP, its ports, whether it exists)
LOG_KEPT = 20_000  # changes the log keeps at least; past twice that (or the endpoints), its older half goes


@dataclass(slots=True)
class _AppView:
    header: apb.AppEndpoints
    generation: int  # the app record's: an instance of it without a template record runs its spec (hydrate.py)
    endpoints: dict[str, apb.Endpoint] = field(default_factory=dict)


class EndpointsFeed:
    """The current endpoints, what changed since any recent version, and who to wake when they
    change. Runs on the event loop (the cache calls it there)."""

    def __init__(self, cache: ClusterCache, service_cidr: str) -> None:
        self._cache = cache
        self.service_cidr = service_cidr
        self.version = 0  # bumped on every real change; sessions compare it with what they sent
        self._apps: dict[str, _AppView] = {}
        self._log: list[tuple[int, str, str]] = []  # (version, app, instance or APP), in version order
        self._floor = 0  # the log has every change after this version
        self._whole: apb.Endpoints | None = None  # of this version, built once for every session
        self._wire: dict[int, bytes] = {}  # from version (-1: none) -> since() as a SchedulerMessage
        self._pending = Changes()
        self._listeners: set[Callable[[], None]] = set()
        self._to_wake: list[Callable[[], None]] = []  # this round's sessions not woken yet
        self._waking: asyncio.TimerHandle | None = None  # the round's next chunk
        self._again = False  # a version was made during this round: another round follows
        self._scheduled = False
        self._last_refresh = float("-inf")
        cache.on_changes(self._changed)

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        self._listeners.add(listener)
        return lambda: self._listeners.discard(listener)

    @property
    def message(self) -> apb.Endpoints:
        """The whole view."""
        if self._whole is None:
            self._whole = apb.Endpoints(service_cidr=self.service_cidr)
            for name in sorted(self._apps):
                view = self._apps[name]
                entry = self._whole.apps.add()
                entry.CopyFrom(view.header)
                entry.endpoints.extend(view.endpoints[n] for n in sorted(view.endpoints))
        return self._whole

    def since(self, version: int) -> apb.Endpoints:
        """What a session that last sent `version` sends now: the changes since (update), or the
        whole view if it sent none yet or the log no longer reaches back that far."""
        if version < max(self._floor, 0):
            return self.message
        touched: dict[str, set[str]] = defaultdict(set)
        for _, app, instance in self._log[bisect.bisect_right(self._log, (version, "\uffff", "")) :]:
            touched[app].add(instance)
        out = apb.Endpoints(service_cidr=self.service_cidr, update=True)
        for name in sorted(touched):
            view = self._apps.get(name)
            if view is None:
                out.removed_apps.append(name)
                continue
            entry = out.apps.add()
            entry.CopyFrom(view.header)
            for instance in sorted(touched[name] - {APP}):
                if (ep := view.endpoints.get(instance)) is not None:
                    entry.endpoints.append(ep)
                else:
                    entry.removed.append(instance)
        return out

    def wire_since(self, version: int) -> bytes:
        """since(version) as a serialized SchedulerMessage, made once for every session that sends
        it: a thousand sessions sending one update share one copy (sessions.serialize)."""
        key = version if version >= max(self._floor, 0) else -1
        if key not in self._wire:
            self._wire[key] = apb.SchedulerMessage(endpoints=self.since(version)).SerializeToString()
        return self._wire[key]

    def _changed(self, changes: Changes) -> None:
        self._pending |= changes
        if self._scheduled:
            return  # watch batches that arrive together are folded into one recomputation
        self._scheduled = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tests, a synchronous caller): now
            self.refresh()
            return
        loop.call_later(max(0.0, self._last_refresh + self.interval() - time.monotonic()), self.refresh)

    def interval(self) -> float:
        """Seconds between two updates: MIN_INTERVAL, or longer with many sessions (FANOUT_PER_S)."""
        return max(MIN_INTERVAL, len(self._listeners) / FANOUT_PER_S)

    def refresh(self) -> None:
        self._scheduled = False
        self._last_refresh = time.monotonic()
        changes, self._pending = self._pending, Changes()
        cache = self._cache
        if changes.everything:
            rescan = set(self._apps) | set(cache.apps)
            headers = rescan
        else:
            # A new or deleted app, a new generation, or a template written: each of its instances
            # may start or stop serving. Other writes of an app record (its rollout status) touch
            # only its VIP and ports, if anything: a template never changes without a new
            # generation (api.py bumps it, and writes the generation record in the same txn).
            def in_view(app: str) -> int | None:
                view = self._apps.get(app)
                return view.generation if view is not None else None

            def in_cache(app: str) -> int | None:
                v = cache.apps.get(app)
                return v.value.generation if v is not None else None

            headers = set(changes.apps)
            rescan = {a for a in changes.apps if in_view(a) != in_cache(a)}
            rescan |= changes.templates
        changed: list[tuple[str, str]] = []
        for app in sorted(headers | rescan):
            changed += self._refresh_header(app)
        if rescan:
            by_app: dict[str, list[pb.Instance]] = defaultdict(list)
            for stored in cache.instances.values():
                if stored.value.app in rescan:
                    by_app[stored.value.app].append(stored.value)
            for app in sorted(rescan):
                changed += self._refresh_app(app, by_app.get(app, []))
        for app, name in changes.instances:
            if app not in rescan and app in self._apps:
                now = cache.instances.get(name)
                changed += self._set(app, name, now.value if now is not None and now.value.app == app else None)
        if not changed:
            return
        self.version += 1
        self._log.extend((self.version, app, name) for app, name in changed)
        self._whole = None
        self._wire.clear()
        self._trim()
        self._wake_all()

    def _wake_all(self) -> None:
        """Wake the sessions FANOUT_PER_S * MIN_INTERVAL at a time, MIN_INTERVAL apart: 5,000
        sessions sending an update in one instant held 5,000 copies of it in the scheduler at
        once. A round takes about interval(). A version made during a round is sent by the
        sessions the round has yet to wake; the others get it in a round after this one."""
        if self._waking is not None:
            self._again = True
            return
        self._to_wake = list(self._listeners)
        self._wake_some()

    def _wake_some(self) -> None:
        self._waking = None
        chunk = max(1, int(FANOUT_PER_S * MIN_INTERVAL))
        woken, self._to_wake = self._to_wake[:chunk], self._to_wake[chunk:]
        for listener in woken:
            if listener in self._listeners:  # not a session that closed meanwhile
                listener()
        if not self._to_wake and self._again:
            self._again, self._to_wake = False, list(self._listeners)
        if not self._to_wake:
            return
        try:
            self._waking = asyncio.get_running_loop().call_later(MIN_INTERVAL, self._wake_some)
        except RuntimeError:  # no loop (a synchronous caller): the rest now
            self._wake_some()

    def _refresh_header(self, name: str) -> list[tuple[str, str]]:
        app = self._cache.apps.get(name)
        view = self._apps.get(name)
        if app is None:
            if view is None:
                return []
            del self._apps[name]  # the agents drop the app with all its endpoints
            return [(name, APP), *((name, n) for n in view.endpoints)]
        header = _header(name, app.value)
        if view is None:
            self._apps[name] = _AppView(header, app.value.generation)
            return [(name, APP)]
        view.generation = app.value.generation
        if view.header == header:
            return []
        view.header = header
        return [(name, APP)]

    def _refresh_app(self, app: str, instances: list[pb.Instance]) -> list[tuple[str, str]]:
        view = self._apps.get(app)
        if view is None:
            return []
        present = {i.name for i in instances}
        changed = [c for i in instances for c in self._set(app, i.name, i)]
        for gone in [n for n in view.endpoints if n not in present]:
            changed += self._set(app, gone, None)
        return changed

    def _set(self, app: str, name: str, inst: pb.Instance | None) -> list[tuple[str, str]]:
        """inst's endpoint (None: it has none) into its app's view; the change, if any."""
        endpoints = self._apps[app].endpoints
        ep = _endpoint(inst, self._cache.template_of) if inst is not None else None
        old = endpoints.get(name)
        if ep == old:
            return []
        if ep is None:
            del endpoints[name]
        else:
            endpoints[name] = ep
        return [(app, name)]

    def _trim(self) -> None:
        """Keep the log to about twice the endpoints (at least LOG_KEPT): a session further
        behind gets the whole view, which costs no more than replaying that much."""
        total = sum(len(v.endpoints) for v in self._apps.values())
        if len(self._log) <= 2 * max(LOG_KEPT, total):
            return
        self._floor = self._log[len(self._log) // 2][0]
        self._log = self._log[bisect.bisect_right(self._log, (self._floor, "\uffff", "")) :]
