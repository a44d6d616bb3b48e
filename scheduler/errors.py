"""Errors of the scheduler.

    SchedulerError
    ├── StoreUnavailable   etcd could not be reached or timed out
    ├── Conflict           a revision-checked transaction lost a race
    ├── NotLeader          a fenced transaction found the leader key changed
    ├── NotFound           the named object does not exist
    ├── InvalidRequest     the request is malformed (carries field errors)
    └── Refused            the request is well-formed but the cluster's state forbids it
                           (a node's subnet cannot be assigned, a Ready node deleted)

`api.py` maps these to gRPC status codes; nothing else crosses the edge.
"""

from __future__ import annotations

from collections.abc import Sequence


class SchedulerError(Exception):
    """Base class of every error the scheduler raises on purpose."""


class StoreUnavailable(SchedulerError):
    def __init__(self, operation: str, detail: str) -> None:
        super().__init__(f"etcd unavailable during {operation}: {detail}")
        self.operation = operation
        self.landed: Sequence[object] = ()  # of a commit in chunks, the writes that did land


class HistoryCompacted(SchedulerError):
    """A watch asked etcd for revisions it no longer keeps: whatever followed it must read
    everything again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd compacted its history past revision {revision}")
        self.revision = revision


class Conflict(SchedulerError):
    def __init__(self, what: str) -> None:
        super().__init__(f"conflicting update of {what}; re-read and retry")


class NotLeader(SchedulerError):
    def __init__(self, identity: str) -> None:
        super().__init__(f"{identity} is no longer the leader; nothing was written")


class NotFound(SchedulerError):
    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f'{kind} "{name}" not found')
        self.kind = kind
        self.name = name


class InvalidRequest(SchedulerError):
    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class Refused(SchedulerError):
    """reason: CamelCase, also the Warning event's (scheduler/subnets.py's reasons, NodeInUse)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
