"""etcd's endpoints and failing over between them: python3-etcd3's traps handled in one place
(RECIPES §1). Only scheduler/store.py uses this module.

- `failover=True` with a short `time_retry`: after an error the client moves to the next
  endpoint and skips the failed one for TIME_RETRY seconds, instead of refusing every call for
  300 s (`failover=False`) or skipping a healthy member for 5 minutes.
- The client does not retry by itself: `call` retries on the next endpoint when the one it used
  was marked failed (a dead member answers in a millisecond; a hung one after the timeout).
- Healthy members get blacklisted too (any UNAVAILABLE or DEADLINE_EXCEEDED, e.g. while a new
  leader is elected): when every endpoint is marked failed, the one that failed longest ago is
  tried again rather than raising NoServerAvailableError.
- Streams (watch, lease keep-alive) live on one endpoint's channel, and a member that is cut off
  never ends them. A stream whose member is marked failed is aborted, so its owner re-creates it
  on a live member; a stream that breaks marks its member failed.

    StoreUnavailable   every error that reaches the caller (errors.py)
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import etcd3
import etcd3.exceptions
import grpc
from etcd3 import etcdrpc

from scheduler.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
# Seconds a failed endpoint is skipped (the library's default is 300). Longer than one call's
# retries (two timeouts), so that a call never goes back to the member it left.
TIME_RETRY = 5.0
_FAILED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)


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


class Stream(Protocol):
    endpoint: str

    def abort(self, reason: str) -> None: ...

    def close(self) -> None: ...


class EtcdClient:
    """A multi-endpoint client that fails over; `raw` is python3-etcd3's client."""

    def __init__(
        self, endpoints: Sequence[tuple[str, int, bool]], timeout: float, creds: grpc.ChannelCredentials | None
    ) -> None:
        eps = [etcd3.Endpoint(h, p, secure=s, creds=creds, time_retry=TIME_RETRY) for h, p, s in endpoints]
        self.raw = etcd3.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=True)
        self.timeout = timeout
        self._streams: list[Stream] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """host:port of the member calls go to now."""
        return str(self.raw.endpoint_in_use.netloc)

    def call(self, operation: str, fn: Callable[[Any], T]) -> T:
        """fn(raw client), retried on the next endpoint while the one it used fails, up to once per
        endpoint and for at most two timeouts in all."""
        start = time.monotonic()
        for attempt in range(len(self.raw.endpoints)):
            try:
                with translated(operation):
                    return fn(self.raw)
            except StoreUnavailable as e:
                used = self.endpoint  # the client moves on lazily: this is still the one that failed
                last = attempt == len(self.raw.endpoints) - 1 or time.monotonic() - start >= 2 * self.timeout
                if not self.endpoint_failed(used) or last:
                    raise
                log.info("%s; on %s: trying another member", e, used)
        raise AssertionError("unreachable")

    def endpoint_failed(self, netloc: str) -> bool:
        """After an error on netloc: True if the client marked it failed, and then make sure the
        next call has a member to go to, and abort the streams on netloc if there is another
        member for them (on the only one, a stream resumes by itself when the member does)."""
        ep = self.raw.endpoints.get(netloc)
        if ep is None or not ep.is_failed():
            return False
        if len(self.raw.endpoints) > 1:
            self._abort_streams(netloc)
        eps = list(self.raw.endpoints.values())
        if all(e.is_failed() for e in eps):  # the blacklisting trap: retry the longest-failed one
            min(eps, key=lambda e: e.last_failed).last_failed = 0
        return True

    def mark_failed(self, netloc: str) -> None:
        """What the client does after a failed call, for a failure it did not see (a stream's)."""
        ep = self.raw.endpoints.get(netloc)
        if ep is not None and not ep.is_failed():
            ep.fail()
            self.raw._clear_old_stubs()  # the cached stubs use the failed member's channel
        self.endpoint_failed(netloc)

    def stream_broke(self, stream: Stream, err: grpc.RpcError) -> None:
        """A stream's member went away: skip it, like a failed call would."""
        self.unregister(stream)
        if err.code() in _FAILED:
            self.mark_failed(stream.endpoint)

    def register(self, stream: Stream) -> None:
        with self._lock:
            self._streams.append(stream)

    def unregister(self, stream: Stream) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._streams.remove(stream)

    def _abort_streams(self, netloc: str) -> None:
        with self._lock:
            doomed = [s for s in self._streams if s.endpoint == netloc]
            self._streams = [s for s in self._streams if s.endpoint != netloc]
        for s in doomed:
            s.abort(f"etcd member {netloc} failed")

    def close(self) -> None:
        with self._lock:
            streams, self._streams = self._streams, []
        for s in streams:
            s.close()
        self.raw.close()


class _BidiStream:
    """One bidirectional stream on the channel of the member in use, read by its own thread;
    on_error is called once when it ends for any reason but close()."""

    def __init__(self, client: EtcdClient, open_call: Callable[[Any, Iterator[Any]], Any], on_error: Any) -> None:
        self._client = client
        self._requests: queue.Queue[Any] = queue.Queue()
        self._on_error = on_error
        self._closed = False
        self._aborted = ""
        self._call = open_call(client.raw, self._iterate())
        self.endpoint = client.endpoint  # after open_call: taking the channel may have moved the client on
        client.register(self)

    def _iterate(self) -> Iterator[Any]:
        while (request := self._requests.get()) is not None:
            yield request

    def start(self, handle: Callable[[Any], None], name: str) -> None:
        threading.Thread(target=self._read, args=(handle,), name=name, daemon=True).start()

    def _read(self, handle: Callable[[Any], None]) -> None:
        try:
            for response in self._call:
                handle(response)
        except grpc.RpcError as e:
            if self._closed:
                return
            if self._aborted:
                self._on_error(ConnectionError(self._aborted))
                return
            self._client.stream_broke(self, e)
            self._on_error(e)
            return
        self._client.unregister(self)
        if not self._closed:
            self._on_error(ConnectionError(f"etcd stream on {self.endpoint} ended"))

    def send(self, request: Any) -> None:
        self._requests.put(request)

    def abort(self, reason: str) -> None:
        self._aborted = reason
        self._requests.put(None)
        self._call.cancel()

    def close(self) -> None:
        self._closed = True
        self._client.unregister(self)
        self._requests.put(None)
        self._call.cancel()


class KeepAliveStream(_BidiStream):
    """One long-lived LeaseKeepAlive stream: refreshing N leases costs N small messages instead
    of N new RPCs (python-etcd3's refresh_lease opens one each)."""

    def __init__(
        self, client: EtcdClient, on_response: Callable[[int, int], None], on_error: Callable[[Exception], None]
    ) -> None:
        def open_call(raw: Any, requests: Iterator[Any]) -> Any:
            stub = etcdrpc.LeaseStub(raw.channel)
            return stub.LeaseKeepAlive(requests, credentials=raw.call_credentials, metadata=raw.metadata)

        super().__init__(client, open_call, on_error)
        self.start(lambda r: on_response(int(r.ID), int(r.TTL)), "etcd-keepalive")

    def send(self, lease_id: int) -> None:
        super().send(etcdrpc.LeaseKeepAliveRequest(ID=lease_id))


class WatchStream(_BidiStream):
    """A watch on [key, range_end) from start_revision; on_response gets each WatchResponse with
    events. Raises StoreUnavailable when etcd does not confirm it within the timeout (and then
    marks that member failed, so a retry goes to another one)."""

    def __init__(
        self,
        client: EtcdClient,
        key: bytes,
        range_end: bytes,
        start_revision: int,
        on_response: Callable[[Any], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        created: queue.Queue[str] = queue.Queue()
        confirmed = threading.Event()

        def open_call(raw: Any, requests: Iterator[Any]) -> Any:
            return etcdrpc.WatchStub(raw.channel).Watch(requests, credentials=raw.call_credentials,
                                                        metadata=raw.metadata)  # fmt: skip

        def handle(response: Any) -> None:  # the reader thread: in order with error() below
            if self._closed:
                return
            if response.created:
                if not response.compact_revision:
                    confirmed.set()
                created.put(f"compacted at {response.compact_revision}" if response.compact_revision else "")
            elif response.canceled:
                self.abort(f"watch canceled by etcd: {response.cancel_reason or 'compacted'}")
            elif response.events:
                on_response(response)

        def error(e: Exception) -> None:
            if confirmed.is_set():
                on_error(e)
            else:
                created.put(f"stream broke: {e}")

        super().__init__(client, open_call, error)
        request = etcdrpc.WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)
        self.send(etcdrpc.WatchRequest(create_request=request))
        self.start(handle, "etcd-watch")
        try:
            problem = created.get(timeout=client.timeout)
        except queue.Empty:
            problem = f"not confirmed by {self.endpoint} within {client.timeout}s"
            client.mark_failed(self.endpoint)
        if problem:
            self.close()
            raise StoreUnavailable("watch", problem)
