"""The typed face of etcd: with etcd_failover.py, the only modules that talk to it.

Values are the API's protobuf messages under one key prefix:

    apps/<name>             App
    instances/<app>/<name>  Instance, without its spec (hydrate.py: read back from its generation)
    nodes/<name>            Node
    leases/nodes/<name>     Node (name, and the scheduler keeping it alive), on the node's etcd lease
    leases/schedulers/<id>  Node (the scheduler's id), on a lease the scheduler keeps alive (presence.py)
    leader                  scheduler id, attached to the leader's lease
    events/<time>-<rand>    Event, attached to a TTL lease (events.py); the same Event again under
    eventsof/<object>/<time>-<rand> and, an app's or an instance's, appevents/<app>/<time>-<rand>
    serviceips/<ip>         ServiceIp: the app holding that virtual IP (services.py)
    generations/<app>/<n>   AppGeneration: the template of the app's generation n (generations.py)

Every write that depends on a read carries the `mod_revision` it read
(`expect`); a failed compare raises `Conflict`, so two schedulers can never
double-place or resurrect an instance. The reconciler's writes also carry a
`Fence` (the leader key is still the one it created); a failed fence raises
`NotLeader`, so a pass that outlived its leadership writes nothing.

Retries and member failover (RECIPES §1) are etcd_failover.py's: every call
here goes through `Failover.call`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import etcd3
import etcd3.exceptions
import etcd3.utils
import etcd3.watch
import grpc
from google.protobuf.message import DecodeError, Message

from orch.tls import Credentials
from orch.v1 import types_pb2 as pb
from scheduler.contact import Contact
from scheduler.errors import Conflict, HistoryCompacted, NotLeader, StoreUnavailable
from scheduler.etcd_failover import (
    CALL_TIMEOUT,
    CHANNEL_OPTIONS,
    REQUIRE_LEADER,
    RETRY_FOR,
    TIME_RETRY,
    TRANSIENT_CODES,
    Failover,
    KeepAliveStream,
)
from scheduler.hydrate import Templates, stored
from scheduler.snapshot import ClusterSnapshot, Versioned

log = logging.getLogger(__name__)

# python3-etcd3 0.13 uses `six` in its watch thread without importing it; a
# broken watch stream then dies with NameError and callbacks are never told.
etcd3.watch.six = types.SimpleNamespace(itervalues=lambda d: iter(d.values()))

M = TypeVar("M", bound=Message)

# etcd's default --max-txn-ops: compares and operations each count.
MAX_TXN_OPS = 128
CHUNK = MAX_TXN_OPS - 1  # writes per transaction: one compare is left for a Fence
# etcd refuses a request over --max-request-bytes (1.5 MiB by default): a transaction's
# writes stay under 1 MiB, with room for keys, compares and framing.
CHUNK_BYTES = 1 << 20
PAGE = 2000  # keys per range read: a big cluster is read in pages, never in one reply
SNAPSHOT_KINDS = (
    "apps/",
    "instances/",
    "nodes/",
    "leases/nodes/",
    "leases/schedulers/",
    "generations/",  # the templates the instances' specs come from
)  # not events/: they are listed apart


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: Message
    expect: int | None  # mod_revision read; 0 = must not exist; None = unconditional
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    expect: int | None


Write = Put | Delete


@dataclass(frozen=True, slots=True)
class Fence:
    """Leadership as etcd sees it: the leader key still has the create_revision
    it got when this scheduler created it (a new leader creates a new key)."""

    key: str
    create_revision: int
    identity: str = ""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    key: str  # without the prefix
    value: bytes | None  # None for a delete
    mod_revision: int


class Keys:
    """Key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"

    def app(self, name: str) -> str:
        return f"{self.prefix}apps/{name}"

    def instance(self, app: str, name: str) -> str:
        return f"{self.prefix}instances/{app}/{name}"

    def instances(self, app: str = "") -> str:
        """The prefix of one app's instances, or of all."""
        return f"{self.prefix}instances/{app}/" if app else f"{self.prefix}instances/"

    def node(self, name: str) -> str:
        return f"{self.prefix}nodes/{name}"

    def node_lease(self, name: str) -> str:
        return f"{self.prefix}leases/nodes/{name}"

    def scheduler_presence(self, identity: str) -> str:
        return f"{self.prefix}leases/schedulers/{identity}"

    def leader(self) -> str:
        return f"{self.prefix}leader"

    def secret(self, name: str) -> str:
        return f"{self.secrets()}{name}"

    def secrets(self) -> str:
        """Sealed secrets, pb.Secret (scheduler/secrets.py)."""
        return f"{self.prefix}secrets/"

    def network(self) -> str:
        """The cluster's address ranges, pb.ClusterNetwork (scheduler/network_config.py)."""
        return f"{self.prefix}config/network"

    def subnets(self) -> str:
        """Subnet claims: one key per node subnet, whose value is pb.Node(name, subnet)."""
        return f"{self.prefix}subnets/"

    def subnet(self, subnet: str) -> str:
        return f"{self.subnets()}{subnet.replace('/', '-')}"

    def event(self, suffix: str) -> str:
        return f"{self.prefix}events/{suffix}"

    def event_of(self, obj: str, suffix: str) -> str:
        """An event's copy under its object's name: `orch describe` of an instance reads its
        own events as a range, not the whole hour of everyone's."""
        return f"{self.events_of(obj)}{suffix}"

    def events_of(self, obj: str) -> str:
        return f"{self.prefix}eventsof/{obj}/"

    def app_event(self, app: str, suffix: str) -> str:
        """An app's, or one of its instances', event's copy under the app: `orch describe app`
        reads the newest of them all at the end of one range."""
        return f"{self.app_events(app)}{suffix}"

    def app_events(self, app: str) -> str:
        return f"{self.prefix}appevents/{app}/"

    def service_ip(self, ip: str) -> str:
        return f"{self.prefix}serviceips/{ip}"

    def generations(self, app: str) -> str:
        """The prefix of one app's stored templates (never under apps/: the snapshot reads those as App)."""
        return f"{self.prefix}generations/{app}/"

    def generation(self, app: str, n: int) -> str:
        return f"{self.generations(app)}{n}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    secure: bool  # TLS with a client certificate


def parse_endpoints(endpoints: Sequence[str], tls: bool = False) -> list[Endpoint]:
    """[https://|http://]HOST:PORT; without a scheme, https when there are TLS files.

    https needs TLS files, and with them plaintext is refused: one plaintext
    endpoint would hand etcd's traffic (and so the cluster) to whoever listens."""
    parsed = []
    for ep in endpoints:
        scheme, sep, rest = ep.partition("://")
        if not sep:
            scheme, rest = ("https" if tls else "http"), ep
        host, _, port = rest.rstrip("/").rpartition(":")
        if scheme not in ("http", "https") or not host or not port.isdigit():
            raise ValueError(f'etcd endpoint "{ep}" is not [https://]HOST:PORT')
        if scheme == "https" and not tls:
            raise ValueError(f'etcd endpoint "{ep}" is https: it needs a client certificate (--etcd-ca/-cert/-key)')
        if scheme == "http" and tls:
            raise ValueError(f'etcd endpoint "{ep}" is plaintext http, but etcd TLS files were given: use https://')
        parsed.append(Endpoint(host, int(port), scheme == "https"))
    return parsed


def decode(cls: type[M], data: bytes, key: str) -> M | None:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        log.error("skipping undecodable value at %s", key)
        return None
    return msg


class Store:
    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = "/orch/",
        timeout: float = CALL_TIMEOUT,
        tls: Credentials | None = None,
        contact: Contact | None = None,
        retry_for: float = RETRY_FOR,
        page: int = PAGE,
    ) -> None:
        if page < 1:
            raise ValueError(f"etcd page size must be at least 1, not {page}")
        self.keys = Keys(prefix)
        self._page = page
        creds = tls.channel_credentials() if tls is not None else None
        eps = [
            etcd3.Endpoint(ep.host, ep.port, secure=ep.secure, creds=creds, time_retry=TIME_RETRY, opts=CHANNEL_OPTIONS)
            for ep in parse_endpoints(endpoints, tls is not None)
        ]
        # failover=True: after one error the client moves on to the next
        # endpoint instead of refusing every call for minutes.
        self._client = etcd3.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)
        self._client.metadata = REQUIRE_LEADER
        self._failover = Failover(self._client, contact or Contact(), retry_for)
        self._call = self._failover.call
        self.contact = self._failover.contact
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="etcd-commit")
        # Open watches: their member, and how to end one from here (abandon()).
        self._watches: dict[int, tuple[str, Callable[[Exception], None]]] = {}
        self._watch_seq = itertools.count()
        self._watches_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        self._closed = True  # the watches' streams end now: that is no news to tell
        self._pool.shutdown(wait=False)
        self._client.close()

    # -- reads ---------------------------------------------------------

    def snapshot(self, hydrate: bool = True) -> ClusterSnapshot:
        """Apps, instances, nodes and live node leases (not events), in pages, all at one revision.
        The instances are hydrated (hydrate.py) unless `hydrate` is False: then as stored, with
        the snapshot's templates to hydrate them from (the cache keeps them so)."""
        apps: dict[str, Versioned[pb.App]] = {}
        templates = Templates()
        generations: dict[str, dict[int, int]] = {}
        instances: dict[str, Versioned[pb.Instance]] = {}
        nodes: dict[str, Versioned[pb.Node]] = {}
        live: dict[str, int] = {}
        holders: dict[str, str] = {}
        schedulers: set[str] = set()
        revision, cluster_id = 0, 0
        plen = len(self.keys.prefix)
        for kind in SNAPSHOT_KINDS:
            for resp in self._pages(self.keys.prefix + kind, revision, "snapshot"):
                if not revision:  # the first reply fixes the revision every later page is read at
                    revision, cluster_id = int(resp.header.revision), int(resp.header.cluster_id)
                for kv in resp.kvs:
                    key = kv.key.decode()[plen:]
                    rest = key[len(kind) :]
                    if kind == "apps/":
                        if app := decode(pb.App, kv.value, key):
                            apps[rest] = Versioned(app, kv.mod_revision)
                    elif kind == "instances/":
                        if inst := decode(pb.Instance, kv.value, key):
                            instances[inst.name] = Versioned(inst, kv.mod_revision)
                    elif kind == "nodes/":
                        if node := decode(pb.Node, kv.value, key):
                            nodes[rest] = Versioned(node, kv.mod_revision)
                    elif kind == "generations/":
                        app, _, n = rest.rpartition("/")
                        if n.isdigit() and (record := decode(pb.AppGeneration, kv.value, key)):
                            templates.put(app, int(n), record)
                            generations.setdefault(app, {})[int(n)] = kv.mod_revision
                    elif kind == "leases/nodes/":
                        live[rest] = kv.mod_revision
                        if lease := decode(pb.Node, kv.value, key):
                            holders[rest] = lease.scheduler
                    else:
                        schedulers.add(rest)
        if hydrate:
            owners = {name: v.value for name, v in apps.items()}
            filled = templates.hydrate_all((v.value for v in instances.values()), owners)
            pairs = zip(instances.values(), filled, strict=True)
            instances = {inst.name: Versioned(inst, v.mod_revision) for v, inst in pairs}
        return ClusterSnapshot(
            revision=revision,
            apps=apps,
            instances=instances,
            generations=generations,
            templates=templates,
            nodes=nodes,
            live_nodes=frozenset(live),
            cluster_id=cluster_id,
            lease_revisions=live,
            lease_holders=holders,
            schedulers=frozenset(schedulers),
        )

    def _pages(self, prefix: str, revision: int = 0, what: str = "") -> Iterator[Any]:
        """The prefix's keys in pages (RangeResponses), all read at one revision: `revision`,
        or the first page's. A revision compacted meanwhile fails (StoreUnavailable): re-read."""
        start = etcd3.utils.to_bytes(prefix)
        while True:
            resp = self._read(prefix, start, self._page, revision, what=what)
            yield resp
            if not resp.more or not resp.kvs:
                return
            revision = revision or int(resp.header.revision)
            start = resp.kvs[-1].key + b"\0"  # the next key after the last one read

    def revision(self) -> int:
        """etcd's current revision, from a quorum read (of one small key)."""
        key = self.keys.leader()
        resp = self._read(key, etcd3.utils.to_bytes(key), 1, 0, what="read the current revision")
        return int(resp.header.revision)

    def get(self, cls: type[M], key: str) -> Versioned[M] | None:
        value, meta = self._call(f"get {key}", lambda _: self._client.get(key))
        if value is None:
            return None
        msg = decode(cls, value, key)
        if msg is None:
            return None
        return self._hydrated([Versioned(msg, meta.mod_revision)])[0]

    def _read(
        self,
        prefix: str,
        start: bytes,
        limit: int,
        revision: int,
        descending: bool = False,
        what: str = "",
        end: bytes = b"",
    ) -> Any:
        """One page of prefix's keys in [start, end) (a RangeResponse; end defaults to the
        prefix's end); `what` names it in errors."""
        end = end or etcd3.utils.prefix_range_end(etcd3.utils.to_bytes(prefix))
        page = self._failover.range_page
        return self._call(what or f"list {prefix}", lambda _: page(start, end, limit, revision, descending))

    def list_prefix(self, cls: type[M], prefix: str, hydrate: bool = True) -> list[Versioned[M]]:
        """hydrate=False: instances as stored, without their specs (for who needs no spec)."""
        out = []
        for resp in self._pages(prefix):
            for kv in resp.kvs:
                if (msg := decode(cls, kv.value, kv.key.decode())) is not None:
                    out.append(Versioned(msg, kv.mod_revision))
        return self._hydrated(out) if hydrate else out

    def _hydrated(self, found: list[Versioned[M]]) -> list[Versioned[M]]:
        """Instances with their specs (hydrate.py), from their apps and generations; anything else as read."""
        insts = [v for v in found if isinstance(v.value, pb.Instance)]
        if not insts:
            return found
        apps: dict[str, pb.App | None] = {}
        templates = Templates()
        for name in sorted({v.value.app for v in insts}):  # type: ignore[attr-defined]
            app = self.get(pb.App, self.keys.app(name))
            apps[name] = app.value if app else None
            for gen in self.list_prefix(pb.AppGeneration, self.keys.generations(name)):
                templates.put(name, gen.value.generation, gen.value)
        out: list[Versioned[M]] = []
        specs: dict[tuple[str, int], pb.AppSpec] = {}  # each (app, generation)'s spec made once
        for v in found:
            if isinstance(v.value, pb.Instance):
                hydrated = templates.hydrate(v.value, apps[v.value.app], specs)
                out.append(Versioned(hydrated, v.mod_revision))  # type: ignore[arg-type]
            else:
                out.append(v)
        return out

    def last(self, cls: type[M], prefix: str, n: int) -> list[Versioned[M]]:
        """The n greatest keys under prefix (the newest, for time-ordered keys), in key order."""
        resp = self._read(prefix, etcd3.utils.to_bytes(prefix), n, 0, descending=True)
        found = [(decode(cls, kv.value, kv.key.decode()), kv.mod_revision) for kv in reversed(resp.kvs)]
        return [Versioned(msg, revision) for msg, revision in found if msg is not None]

    # -- writes --------------------------------------------------------

    def commit(self, writes: Sequence[Write]) -> int:
        """Apply writes atomically per chunk of MAX_TXN_OPS; returns the revision.

        Each write is guarded on its own, so a later chunk's conflict never
        makes an earlier chunk wrong: the caller re-reads and retries.
        """
        chunks = _chunks(writes)
        if len(chunks) <= 1:
            return self._commit_chunk(chunks[0]) if chunks else 0
        # In flight together, etcd batches the chunks' proposals into fewer disk syncs.
        results = list(self._pool.map(self._try_chunk, chunks))
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise failed[0]
        return max(r for r in results if isinstance(r, int))

    def commit_partial(self, writes: Sequence[Write], fence: Fence | None = None) -> tuple[int, list[Write]]:
        """Apply what still applies: a chunk that lost a race is retried write by
        write, so one busy key (an instance its agent keeps reporting on) cannot
        hold back the rest. Returns (revision, the writes that were refused). StoreUnavailable,
        when a chunk could not be written, carries the writes that landed (`landed`).

        With a fence, every transaction also requires that leadership; once it
        fails, NotLeader is raised and nothing more is tried."""
        chunks = _chunks(writes)

        def attempt(chunk: Sequence[Write]) -> int | Exception:
            return self._try_chunk(chunk, fence)

        results = list(self._pool.map(attempt, chunks)) if len(chunks) > 1 else [attempt(chunks[0])]
        revision, refused = 0, []
        landed: list[Write] = []
        unavailable: StoreUnavailable | None = None
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, NotLeader):
                raise result
            if isinstance(result, StoreUnavailable):
                unavailable = unavailable or result
                continue
            if isinstance(result, int):
                revision = max(revision, result)
                landed += chunk
                continue
            for w in chunk:
                try:
                    revision = max(revision, self._commit_chunk([w], fence))
                    landed.append(w)
                except Conflict:
                    refused.append(w)
                except StoreUnavailable as e:
                    unavailable = unavailable or e
                    break
        if unavailable is not None:  # what did land is said (its events), the caller retries the rest
            unavailable.landed = landed
            raise unavailable
        return revision, refused

    def _try_chunk(self, chunk: Sequence[Write], fence: Fence | None = None) -> int | Exception:
        try:
            return self._commit_chunk(chunk, fence)
        except (Conflict, NotLeader, StoreUnavailable) as e:
            return e

    def _commit_chunk(self, writes: Sequence[Write], fence: Fence | None = None) -> int:
        tx = self._client.transactions
        payloads = [stored_bytes(w.value) if isinstance(w, Put) else None for w in writes]
        compare: list[Any] = []
        ops: list[Any] = []
        for w, payload in zip(writes, payloads, strict=True):
            if w.expect == 0:
                compare.append(tx.version(w.key) == 0)
            elif w.expect is not None:
                compare.append(tx.mod(w.key) == w.expect)
            if isinstance(w, Put):
                ops.append(tx.put(w.key, payload, lease=w.lease))
            else:
                ops.append(tx.delete(w.key))
        failure: list[Any] = []
        if fence is not None:
            compare.append(tx.create(fence.key) == fence.create_revision)
            failure.append(tx.get(fence.key))  # on failure: was it the fence or a write?

        def attempt(n: int) -> tuple[bool, Any]:
            ok, responses = self._client.transaction(compare=compare, success=ops, failure=failure)
            if not ok and n > 0 and (revision := self._landed(writes, payloads)):
                return True, revision  # an attempt that failed in flight had committed (its reply was lost)
            return ok, responses

        ok, responses = self._call("commit", attempt)
        if not ok:
            if fence is not None and not _still_holds(fence, responses[0]):
                raise NotLeader(fence.identity or "this scheduler")
            raise Conflict(", ".join(w.key.removeprefix(self.keys.prefix) for w in writes[:3]))
        if isinstance(responses, int):
            return responses
        for r in responses:
            header = getattr(getattr(r, r.WhichOneof("response")), "header", None)
            if header is not None:
                return int(header.revision)
        return 0

    def _landed(self, writes: Sequence[Write], payloads: Sequence[bytes | None]) -> int:
        """The revision at which etcd holds exactly what these writes wrote, or 0."""
        tx = self._client.transactions
        _, found = self._client.transaction(compare=[], success=[tx.get(w.key) for w in writes], failure=[])
        revision = 0
        for w, payload, kvs in zip(writes, payloads, found, strict=True):
            if isinstance(w, Delete):
                if kvs:
                    return 0
                continue
            if not kvs or kvs[0][0] != payload or (w.lease and kvs[0][1].lease_id != w.lease):
                return 0
            revision = max(revision, int(kvs[0][1].mod_revision))
        return revision or 1

    def update(self, cls: type[M], key: str, mutate: Callable[[M], None], attempts: int = 5) -> M | None:
        """Read-modify-write guarded by mod_revision, retried on Conflict.

        Returns the stored value, or None when the key does not exist.
        """
        for _ in range(attempts):
            existing = self.get(cls, key)
            if existing is None:
                return None
            new = cls()
            new.CopyFrom(existing.value)
            mutate(new)
            try:
                self.commit([Put(key, new, existing.mod_revision)])
            except Conflict:
                continue
            return new
        raise Conflict(key.removeprefix(self.keys.prefix))

    def compact(self, revision: int) -> None:
        """Drop the history before `revision` (etcd's own auto-compaction may be ahead: fine)."""

        def compact(_: int) -> None:
            try:
                self._client.compact(revision)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.OUT_OF_RANGE:  # already compacted beyond it
                    raise

        self._call("compact", compact)

    # -- leases --------------------------------------------------------

    def grant_lease(self, ttl: int) -> tuple[int, int]:
        """Returns (lease id, granted TTL); etcd may raise a too-small TTL."""
        lease = self._call("grant lease", lambda _: self._client.lease(ttl))
        return int(lease.id), int(lease.ttl)

    def refresh_lease(self, lease_id: int) -> int:
        """Returns the remaining TTL; 0 or less means the lease is gone."""
        responses = self._call("refresh lease", lambda _: list(self._client.refresh_lease(lease_id)))
        return int(responses[0].TTL) if responses else 0

    def revoke_lease(self, lease_id: int) -> None:
        def revoke(_: int) -> None:
            try:
                self._client.revoke_lease(lease_id)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:  # already gone (a retry after it landed)
                    raise

        self._call("revoke lease", revoke)

    def keep_alive_stream(
        self, on_response: Callable[[int, int], None], on_error: Callable[[Exception], None]
    ) -> KeepAliveStream:
        """One long-lived LeaseKeepAlive stream: refreshing N leases costs N small
        messages instead of N new RPCs (python-etcd3's refresh_lease opens one each).

        When it breaks, its member is marked failed first, so the next stream goes to
        another one (the caller re-creates it)."""
        return self._call(
            "lease keep-alive",
            lambda _: KeepAliveStream(self._client, on_response, on_error, self._failover.member_failed),
        )

    def abandon(self, stream: KeepAliveStream) -> None:
        """The stream's member stopped answering without an error (stopped, cut off): the
        next stream goes to another one, and so do the watches on that member. A member cut
        off by the network never says so: its watch hangs without an error (for as long as
        TCP takes, minutes), and the cache would serve an old state meanwhile."""
        stream.close()
        self._failover.member_failed(stream.member)
        gone = ConnectionError(f"etcd member {stream.member} stopped answering")
        for member, fail in list(self._watches.values()):
            if member == stream.member:
                fail(gone)

    # -- watches -------------------------------------------------------

    def watch(
        self,
        start_revision: int,
        on_events: Callable[[list[WatchEvent], int], None],
        on_error: Callable[[Exception], None],
    ) -> Callable[[], None]:
        """Watch the whole prefix from start_revision; returns a cancel function.

        on_events gets the events and the response's header revision; on_error
        is called once when the stream breaks (the caller re-creates the watch
        from the last revision it saw). HistoryCompacted, raised or passed to
        on_error, means etcd no longer keeps the revisions asked for.
        """
        plen = len(self.keys.prefix)
        member = ""
        key = next(self._watch_seq)
        ended = threading.Event()  # on_error is called once; a stream given up says nothing more

        def fail(err: Exception) -> None:
            with self._watches_lock:  # with the registration below: never a dead watch left listed
                if ended.is_set():
                    return
                ended.set()
                self._watches.pop(key, None)
            on_error(err)

        def callback(resp: Any) -> None:
            if ended.is_set() or self._closed:
                return
            if isinstance(resp, etcd3.exceptions.RevisionCompactedError):
                fail(HistoryCompacted(start_revision))
                return
            if resp is None or isinstance(resp, Exception):  # None: the stream ended without an error
                if isinstance(resp, grpc.RpcError) and resp.code() in TRANSIENT_CODES:
                    self._failover.member_failed(member)  # re-created on another member (dead, or without a leader)
                fail(resp if isinstance(resp, Exception) else ConnectionError("etcd watch stream ended"))
                return
            events = [
                WatchEvent(
                    key=ev.key.decode()[plen:],
                    value=None if isinstance(ev, etcd3.events.DeleteEvent) else ev.value,
                    mod_revision=ev.mod_revision,
                )
                for ev in resp.events
            ]
            on_events(events, int(resp.header.revision))

        def add(_: int) -> Any:
            nonlocal member
            _ = self._client.watcher  # picks the member (a failed one is left) before we note it
            member = self._failover.member_in_use()
            return self._client.add_watch_prefix_callback(self.keys.prefix, callback, start_revision=start_revision)

        try:
            watch_id = self._call("watch", add)
        except StoreUnavailable as e:
            if isinstance(e.__cause__, etcd3.exceptions.RevisionCompactedError):
                raise HistoryCompacted(start_revision) from e
            raise
        with self._watches_lock:
            if not ended.is_set():  # not already failed (a compaction notice can come this soon)
                self._watches[key] = (member, fail)

        def cancel() -> None:
            with self._watches_lock:
                ended.set()
                self._watches.pop(key, None)
            try:
                self._client.cancel_watch(watch_id)
            except Exception:  # the stream may already be gone
                log.debug("cancel_watch failed", exc_info=True)

        return cancel


def stored_bytes(value: Message) -> bytes:
    """What a Put stores: an instance without its spec (its generation holds it: hydrate.py)."""
    return (stored(value) if isinstance(value, pb.Instance) else value).SerializeToString()


def _stored_size(value: Message) -> int:
    """About len(stored_bytes(value)), without serializing it."""
    spec = value.spec.ByteSize() + 2 if isinstance(value, pb.Instance) and value.HasField("spec") else 0
    return value.ByteSize() - spec


def _chunks(writes: Sequence[Write]) -> list[Sequence[Write]]:
    """Consecutive runs of at most CHUNK writes and CHUNK_BYTES of keys and values each."""
    chunks: list[Sequence[Write]] = []
    start, size = 0, 0
    for i, w in enumerate(writes):
        n = len(w.key) + (_stored_size(w.value) if isinstance(w, Put) else 0)
        if i > start and (i - start == CHUNK or size + n > CHUNK_BYTES):
            chunks.append(writes[start:i])
            start, size = i, 0
        size += n
    if start < len(writes):
        chunks.append(writes[start:])
    return chunks


def _still_holds(fence: Fence, leader: list[tuple[bytes, Any]]) -> bool:
    """leader: the failure branch's read of the leader key, [(value, meta)] or []."""
    return bool(leader) and int(leader[0][1].create_revision) == fence.create_revision
