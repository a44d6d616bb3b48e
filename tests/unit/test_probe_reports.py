"""What the scheduler makes of the agents' probe reports: an event per restart naming how the
incarnation before ended, and readiness gated by a startup probe."""

from __future__ import annotations

from orch.v1 import types_pb2 as pb
from scheduler.rollout import is_ready
from scheduler.status import restart_events


def instance(restarts: int, last: pb.Termination | None = None) -> pb.Instance:
    inst = pb.Instance(name="web-a", app="web", node="n1")
    inst.status.state = pb.INSTANCE_STATE_RUNNING
    inst.status.restarts = restarts
    if last is not None:
        inst.status.last_termination.CopyFrom(last)
    return inst


LIVENESS = pb.Termination(
    reason="LivenessFailed",
    message="liveness probe failed 3 times in a row: exec cat: exit 1; killed (exit code 137)",
    exit_code=137,
)


def test_a_restart_is_an_event_named_after_how_it_ended() -> None:
    (e,) = restart_events(instance(0), instance(1, LIVENESS), 1000.0)
    assert (e.kind, e.object, e.reason, e.type) == ("Instance", "web-a", "LivenessFailed", "Warning")
    assert e.message == LIVENESS.message + "; restart 1"
    crash = pb.Termination(reason="Error", exit_code=2)
    (e,) = restart_events(instance(1, LIVENESS), instance(2, crash), 1000.0)
    assert (e.reason, e.message) == ("Error", "exit code 2; restart 2")
    done = pb.Termination(reason="Completed", exit_code=0)
    (e,) = restart_events(instance(2), instance(3, done), 1000.0)
    assert e.type == "Normal"


def test_no_event_without_a_new_restart() -> None:
    assert restart_events(instance(1, LIVENESS), instance(1, LIVENESS), 1000.0) == []  # a later report, same restart
    assert restart_events(instance(3, LIVENESS), instance(0), 1000.0) == []  # the agent restarted: counts from 0
    assert restart_events(instance(0), instance(1), 1000.0) == []  # an agent that says nothing of it


def test_a_startup_probe_gates_readiness_even_without_a_readiness_probe() -> None:
    inst = instance(0)
    assert is_ready(inst)  # no probes: running is ready
    inst.spec.startup.tcp = 80
    assert not is_ready(inst)
    inst.status.ready = True  # the agent says its startup probe succeeded
    assert is_ready(inst)
    inst.spec.ClearField("startup")
    inst.spec.liveness.tcp = 80
    inst.status.ready = False
    assert is_ready(inst)  # liveness has no say in readiness
