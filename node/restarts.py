"""RestartTracker: after an exit, should the instance start again, and when?

Exponential backoff (Kubernetes: 10 s doubling to 5 min; ours is shorter
by default), reset after the instance ran healthily for RESET_AFTER.
"""

from __future__ import annotations

from dataclasses import dataclass

from orch.v1 import types_pb2 as pb

INITIAL_DELAY = 0.5
MAX_DELAY = 30.0
RESET_AFTER = 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    restart: bool
    delay: float


@dataclass(slots=True)
class RestartTracker:
    policy: pb.RestartPolicy.ValueType
    initial: float = INITIAL_DELAY
    maximum: float = MAX_DELAY
    reset_after: float = RESET_AFTER
    failures: int = 0  # consecutive quick exits
    restarts: int = 0  # total, reported to the user

    def next(self, exit_code: int, ran_for: float) -> Decision:
        if self.policy == pb.RESTART_POLICY_NEVER:
            return Decision(False, 0.0)
        if self.policy == pb.RESTART_POLICY_ON_FAILURE and exit_code == 0:
            return Decision(False, 0.0)
        if ran_for >= self.reset_after:
            self.failures = 0
        delay = min(self.maximum, self.initial * 2 ** (self.failures - 1)) if self.failures else 0.0
        self.failures += 1
        self.restarts += 1
        return Decision(True, delay)
