"""Calls to etcd that survive the loss of a member: retries, member failover,
and the long-lived lease keep-alive stream. With store.py, the only module
that touches the etcd3 client.

python-etcd3 with failover=True (RECIPES §1) only marks a member failed and
moves on at the *next* call. So every call goes through `Failover.call`,
which retries, on the next member, for up to RETRY_FOR seconds, with a short
per-call timeout: a call stuck on a follower whose leader just died fails
after CALL_TIMEOUT instead of etcd's own 5 s + 2 elections. Members marked
failed on a DEADLINE_EXCEEDED during an election are healthy followers: once
all are marked, all are tried again. Every request carries `hasleader`: a
member without a leader refuses at once and ends its watch and keep-alive
streams, which are then re-established on another member (`member_failed`
makes the next ones go elsewhere). Each attempt tells `Contact` whether etcd
answered, so the reconciler knows when leases may have lapsed through no
fault of the nodes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import etcd3
import etcd3.exceptions
import grpc
from etcd3 import etcdrpc

from scheduler.contact import Contact
from scheduler.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

CALL_TIMEOUT = 1.0  # s per call: a new etcd leader is elected in about 0.5 s (orch up's --election-timeout)
PAGE_TIMEOUT = 3.0  # s: a page of thousands of keys takes longer than one key
RETRY_FOR = 5.0  # s a call keeps trying other members before StoreUnavailable
RETRY_DELAY = (0.02, 0.5)  # first and longest pause between attempts
TIME_RETRY = 2  # s a failed member is skipped (the library's default, 300 s, outlives any election)
REQUIRE_LEADER = (("hasleader", "true"),)  # etcd: refuse (and end streams) when the member has no leader
CHANNEL_OPTIONS = [
    # A member that comes back is reconnected to within a second, not after gRPC's backoff of up to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # A page of big values outgrows gRPC's 4 MiB default; the page size bounds a reply instead.
    ("grpc.max_receive_message_length", 256 << 20),
]
TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@contextmanager
def translated(operation: str) -> Iterator[None]:
    """Turn the client's errors into ours, at the edge."""
    try:
        yield
    except (etcd3.exceptions.ConnectionFailedError, etcd3.exceptions.ConnectionTimeoutError) as e:
        raise StoreUnavailable(operation, str(e) or type(e).__name__) from e
    except etcd3.exceptions.Etcd3Exception as e:  # NoServerAvailable, InternalServerError, ...
        raise StoreUnavailable(operation, type(e).__name__) from e
    except ValueError as e:  # 'Trying to use a failed node' from a non-failover client
        raise StoreUnavailable(operation, str(e)) from e
    except grpc.RpcError as e:
        raise StoreUnavailable(operation, f"{e.code().name}: {e.details()}") from e


def transient(err: BaseException | None) -> bool:
    """Worth another try, on this member or the next: it was away, slow, or between leaders."""
    if isinstance(err, (etcd3.exceptions.PreconditionFailedError, etcd3.exceptions.RevisionCompactedError)):
        return False  # the same request fails again
    if isinstance(err, etcd3.exceptions.Etcd3Exception):
        return True  # ConnectionFailed, ConnectionTimeout, NoServerAvailable, InternalServerError
    if not isinstance(err, grpc.RpcError):
        return False
    # A member's own deadline, as gRPC's UNKNOWN: a read it could not confirm with a leader while
    # one was being elected (seen with the leader member killed during an apply, make test loaded).
    server_timeout = err.code() == grpc.StatusCode.UNKNOWN and "deadline exceeded" in (err.details() or "")
    return err.code() in TRANSIENT_CODES or server_timeout


class Failover:
    """The retry loop and the member marks of one MultiEndpointEtcd3Client."""

    def __init__(self, client: Any, contact: Contact, retry_for: float = RETRY_FOR) -> None:
        self._client = client
        self.contact = contact
        self._retry_for = retry_for

    def call(self, operation: str, fn: Callable[[int], T]) -> T:
        """fn(attempt), retried on transient errors (on the next member) for up to retry_for seconds."""
        deadline = time.monotonic() + self._retry_for
        delay, longest = RETRY_DELAY
        attempt = 0
        while True:
            try:
                with translated(operation):
                    result = fn(attempt)
            except StoreUnavailable as e:
                self.contact.failed()
                if not transient(e.__cause__) or time.monotonic() + delay >= deadline:
                    raise
                log.debug("%s: %s; retrying", operation, e)
                self.forgive_members()
                time.sleep(delay)
                delay, attempt = min(longest, delay * 2), attempt + 1
                continue
            self.contact.ok()
            return result

    def forgive_members(self) -> None:
        """All members marked failed: some are healthy followers that timed out during an
        election (or the only member restarted). Try them all again rather than refuse."""
        endpoints = list(self._client.endpoints.values())
        if all(ep.is_failed() for ep in endpoints):
            for ep in endpoints:
                ep.last_failed = 0

    def member_in_use(self) -> str:
        ep = self._client.endpoint_in_use
        return str(ep.netloc) if ep is not None else ""

    def member_failed(self, netloc: str) -> None:
        """A stream to this member broke or hangs: the next calls and streams go to another one."""
        endpoint = self._client.endpoints.get(netloc)
        if endpoint is None or len(self._client.endpoints) == 1:
            return  # nowhere else to go: the channel reconnects by itself
        endpoint.fail()
        if self._client.endpoint_in_use is endpoint:
            self._client._clear_old_stubs()  # cached stubs are bound to its channel

    def range_page(self, start: bytes, end: bytes, limit: int, revision: int, descending: bool = False) -> Any:
        """One page of a range read: up to `limit` keys in [start, end), at `revision` (0: now),
        with a timeout of its own (the client's is one for all calls)."""
        c = self._client
        order = "descend" if descending else None
        request = c._build_get_range_request(start, end, limit, revision or None, order)
        try:
            return c.kvstub.Range(request, PAGE_TIMEOUT, credentials=c.call_credentials, metadata=c.metadata)
        except grpc.RpcError as e:
            c._manage_grpc_errors(e)  # marks the member failed and raises the library's exception


class KeepAliveStream:
    """One LeaseKeepAlive stream on the member in use when it was opened. When it
    breaks, that member is reported lost first, so that the next one opens elsewhere."""

    def __init__(
        self,
        client: Any,
        on_response: Callable[[int, int], None],
        on_error: Callable[[Exception], None],
        on_member_lost: Callable[[str], None] = lambda _: None,
    ) -> None:
        stub = client.leasestub  # first: it picks the member (a failed one is left)
        self.member = str(client.endpoint_in_use.netloc)
        self._on_member_lost = on_member_lost
        self._requests: queue.Queue[Any] = queue.Queue()
        self._call = stub.LeaseKeepAlive(self._iterate(), credentials=client.call_credentials, metadata=client.metadata)
        self._on_response = on_response
        self._on_error = on_error
        self._closed = False
        threading.Thread(target=self._read, name="etcd-keepalive", daemon=True).start()

    def _iterate(self) -> Iterator[Any]:
        while (request := self._requests.get()) is not None:
            yield request

    def _read(self) -> None:
        err: Exception = ConnectionError("etcd lease keep-alive stream ended")
        try:
            for response in self._call:
                self._on_response(int(response.ID), int(response.TTL))
        except grpc.RpcError as e:
            err = e
        if self._closed:
            return  # our own close
        if not isinstance(err, grpc.RpcError) or err.code() in TRANSIENT_CODES:
            self._on_member_lost(self.member)  # dead, restarting or without a leader
        self._on_error(err)

    def send(self, lease_id: int) -> None:
        self._requests.put(etcdrpc.LeaseKeepAliveRequest(ID=lease_id))

    def close(self) -> None:
        self._closed = True
        self._requests.put(None)
        self._call.cancel()
