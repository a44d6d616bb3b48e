"""A watch-fed copy of what a snapshot reads (an informer): apps, instances, templates,
nodes, their leases and the schedulers' presence. Reconcile passes read it once it has
seen etcd's current revision (reconciler_loop.py).

It also keeps where each node's container subnet lives (subnet, node_ip: the
host-gw routes every networked agent installs) and numbers that table's
versions; listeners hear ROUTES among the changed nodes when it changes. Only a
change of a subnet or node_ip counts, not the node record's other writes
(registration times, cordons), so agents are not sent the table again for those.

Agent sessions read their desired sets from here instead of querying etcd
for every change. Instances are kept as stored, without their specs; the
templates they run are kept once each (`templates`, from generations/) and
go into a desired set once each (`template_of`, hydrate.py). All mutation happens on the event loop thread; the etcd
watch thread only hands batches over with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from orch.secretrefs import referenced_secrets
from orch.v1 import agent_pb2 as apb
from orch.v1 import types_pb2 as pb
from scheduler.errors import HistoryCompacted
from scheduler.hydrate import Templates
from scheduler.snapshot import ClusterSnapshot, Versioned
from scheduler.store import Store, WatchEvent, decode

log = logging.getLogger(__name__)

Listener = Callable[[set[str]], None]  # gets the names of nodes whose instances changed
CATCH_UP = 0.5  # s current() waits for the watch to bring etcd's current revision
ROUTES = "*routes"  # among a listener's nodes when the routes changed (never a node's name)


@dataclass(frozen=True, slots=True)
class Changes:
    """What one watch batch (or a reload: everything) changed, for the endpoints feed."""

    instances: frozenset[tuple[str, str]] = frozenset()  # (app, instance) whose records changed
    apps: frozenset[str] = frozenset()  # app records
    templates: frozenset[str] = frozenset()  # apps with a generation record written or deleted
    everything: bool = False

    def __or__(self, other: Changes) -> Changes:
        return Changes(
            self.instances | other.instances,
            self.apps | other.apps,
            self.templates | other.templates,
            self.everything or other.everything,
        )


ChangeListener = Callable[[Changes], None]


class ClusterCache:
    def __init__(self, store: Store) -> None:
        self._store = store
        self.revision = 0
        self.cluster_id = 0
        self.instances: dict[str, Versioned[pb.Instance]] = {}
        self.apps: dict[str, Versioned[pb.App]] = {}  # for the endpoints (endpoints.py)
        self.secrets: dict[str, Versioned[pb.Secret]] = {}  # sealed; opened per desired set (sessions.py)
        self.templates = Templates()  # generations/: what the instances run (hydrate.py)
        self.by_node: dict[str, set[str]] = defaultdict(set)
        self.live_nodes: set[str] = set()
        # For the reconciler's snapshots (snapshot()): what a ClusterSnapshot read from etcd holds.
        self.nodes: dict[str, Versioned[pb.Node]] = {}
        self.lease_revisions: dict[str, int] = {}  # node -> its lease key's mod_revision
        self.lease_holders: dict[str, str] = {}  # node -> the scheduler keeping its lease
        self.schedulers: set[str] = set()  # presence keys (presence.py)
        self.generations: dict[str, dict[int, int]] = {}  # app -> {generation: mod_revision}
        # Every change up to this revision is applied. Not `revision`: a watch reply's header
        # may be ahead of its events while etcd catches a watcher up in batches.
        self.seen = 0
        self._applied = asyncio.Event()
        self._lagging = False  # current() found the watch behind etcd (said once per spell)
        self.node_routes: dict[str, tuple[str, str]] = {}  # node -> (subnet, node_ip), nodes with a subnet
        self.routes_version = 0
        self._routes_msg: apb.Routes | None = None
        self._listeners: list[Listener] = []
        self._any_change: list[Callable[[], None]] = []
        self._change_listeners: list[ChangeListener] = []
        self._watchers: set[asyncio.Event] = set()  # API watch streams: set on every change
        self._cancel: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken = asyncio.Event()
        self._reload = True  # read everything before following the watch (run())

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_any_change(self, callback: Callable[[], None]) -> None:
        self._any_change.append(callback)

    def on_changes(self, listener: ChangeListener) -> None:
        """Which instances and apps changed, after each batch (what the endpoints feed recomputes)."""
        self._change_listeners.append(listener)

    def watch(self, changed: asyncio.Event) -> Callable[[], None]:
        """`changed` is set after every change, events included; returns the unsubscribe."""
        self._watchers.add(changed)
        return lambda: self._watchers.discard(changed)

    def snapshot(self) -> ClusterSnapshot:
        """The cluster as of `seen`, the instances as stored (without specs: hydrate them from
        its templates). On the event loop; shallow copies, as the records are never changed in
        place, only replaced."""
        return ClusterSnapshot(
            revision=self.seen,
            apps=dict(self.apps),
            instances=dict(self.instances),
            generations={app: dict(g) for app, g in self.generations.items()},
            templates=self.templates.copy(),
            nodes=dict(self.nodes),
            live_nodes=frozenset(self.live_nodes),
            cluster_id=self.cluster_id,
            lease_revisions=dict(self.lease_revisions),
            lease_holders=dict(self.lease_holders),
            schedulers=frozenset(self.schedulers),
        )

    async def reached(self, revision: int, timeout: float) -> bool:
        """Whether every change up to `revision` got here within `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.seen < revision:
                    self._applied.clear()
                    await self._applied.wait()
        return self.seen >= revision

    def desired_for(self, node: str) -> list[pb.Instance]:
        out = []
        for name in sorted(self.by_node.get(node, ())):
            inst = self.instances[name].value
            if inst.desired in (pb.DESIRED_STATE_RUN, pb.DESIRED_STATE_UNSPECIFIED):
                out.append(inst)
        return out

    def template_of(self, inst: pb.Instance) -> pb.AppSpec | None:
        """The template inst runs, or None if it is not stored (hydrate.Templates.template)."""
        app = self.apps.get(inst.app)
        return self.templates.template(inst, app.value if app is not None else None)

    def routes(self) -> apb.Routes:
        """Every node's subnet and node_ip, built once per version and shared by the sessions."""
        if self._routes_msg is None:
            self._routes_msg = apb.Routes(
                nodes=[apb.NodeRoute(node=n, subnet=s, node_ip=ip) for n, (s, ip) in sorted(self.node_routes.items())]
            )
        return self._routes_msg

    def _set_routes(self, routes: dict[str, tuple[str, str]], touched: set[str]) -> None:
        if routes != self.node_routes:
            self.node_routes = routes
            self.routes_version += 1
            self._routes_msg = None
            touched.add(ROUTES)

    def on_node(self, node: str) -> list[Versioned[pb.Instance]]:
        return [self.instances[n] for n in sorted(self.by_node.get(node, ()))]

    async def run(self) -> None:
        """Load, then follow the watch. A broken stream is taken up again from the last revision
        seen, as etcd keeps every change since (Kubernetes' reflector does the same): a member
        left for another, or etcd away for a while, costs no reload. Only history etcd no longer
        keeps, or etcd behind this cache (restored from a backup), makes it read everything
        again. A reload of 50,000 instances takes seconds of this process's CPU; on a starved
        machine that delayed the lease keep-alives, which broke the watch again."""
        self._loop = asyncio.get_running_loop()
        self._reload = True
        while True:
            if self._reload:
                self._reload = False  # first: a reload asked for during this one is not lost
                await self._load_until_done()
                if self._reload:
                    continue
            elif not await self._etcd_still_ahead():
                continue  # etcd away (try again), or behind this cache (load again)
            self._broken.clear()
            try:
                # From `seen`, not `revision`: a reply's header may be ahead of its events.
                self._cancel = await asyncio.to_thread(
                    self._store.watch, self.seen + 1, self._from_thread, self._on_error
                )
            except Exception as e:  # etcd down (try again), or that revision compacted (load again)
                log.warning("watch failed to start: %s", e)
                self._reload = self._reload or isinstance(e, HistoryCompacted)
                await asyncio.sleep(0.5)
                continue
            await self._broken.wait()
            self._cancel()
            await asyncio.sleep(0.2)

    async def _etcd_still_ahead(self) -> bool:
        """Before a watch is taken up again: etcd has not gone back in history (restored from a
        backup), which a watch from `seen` would not say (etcd waits for that revision). A
        follower's cache is read by no pass, so current() would not notice either."""
        try:
            revision = await asyncio.to_thread(self._store.revision)
        except Exception as e:  # etcd still away
            log.warning("etcd's revision: %s", e)
            await asyncio.sleep(0.5)
            return False
        return not self._went_back(revision, self.seen)

    def _went_back(self, revision: int, seen: int) -> bool:
        """etcd at `revision` is behind what this cache had seen: it is read again whole."""
        if revision >= seen:
            return False
        log.warning("etcd is at revision %d, behind this cache (%d): reloading", revision, seen)
        self._reload = True
        return True

    async def _load_until_done(self) -> None:
        """Changes may have been missed (history compacted): nothing is followed again, nor
        trusted by a reconcile pass, before a whole new read."""
        while True:  # etcd may be starting, or down
            try:
                await self._load()
                return
            except Exception as e:
                log.warning("loading the cluster state failed: %s; retrying", e)
                await asyncio.sleep(0.5)

    async def current(self, timeout: float = CATCH_UP) -> ClusterSnapshot | None:
        """The cache as a snapshot holding everything etcd held when this was called: etcd's
        current revision from a quorum read, then the watch's events up to it (a consistent
        read from cache, as kube-apiserver's). None if the watch has not brought them within
        `timeout` (a lagging or hung watch; revisions of writers outside our prefix, when etcd
        is shared, look the same): the caller reads etcd itself."""
        # `seen` from before the read: the watch may bring newer changes while it is in flight.
        seen = self.seen
        revision = await asyncio.to_thread(self._store.revision)
        if self._went_back(revision, seen):  # restored from a backup: load again
            self._broken.set()
            return None
        if not await self.reached(revision, timeout):
            if not self._lagging:  # once per spell, not once per pass
                log.info("the cache has not seen etcd's revision %d after %.1fs: reading etcd", revision, timeout)
            self._lagging = True
            return None
        self._lagging = False
        return self.snapshot()

    async def _load(self) -> None:
        snap = await asyncio.to_thread(self._store.snapshot, False)  # as stored: specs come from templates
        secrets = await asyncio.to_thread(self._store.list_prefix, pb.Secret, self._store.keys.secrets())
        # From here on nothing awaits: no one sees half of the new state.
        old_nodes = set(self.by_node)
        self.revision = snap.revision
        self.cluster_id = snap.cluster_id
        self.instances = dict(snap.instances)
        self.apps = dict(snap.apps)
        self.templates = snap.templates
        self.by_node = defaultdict(set)
        for name, v in self.instances.items():
            if v.value.node:
                self.by_node[v.value.node].add(name)
        self.live_nodes = set(snap.live_nodes)
        self.nodes = dict(snap.nodes)
        self.lease_revisions = dict(snap.lease_revisions)
        self.lease_holders = dict(snap.lease_holders)
        self.schedulers = set(snap.schedulers)
        self.generations = {app: dict(g) for app, g in snap.generations.items()}
        self.secrets = {s.value.name: s for s in secrets}
        touched = old_nodes | set(self.by_node)
        routes = {n: (v.value.subnet, v.value.node_ip) for n, v in snap.nodes.items() if v.value.subnet}
        self._set_routes(routes, touched)
        self.seen = snap.revision
        self._applied.set()
        for listener in list(self._change_listeners):
            listener(Changes(everything=True))
        self._notify(touched)

    def _from_thread(self, events: list[WatchEvent], revision: int) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._apply, events, revision)

    def _on_error(self, err: Exception) -> None:  # etcd watch thread
        log.warning("etcd watch broke: %s", err)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._watch_broke, isinstance(err, HistoryCompacted))

    def _watch_broke(self, compacted: bool) -> None:
        self._reload = self._reload or compacted
        self._broken.set()

    def _apply(self, events: list[WatchEvent], revision: int) -> None:
        # A batch of a watch given up (or of one before a reload) may come after its successor's:
        # what `seen` covers is applied already (etcd never splits a revision across replies).
        events = [ev for ev in events if ev.mod_revision > self.seen]
        touched: set[str] = set()
        instances: set[tuple[str, str]] = set()
        apps: set[str] = set()
        templates: set[str] = set()
        for ev in events:
            kind, _, rest = ev.key.partition("/")
            if kind == "instances":
                app, _, name = rest.partition("/")
                instances.add((app, name))
                self._apply_instance(name, ev, touched)
            elif kind == "apps":
                apps.add(rest)
                self._apply_app(rest, ev)
            elif kind == "nodes":
                self._apply_node(rest, ev, touched)
            elif kind == "generations":
                templates.add(rest.rpartition("/")[0])
                self._apply_generation(rest, ev)
            elif kind == "secrets":
                self._apply_secret(rest, ev, touched)
            elif kind == "leases":
                self._apply_lease(rest, ev)
        self.revision = max(self.revision, revision)
        self.seen = max([self.seen, *(ev.mod_revision for ev in events)])
        self._applied.set()
        for changed in self._watchers:
            changed.set()
        if all(ev.key.startswith("events/") for ev in events):
            return  # our own event records: nothing to reconcile
        if instances or apps or templates:
            changes = Changes(frozenset(instances), frozenset(apps), frozenset(templates))
            for listener in list(self._change_listeners):
                listener(changes)
        self._notify(touched)

    def _apply_instance(self, name: str, ev: WatchEvent, touched: set[str]) -> None:
        old = self.instances.get(name)
        if old is not None and ev.value is not None and old.mod_revision >= ev.mod_revision:
            return  # already part of the loaded state (a watch resumed after a reload)
        if old is not None and old.value.node:
            self.by_node[old.value.node].discard(name)
            touched.add(old.value.node)
        if ev.value is None:
            self.instances.pop(name, None)
            return
        inst = decode(pb.Instance, ev.value, ev.key)
        if inst is None:  # left out, as a snapshot leaves it out
            self.instances.pop(name, None)
            return
        self.instances[name] = Versioned(inst, ev.mod_revision)
        if inst.node:
            self.by_node[inst.node].add(name)
            touched.add(inst.node)

    def _apply_lease(self, rest: str, ev: WatchEvent) -> None:
        what, _, name = rest.partition("/")
        if what == "schedulers":
            (self.schedulers.add if ev.value is not None else self.schedulers.discard)(name)
        elif what != "nodes":
            return
        elif ev.value is None:
            self.live_nodes.discard(name)
            self.lease_revisions.pop(name, None)
            self.lease_holders.pop(name, None)
        else:
            self.live_nodes.add(name)
            self.lease_revisions[name] = ev.mod_revision
            if (lease := decode(pb.Node, ev.value, ev.key)) is not None:
                self.lease_holders[name] = lease.scheduler
            else:
                self.lease_holders.pop(name, None)

    def _apply_app(self, name: str, ev: WatchEvent) -> None:
        old = self.apps.get(name)
        if old is not None and ev.value is not None and old.mod_revision >= ev.mod_revision:
            return  # already part of the loaded state
        app = decode(pb.App, ev.value, ev.key) if ev.value is not None else None
        if app is None:
            self.apps.pop(name, None)
        else:
            self.apps[name] = Versioned(app, ev.mod_revision)

    def _apply_generation(self, rest: str, ev: WatchEvent) -> None:
        app, _, n = rest.rpartition("/")
        if not n.isdigit():
            return
        record = decode(pb.AppGeneration, ev.value, ev.key) if ev.value is not None else None
        if record is None:
            self.templates.drop(app, int(n))
            if (kept := self.generations.get(app)) is not None:
                kept.pop(int(n), None)
                if not kept:
                    del self.generations[app]
        else:
            self.templates.put(app, int(n), record)
            self.generations.setdefault(app, {})[int(n)] = ev.mod_revision

    def _apply_secret(self, name: str, ev: WatchEvent, touched: set[str]) -> None:
        secret = decode(pb.Secret, ev.value, ev.key) if ev.value is not None else None
        if secret is None:
            self.secrets.pop(name, None)
        else:
            self.secrets[name] = Versioned(secret, ev.mod_revision)
        # The nodes that run an app using it get their desired set again (new starts see the change).
        for inst in self.instances.values():
            template = self.template_of(inst.value) if inst.value.node else None
            if template is not None and name in referenced_secrets(template):
                touched.add(inst.value.node)

    def _apply_node(self, name: str, ev: WatchEvent, touched: set[str]) -> None:
        node = decode(pb.Node, ev.value, ev.key) if ev.value is not None else None
        if node is None:
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = Versioned(node, ev.mod_revision)
        now = (node.subnet, node.node_ip) if node is not None and node.subnet else None
        if self.node_routes.get(name) == now:
            return  # most node writes (registration times, cordons) leave the routes alone
        routes = {n: r for n, r in self.node_routes.items() if n != name}  # a new dict: a new version
        if now is not None:
            routes[name] = now
        self._set_routes(routes, touched)

    def _notify(self, nodes: set[str]) -> None:
        for listener in list(self._listeners):
            listener(nodes)
        for callback in self._any_change:
            callback()
