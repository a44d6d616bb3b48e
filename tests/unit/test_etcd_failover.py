"""Unit: how the etcd client fails over (scheduler/etcd_client.py), on python3-etcd3's own
endpoint bookkeeping, without a network (the real thing: tests/integration/test_store_failover.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import etcd3.exceptions
import pytest

from scheduler.errors import StoreUnavailable
from scheduler.etcd_client import EtcdClient

ENDPOINTS = [("127.0.0.1", 1, False), ("127.0.0.1", 2, False), ("127.0.0.1", 3, False)]  # never dialled here


@pytest.fixture
def client() -> Iterator[EtcdClient]:
    c = EtcdClient(ENDPOINTS, timeout=2.0, creds=None)
    yield c
    c.close()


class FakeStream:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.aborted = ""

    def abort(self, reason: str) -> None:
        self.aborted = reason

    def close(self) -> None:
        pass


def failing_on(count: int, used: list[str]) -> Any:
    """A call that fails on its first `count` endpoints as a dead member makes it fail."""

    def fn(raw: Any) -> str:
        raw.channel  # noqa: B018 - every call picks a live endpoint this way
        used.append(raw.endpoint_in_use.netloc)
        if len(used) <= count:
            raw.endpoint_in_use.fail()  # what the client does on UNAVAILABLE
            raise etcd3.exceptions.ConnectionFailedError()
        return "ok"

    return fn


def test_a_call_is_retried_on_each_other_endpoint(client: EtcdClient) -> None:
    used: list[str] = []
    assert client.call("get", failing_on(2, used)) == "ok"
    assert len(set(used)) == 3


def test_when_every_endpoint_failed_the_longest_failed_is_tried_again(client: EtcdClient) -> None:
    used: list[str] = []
    with pytest.raises(StoreUnavailable, match="during get"):
        client.call("get", failing_on(3, used))
    assert len(set(used)) == 3
    # The library would now raise NoServerAvailableError for time_retry; one endpoint is open again.
    assert client.call("get", failing_on(0, [])) == "ok"
    assert client.endpoint == used[0]


def test_an_error_that_is_not_the_endpoints_is_not_retried(client: EtcdClient) -> None:
    calls = []

    def fn(raw: Any) -> None:
        calls.append(1)
        raise etcd3.exceptions.PreconditionFailedError()  # e.g. a lease that is gone

    with pytest.raises(StoreUnavailable):
        client.call("refresh lease", fn)
    assert calls == [1]


def test_streams_on_a_failed_endpoint_are_aborted_and_only_those(client: EtcdClient) -> None:
    first, second, _ = client.raw.endpoints
    doomed, kept = FakeStream(first), FakeStream(second)
    client.register(doomed)
    client.register(kept)
    assert not client.endpoint_failed(first)  # not marked failed: nothing happens
    assert not doomed.aborted
    client.mark_failed(first)
    assert doomed.aborted == f"etcd member {first} failed"
    assert not kept.aborted


def test_with_one_member_streams_stay_and_it_is_never_blacklisted() -> None:
    # Nowhere to move to: the stream resumes when the member does, and calls keep trying it.
    client = EtcdClient(ENDPOINTS[:1], timeout=2.0, creds=None)
    try:
        (only,) = client.raw.endpoints
        stream = FakeStream(only)
        client.register(stream)
        client.mark_failed(only)
        assert not stream.aborted
        assert client.call("get", failing_on(0, [])) == "ok"
    finally:
        client.close()
