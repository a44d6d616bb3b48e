"""The etcd retry loop and the outage bookkeeping, without etcd: a fake client's members."""

from __future__ import annotations

from types import SimpleNamespace

import etcd3.exceptions
import grpc
import pytest

from scheduler.contact import Contact
from scheduler.errors import StoreUnavailable
from scheduler.etcd_failover import Failover, transient


class Member:
    def __init__(self, netloc: str, failed: bool = False) -> None:
        self.netloc = netloc
        self.last_failed = 1e18 if failed else 0

    def is_failed(self) -> bool:
        return self.last_failed > 0

    def fail(self) -> None:
        self.last_failed = 1e18


def client(*members: Member) -> SimpleNamespace:
    c = SimpleNamespace(endpoints={m.netloc: m for m in members}, endpoint_in_use=members[0], cleared=0)
    c._clear_old_stubs = lambda: setattr(c, "cleared", c.cleared + 1)
    return c


def failing(*errors: BaseException):
    """fn(attempt) raising these, one per attempt, then returning the attempt number."""

    def fn(attempt: int) -> int:
        if attempt < len(errors):
            raise errors[attempt]
        return attempt

    return fn


def test_transient_errors_are_retried_until_a_member_answers():
    contact = Contact(stall=10)
    f = Failover(client(Member("a")), contact, retry_for=5)
    errors = (etcd3.exceptions.ConnectionFailedError(), etcd3.exceptions.ConnectionTimeoutError())
    assert f.call("get", failing(*errors)) == 2
    assert not contact.in_outage() and contact.back_at == 0  # answered within a stall: no outage


@pytest.mark.parametrize(
    "error",
    [etcd3.exceptions.PreconditionFailedError(), etcd3.exceptions.RevisionCompactedError(5), ValueError("bad")],
)
def test_errors_that_would_repeat_are_not_retried(error):
    f = Failover(client(Member("a")), Contact(), retry_for=5)
    with pytest.raises(StoreUnavailable):
        f.call("get", failing(error, error))
    assert not transient(error)


def test_a_call_gives_up_after_its_retry_window():
    f = Failover(client(Member("a")), Contact(), retry_for=0.1)
    with pytest.raises(StoreUnavailable, match="etcd unavailable during get"):
        f.call("get", failing(*[etcd3.exceptions.ConnectionFailedError()] * 100))


def test_members_all_marked_failed_are_all_tried_again():
    members = [Member("a", failed=True), Member("b", failed=True)]
    f = Failover(client(*members), Contact(), retry_for=5)
    assert f.call("get", failing(etcd3.exceptions.NoServerAvailableError())) == 1
    assert not any(m.is_failed() for m in members)


def test_a_broken_stream_moves_the_client_off_its_member_unless_it_is_the_only_one():
    a, b = Member("a"), Member("b")
    c = client(a, b)
    Failover(c, Contact()).member_failed("a")
    assert a.is_failed() and c.cleared == 1  # cached stubs went with it
    only = Member("x")
    Failover(client(only), Contact()).member_failed("x")
    assert not only.is_failed()  # nowhere else to go


def test_contact_says_when_etcd_answered_again_after_an_outage():
    now = [100.0]
    contact = Contact(stall=0.5, clock=lambda: now[0])
    contact.failed()
    now[0] = 100.3
    contact.ok()
    assert contact.back_at == 0  # shorter than a stall: leases could not lapse
    contact.failed(ago=0.2)  # a keep-alive unanswered since 100.1
    now[0] = 100.7
    assert contact.in_outage() and contact.down_for() == pytest.approx(0.6)
    now[0] = 101.0
    contact.ok()
    assert contact.back_at == 101.0 and contact.outage == pytest.approx(0.9)
    assert not contact.in_outage()


class RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_a_members_own_deadline_is_retried_and_other_unknown_errors_are_not():
    """etcd answers UNKNOWN "context deadline exceeded" for a read it could not confirm with a
    leader during an election (make test, an etcd leader killed during an apply)."""
    f = Failover(client(Member("a"), Member("b")), Contact(), retry_for=5)
    assert f.call("get /orch/apps/churn", failing(RpcError(grpc.StatusCode.UNKNOWN, "context deadline exceeded"))) == 1
    assert not transient(RpcError(grpc.StatusCode.UNKNOWN, "etcdserver: mvcc: database space exceeded"))
