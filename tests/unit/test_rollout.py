"""Rollouts, the pure parts: progress and the stuck decision (scheduler/rollout.py), what a stuck
rollout still does (reconcile.py), the kept history (scheduler/generations.py), templates
(orch/templates.py) and `orch rollout status`'s wording (cli/rollout.py)."""

from __future__ import annotations

import itertools

import pytest

from cli.rollout import Outcome, judge
from orch.templates import NOT_TEMPLATE, changed_fields, template_of, with_template
from orch.v1 import api_pb2 as api
from orch.v1 import types_pb2 as pb
from orch.validation import DEFAULT_PROGRESS_DEADLINE_MS, normalize_app_spec
from scheduler.errors import Refused
from scheduler.generations import HISTORY, change_cause, prune, undo_target
from scheduler.reconcile import CRASHLOOP_RESTARTS, reconcile
from scheduler.rollout import (
    COMPLETE,
    DEADLINE_EXCEEDED,
    PROGRESSING,
    Progress,
    deadline_of,
    next_status,
    progress,
    started,
)
from scheduler.timeutil import seconds
from tests.factories import make_app, make_instance, make_node, make_snapshot, make_spec

T0 = 1000.0  # the rollout began


def rolling(replicas: int = 3, deadline_ms: int = 10_000, **status: object) -> pb.App:
    """Generation 2 of an app, its rollout begun at T0."""
    spec = make_spec(replicas=replicas, progress_deadline_ms=deadline_ms)
    rollout = started(2, T0)
    for k, v in status.items():
        setattr(rollout, k, v)
    return make_app(spec, generation=2, rollout=rollout)


def seen(updated: int, available: int, old: int, desired: int = 3) -> Progress:
    return Progress(desired=desired, updated=updated, available=available, old=old)


def suffixes():
    counter = itertools.count()
    return lambda: f"s{next(counter)}"


# -- progress and the stuck decision ---------------------------------------------------------


def test_progress_counts_the_current_generation_apart():
    app = rolling()
    insts = [make_instance(app, f"web-old{i}", "a", generation=1) for i in range(2)]
    insts.append(make_instance(app, "web-new0", "a"))
    insts.append(make_instance(app, "web-new1", "a", state=pb.INSTANCE_STATE_STARTING, ready=False))
    stopping = make_instance(app, "web-old9", "a", generation=1)
    stopping.desired = pb.DESIRED_STATE_STOP
    assert progress(app, [*insts, stopping]) == Progress(desired=3, updated=2, available=1, old=2)
    assert not progress(app, insts).done


def test_done_needs_replicas_all_new_ready_and_no_old():
    assert seen(3, 3, 0).done
    assert not seen(3, 3, 1).done  # an old one still runs
    assert not seen(3, 2, 0).done
    assert not seen(4, 4, 0).done  # scaling down from a surge
    assert Progress(desired=0, updated=0, available=0, old=0).done


def test_the_deadline_counts_from_the_last_progress():
    app = rolling()
    assert next_status(app, seen(1, 0, 3), T0 + 10) == app.rollout  # not past 10 s yet: nothing to write
    stuck = next_status(app, seen(1, 0, 3), T0 + 10.5)
    assert stuck.reason == DEADLINE_EXCEEDED
    assert "0 of 3 instances ready, none more for 10s" in stuck.message
    progressed = next_status(app, seen(2, 1, 2), T0 + 8)  # one more ready: the clock starts again
    assert (progressed.reason, progressed.ready, seconds(progressed.progressed_at)) == (PROGRESSING, 1, T0 + 8)
    app.rollout.CopyFrom(progressed)
    assert next_status(app, seen(2, 1, 2), T0 + 17).reason == PROGRESSING
    assert next_status(app, seen(2, 1, 2), T0 + 18.5).reason == DEADLINE_EXCEEDED


def test_a_crash_loop_ready_for_a_moment_is_no_progress():
    app = rolling(ready=1)  # one new instance was ready once, then crashed
    again = next_status(app, seen(1, 1, 3), T0 + 11)  # ready again after a restart: not more than ever
    assert again.reason == DEADLINE_EXCEEDED


def test_progress_after_the_deadline_unsticks_it():
    app = rolling(reason=DEADLINE_EXCEEDED, message="stuck")
    status = next_status(app, seen(2, 1, 2), T0 + 60)
    assert (status.reason, status.message, seconds(status.progressed_at)) == (PROGRESSING, "", T0 + 60)


def test_complete_stays_complete_until_the_next_generation():
    app = rolling()
    done = next_status(app, seen(3, 3, 0), T0 + 5)
    assert (done.reason, done.message) == (COMPLETE, "generation 2: 3 of 3 instances ready")
    app.rollout.CopyFrom(done)
    assert next_status(app, seen(3, 1, 0), T0 + 500) == done  # a later crash is not the rollout's
    app.generation = 3  # a new apply: a new rollout, whatever the old status said
    fresh = next_status(app, seen(0, 0, 3), T0 + 600)
    assert (fresh.generation, fresh.reason, seconds(fresh.progressed_at)) == (3, PROGRESSING, T0 + 600)


def test_the_default_deadline_is_120s():
    assert DEFAULT_PROGRESS_DEADLINE_MS == 120_000
    assert normalize_app_spec(make_spec()).progress_deadline_ms == 120_000
    app = rolling(deadline_ms=0)  # an app stored before the field existed
    assert deadline_of(app.spec) == 120.0
    assert next_status(app, seen(1, 0, 3), T0 + 120).reason == PROGRESSING
    assert next_status(app, seen(1, 0, 3), T0 + 120.5).reason == DEADLINE_EXCEEDED


# -- what the reconciler does with it ---------------------------------------------------------


def crash_looping(app: pb.App, name: str, node: str) -> pb.Instance:
    inst = make_instance(app, name, node, state=pb.INSTANCE_STATE_FAILED, ready=False)
    inst.status.reason = "CrashLoopBackOff"
    inst.status.restarts = CRASHLOOP_RESTARTS
    return inst


def test_the_reconciler_marks_a_stuck_rollout_once_with_a_warning():
    app = rolling(replicas=2)
    old = [make_instance(app, f"web-old{i}", "a", generation=1) for i in range(2)]
    new = make_instance(app, "web-new", "a", state=pb.INSTANCE_STATE_STARTING, ready=False)
    snap = make_snapshot([app], [make_node("a")], [*old, new])
    plan = reconcile(snap, T0 + 11, suffixes())
    ((written, revision),) = plan.apps
    assert (written.rollout.reason, revision) == (DEADLINE_EXCEEDED, 10)  # guarded by the app's mod_revision
    assert [(e.reason, e.type) for e in plan.events] == [(DEADLINE_EXCEEDED, "Warning")]
    again = reconcile(make_snapshot([written], [make_node("a")], [*old, new]), T0 + 20, suffixes())
    assert again.apps == [] and again.events == [] and again.is_empty()


def test_a_stuck_rollout_takes_no_old_instance_down_and_surges_no_more():
    # maxUnavailable 1 would let one old instance go before any new one is ready.
    app = rolling(replicas=3)
    app.spec.update.max_surge, app.spec.update.max_unavailable = 1, 1
    old = [make_instance(app, f"web-old{i}", "a", generation=1) for i in range(3)]
    new = make_instance(app, "web-new", "b", state=pb.INSTANCE_STATE_STARTING, ready=False)
    nodes = [make_node("a"), make_node("b")]
    moving = reconcile(make_snapshot([app], nodes, [*old, new]), T0 + 5, suffixes())
    assert [i.status.reason for i, _ in moving.update] == ["Replaced"]  # before the deadline: it rolls
    stuck = reconcile(make_snapshot([app], nodes, [*old, new]), T0 + 11, suffixes())
    assert stuck.update == [] and stuck.create == [] and stuck.delete == []
    assert [a.rollout.reason for a, _ in stuck.apps] == [DEADLINE_EXCEEDED]


def test_a_stuck_rollout_starts_no_more_new_instances():
    app = rolling(replicas=3)
    app.spec.update.max_surge, app.spec.update.max_unavailable = 2, 0
    old = [make_instance(app, f"web-old{i}", "a", generation=1) for i in range(3)]
    new = make_instance(app, "web-new", "a", state=pb.INSTANCE_STATE_STARTING, ready=False)
    snap = make_snapshot([app], [make_node("a")], [*old, new])
    assert len(reconcile(snap, T0 + 5, suffixes()).create) == 1  # the second of maxSurge 2
    assert reconcile(snap, T0 + 11, suffixes()).create == []


def test_a_stuck_rollout_leaves_its_crash_loopers_where_they_are():
    app = rolling(replicas=2)
    old = [make_instance(app, f"web-old{i}", "a", generation=1) for i in range(2)]
    looping = crash_looping(app, "web-new", "b")
    nodes = [make_node("a"), make_node("b")]
    before = reconcile(make_snapshot([app], nodes, [*old, looping]), T0 + 5, suffixes())
    assert [i.status.reason for i, _ in before.update] == ["CrashLoop"]  # moved to another node, as before
    stuck_app = rolling(replicas=2, reason=DEADLINE_EXCEEDED)
    after = reconcile(make_snapshot([stuck_app], nodes, [*old, looping]), T0 + 15, suffixes())
    assert after.is_empty(), (after.create, after.update)


def test_a_stuck_rollout_still_drains():
    app = rolling(replicas=2, reason=DEADLINE_EXCEEDED, ready=1)
    draining = make_node("a")
    draining.draining = True
    old = make_instance(app, "web-old", "b", generation=1)
    new = make_instance(app, "web-new", "a")  # of the current generation, ready, on a draining node
    plan = reconcile(make_snapshot([app], [draining, make_node("b")], [old, new]), T0 + 30, suffixes())
    assert plan.apps == []  # still stuck: one ready is no more than ever
    assert len(plan.create) == 1 and plan.update == []  # its replacement comes first, as ever


# -- the history ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kept", "new", "live", "doomed"),
    [
        (range(1, 10), 10, set(), []),  # 10 with the new one: all kept
        (range(1, 11), 11, set(), [1]),
        (range(1, 13), 13, set(), [1, 2, 3]),
        (range(1, 13), 13, {1, 3}, [2]),  # an instance still runs 1 and 3
        (range(5, 15), 15, set(), [5]),
        ([], 1, set(), []),
    ],
)
def test_prune_keeps_the_newest_and_what_still_runs(kept, new, live, doomed):
    assert prune(kept, new, live) == doomed
    assert HISTORY == 10


def test_prune_never_deletes_the_new_one():
    assert prune([7], 7, set(), keep=1) == []


def spec_v(env: str, replicas: int = 3, **kw: object) -> pb.AppSpec:
    return normalize_app_spec(make_spec("web", replicas, 0, 0, env={"V": env}, **kw))


def test_the_template_leaves_out_what_rolls_nothing():
    spec = spec_v("one", replicas=5, labels={"t": "x"}, progress_deadline_ms=30_000)
    spec.service.port = 80
    template = template_of(spec)
    assert not template.HasField("service")
    assert all(not getattr(template, n) for n in NOT_TEMPLATE if n != "service")
    assert template.env["V"] == "one"


def test_with_template_keeps_the_current_rest():
    current = spec_v("two", replicas=7, labels={"t": "now"}, progress_deadline_ms=30_000, command=["b"])
    current.service.port = 80
    old = template_of(spec_v("one", replicas=2, labels={"t": "then"}, command=["a"]))
    back = with_template(current, old)
    assert (back.replicas, dict(back.labels), back.service.port, back.progress_deadline_ms) == (
        7,
        {"t": "now"},
        80,
        30_000,
    )
    assert (back.env["V"], list(back.command)) == ("one", ["a"])
    assert template_of(back) == old


def test_the_change_cause_names_the_changed_fields_as_the_manifest_does():
    before = make_app(spec_v("one", command=["a"]))
    after = make_app(spec_v("two", command=["b"], replicas=9, read_only_root_fs=True), generation=2)
    assert changed_fields(before.spec, after.spec) == ["command", "env", "readOnlyRootFilesystem"]
    assert change_cause(before, after) == "command, env, readOnlyRootFilesystem"
    assert (
        change_cause(before, after, "undo to generation 1")
        == "undo to generation 1: command, env, readOnlyRootFilesystem"
    )
    assert change_cause(None, after) == "created"
    secret = make_app(spec_v("two", command=["b"]), generation=3)
    secret.spec.secret_env.add(name="TOKEN", secret="s", key="k")
    assert changed_fields(after.spec, secret.spec) == ["readOnlyRootFilesystem", "env"]  # secret env entries: env


def kept(*generations: int, env: str = "old") -> dict[int, pb.AppGeneration]:
    return {g: pb.AppGeneration(generation=g, template=template_of(spec_v(f"{env}{g}"))) for g in generations}


def test_undo_goes_to_the_newest_earlier_generation():
    app = make_app(spec_v("old5"), generation=5)
    assert undo_target(app, kept(2, 3, 5), 0).generation == 3
    assert undo_target(app, kept(2, 3, 5), 2).generation == 2


@pytest.mark.parametrize(
    ("generations", "to", "reason", "message"),
    [
        ((2, 3, 5), 5, "SameGeneration", 'generation 5 is app "web"\'s current one: nothing to undo'),
        ((3, 5), 1, "GenerationGone", 'generation 1 of app "web" is no longer kept (kept: 3, 5)'),
        ((5,), 0, "NoHistory", 'app "web" has no earlier generation kept to go back to'),
        ((3, 5), 9, "NoSuchGeneration", 'app "web" has no generation 9 (its current one is 5)'),
    ],
)
def test_undo_refusals_say_why(generations, to, reason, message):
    app = make_app(spec_v("old5"), generation=5)
    with pytest.raises(Refused) as refused:
        undo_target(app, kept(*generations), to)
    assert (refused.value.reason, str(refused.value)) == (reason, message)


def test_undo_to_the_template_that_runs_now_is_refused():
    app = make_app(spec_v("old1"), generation=3)  # generation 3 was an undo to 1
    with pytest.raises(Refused, match="already runs generation 1's template \\(as generation 3\\)"):
        undo_target(app, kept(1, 2, 3), 1)


# -- rollout status's words ------------------------------------------------------------------


def info(updated: int, available: int, old: int, reason: str = PROGRESSING, replicas: int = 3) -> api.AppInfo:
    app = rolling(replicas=replicas, reason=reason, message="why")
    done = seen(updated, available, old, replicas).done
    return api.AppInfo(app=app, rollout=api.RolloutProgress(updated=updated, available=available, old=old, done=done))


@pytest.mark.parametrize(
    ("counts", "outcome", "line"),
    [
        ((1, 0, 3), Outcome.WAITING, "1 out of 3 new replicas have been updated..."),
        ((3, 3, 1), Outcome.WAITING, "1 old replicas are pending termination..."),
        ((3, 2, 0), Outcome.WAITING, "2 of 3 updated replicas are available..."),
        ((3, 3, 0), Outcome.DONE, 'app "web" successfully rolled out (generation 2)'),
    ],
)
def test_status_says_what_it_waits_for_as_kubectl(counts, outcome, line):
    got, text = judge(info(*counts))
    assert got is outcome and text.endswith(line)
    if outcome is Outcome.WAITING:
        assert text.startswith('Waiting for app "web" rollout to finish: ')


def test_status_of_a_stuck_rollout_is_an_error():
    assert judge(info(1, 0, 3, reason=DEADLINE_EXCEEDED)) == (
        Outcome.STUCK,
        'error: app "web" exceeded its progress deadline: why',
    )
    stale = info(1, 0, 3, reason=DEADLINE_EXCEEDED)
    stale.app.generation = 3  # stuck was generation 2's; 3 was just applied
    assert judge(stale)[0] is Outcome.WAITING


def test_the_dashboard_row_of_a_stuck_rollout():
    from scheduler.dashboard import overview

    app = rolling(replicas=2, reason=DEADLINE_EXCEEDED)
    insts = [make_instance(app, "web-old", "a", generation=1), make_instance(app, "web-new", "a", ready=False)]
    (row,) = overview(make_snapshot([app], [make_node("a")], insts), [], T0)["apps"]
    assert row["rollout"] == "ProgressDeadlineExceeded: 1/2 on generation 2"
    app.rollout.reason = PROGRESSING
    (row,) = overview(make_snapshot([app], [make_node("a")], insts), [], T0)["apps"]
    assert row["rollout"] == "rolling out: 1/2 on generation 2"
