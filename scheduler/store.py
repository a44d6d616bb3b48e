"""The only module that talks to etcd.

Values are the API's protobuf messages under one key prefix:

    apps/<name>             App
    instances/<app>/<name>  Instance
    nodes/<name>            Node
    leases/nodes/<name>     node name, attached to the node's etcd lease
    leader                  scheduler id, attached to the leader's lease
    events/<time>-<rand>    Event, attached to a TTL lease

Every write that depends on a read carries the `mod_revision` it read
(`expect`); a failed compare raises `Conflict`, so two schedulers can never
double-place or resurrect an instance. The reconciler's writes also carry a
`Fence` (the leader key is still the one it created); a failed fence raises
`NotLeader`, so a pass that outlived its leadership writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from etcd3 import utils as etcd_utils
from google.protobuf.message import DecodeError, Message

from orch.tls import Credentials
from orch.v1 import types_pb2 as pb
from scheduler.errors import Conflict, NotLeader, StoreUnavailable
from scheduler.etcd_client import EtcdClient, WatchStream, translated
from scheduler.etcd_client import KeepAliveStream as KeepAliveStream  # leases.py's type
from scheduler.snapshot import ClusterSnapshot, Versioned

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

# etcd's default --max-txn-ops: compares and operations each count.
MAX_TXN_OPS = 128
CHUNK = MAX_TXN_OPS - 1  # writes per transaction: one compare is left for a Fence
MAX_RECEIVE = 512 << 20


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

    def node(self, name: str) -> str:
        return f"{self.prefix}nodes/{name}"

    def node_lease(self, name: str) -> str:
        return f"{self.prefix}leases/nodes/{name}"

    def leader(self) -> str:
        return f"{self.prefix}leader"

    def event(self, suffix: str) -> str:
        return f"{self.prefix}events/{suffix}"


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
        self, endpoints: Sequence[str], prefix: str = "/orch/", timeout: float = 2.0, tls: Credentials | None = None
    ) -> None:
        self.keys = Keys(prefix)
        creds = tls.channel_credentials() if tls is not None else None
        eps = [(ep.host, ep.port, ep.secure) for ep in parse_endpoints(endpoints, tls is not None)]
        self._etcd = EtcdClient(eps, timeout, creds)  # fails over between the members (etcd_client.py)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="etcd-commit")

    @property
    def endpoint(self) -> str:
        """host:port of the etcd member this store talks to now."""
        return self._etcd.endpoint

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._etcd.close()

    # -- reads ---------------------------------------------------------

    def snapshot(self) -> ClusterSnapshot:
        """Everything but events, from one range read (one revision)."""
        resp = self._etcd.call("snapshot", lambda c: c.get_prefix_response(self.keys.prefix))
        apps: dict[str, Versioned[pb.App]] = {}
        instances: dict[str, Versioned[pb.Instance]] = {}
        nodes: dict[str, Versioned[pb.Node]] = {}
        live: set[str] = set()
        plen = len(self.keys.prefix)
        for kv in resp.kvs:
            key = kv.key.decode()[plen:]
            kind, _, rest = key.partition("/")
            if kind == "apps":
                if app := decode(pb.App, kv.value, key):
                    apps[rest] = Versioned(app, kv.mod_revision)
            elif kind == "instances":
                if inst := decode(pb.Instance, kv.value, key):
                    instances[inst.name] = Versioned(inst, kv.mod_revision)
            elif kind == "nodes":
                if node := decode(pb.Node, kv.value, key):
                    nodes[rest] = Versioned(node, kv.mod_revision)
            elif kind == "leases" and rest.startswith("nodes/"):
                live.add(rest.removeprefix("nodes/"))
        return ClusterSnapshot(
            revision=resp.header.revision,
            apps=apps,
            instances=instances,
            nodes=nodes,
            live_nodes=frozenset(live),
            cluster_id=int(resp.header.cluster_id),
        )

    def get(self, cls: type[M], key: str) -> Versioned[M] | None:
        value, meta = self._etcd.call(f"get {key}", lambda c: c.get(key))
        if value is None:
            return None
        msg = decode(cls, value, key)
        return None if msg is None else Versioned(msg, meta.mod_revision)

    def list_prefix(self, cls: type[M], prefix: str) -> list[Versioned[M]]:
        items = self._etcd.call(f"list {prefix}", lambda c: list(c.get_prefix(prefix)))
        out = []
        for value, meta in items:
            msg = decode(cls, value, meta.key.decode())
            if msg is not None:
                out.append(Versioned(msg, meta.mod_revision))
        return out

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
        hold back the rest. Returns (revision, the writes that were refused).

        With a fence, every transaction also requires that leadership; once it
        fails, NotLeader is raised and nothing more is tried."""
        chunks = _chunks(writes)

        def attempt(chunk: Sequence[Write]) -> int | Exception:
            return self._try_chunk(chunk, fence)

        results = list(self._pool.map(attempt, chunks)) if len(chunks) > 1 else [attempt(chunks[0])]
        revision, refused = 0, []
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, (StoreUnavailable, NotLeader)):
                raise result
            if isinstance(result, int):
                revision = max(revision, result)
                continue
            for w in chunk:
                try:
                    revision = max(revision, self._commit_chunk([w], fence))
                except Conflict:
                    refused.append(w)
        return revision, refused

    def _try_chunk(self, chunk: Sequence[Write], fence: Fence | None = None) -> int | Exception:
        try:
            return self._commit_chunk(chunk, fence)
        except (Conflict, NotLeader, StoreUnavailable) as e:
            return e

    def _commit_chunk(self, writes: Sequence[Write], fence: Fence | None = None) -> int:
        tx = self._etcd.raw.transactions  # builds compares and requests; no I/O
        compare: list[Any] = []
        ops: list[Any] = []
        for w in writes:
            if w.expect == 0:
                compare.append(tx.version(w.key) == 0)
            elif w.expect is not None:
                compare.append(tx.mod(w.key) == w.expect)
            if isinstance(w, Put):
                ops.append(tx.put(w.key, w.value.SerializeToString(), lease=w.lease))
            else:
                ops.append(tx.delete(w.key))
        failure: list[Any] = []
        if fence is not None:
            compare.append(tx.create(fence.key) == fence.create_revision)
            failure.append(tx.get(fence.key))  # on failure: was it the fence or a write?
        # Retried on another member after a failure: a commit that did land then fails its compare
        # (Conflict), and the caller re-reads, as after any conflict.
        ok, responses = self._etcd.call(
            "commit", lambda c: c.transaction(compare=compare, success=ops, failure=failure)
        )
        if not ok:
            if fence is not None and not _still_holds(fence, responses[0]):
                raise NotLeader(fence.identity or "this scheduler")
            raise Conflict(", ".join(w.key.removeprefix(self.keys.prefix) for w in writes[:3]))
        for r in responses:
            header = getattr(getattr(r, r.WhichOneof("response")), "header", None)
            if header is not None:
                return int(header.revision)
        return 0

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

    # -- leases --------------------------------------------------------

    def grant_lease(self, ttl: int) -> tuple[int, int]:
        """Returns (lease id, granted TTL); etcd may raise a too-small TTL."""
        lease = self._etcd.call("grant lease", lambda c: c.lease(ttl))
        return int(lease.id), int(lease.ttl)

    def refresh_lease(self, lease_id: int) -> int:
        """Returns the remaining TTL; 0 or less means the lease is gone."""
        responses = self._etcd.call("refresh lease", lambda c: list(c.refresh_lease(lease_id)))
        return int(responses[0].TTL) if responses else 0

    def revoke_lease(self, lease_id: int) -> None:

        def revoke(c: Any) -> None:
            try:
                c.revoke_lease(lease_id)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        self._etcd.call("revoke lease", revoke)

    def keep_alive_stream(
        self, on_response: Callable[[int, int], None], on_error: Callable[[Exception], None]
    ) -> KeepAliveStream:
        """One long-lived LeaseKeepAlive stream: refreshing N leases costs N small
        messages instead of N new RPCs (python-etcd3's refresh_lease opens one each)."""
        with translated("lease keep-alive"):
            return KeepAliveStream(self._etcd, on_response, on_error)

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
        from the last revision it saw; it then goes to a live member).
        """
        plen = len(self.keys.prefix)

        def on_response(resp: Any) -> None:
            events = [
                WatchEvent(
                    key=ev.kv.key.decode()[plen:],
                    value=None if ev.type == ev.DELETE else ev.kv.value,
                    mod_revision=ev.kv.mod_revision,
                )
                for ev in resp.events
            ]
            on_events(events, int(resp.header.revision))

        prefix = self.keys.prefix.encode()
        end = etcd_utils.prefix_range_end(prefix)
        stream = self._etcd.call(
            "watch", lambda _: WatchStream(self._etcd, prefix, end, start_revision, on_response, on_error)
        )
        return stream.close


def _chunks(writes: Sequence[Write]) -> list[Sequence[Write]]:
    return [writes[start : start + CHUNK] for start in range(0, len(writes), CHUNK)]


def _still_holds(fence: Fence, leader: list[tuple[bytes, Any]]) -> bool:
    """leader: the failure branch's read of the leader key, [(value, meta)] or []."""
    return bool(leader) and int(leader[0][1].create_revision) == fence.create_revision
