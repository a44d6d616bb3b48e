"""Instance states as people read them (`orch get`, metrics labels, the dashboard): Running,
Pending, ... One spelling for every component."""

from __future__ import annotations

from orch.v1 import types_pb2 as pb


def state_name(state: int) -> str:
    """INSTANCE_STATE_RUNNING -> Running."""
    name = pb.InstanceState.Name(state).removeprefix("INSTANCE_STATE_")  # type: ignore[arg-type]
    return "".join(part.capitalize() for part in name.split("_"))


# An app's rollout (App.rollout.reason), as Kubernetes' Deployment conditions say it (scheduler/rollout.py).
ROLLOUT_PROGRESSING = "Progressing"
ROLLOUT_COMPLETE = "Complete"
ROLLOUT_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
