"""Rollouts on `orch up` with real containers (issue 13 item 1): history lists the generations,
undo brings the old spec back into running instances (read from inside them with `orch exec`),
and a rollout whose new instances exit at once stops at its progressDeadline, saying so."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.cluster import instances, orch, orch_up
from tests.fixtures.processes import run_orch

pytestmark = pytest.mark.root

APP = """\
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: 2
  image: rootfs:%(rootfs)s
  command: %(command)s
  env: {VERSION: %(version)s}
  resources: {cpu: 50m, memory: 32Mi, pids: 64}
  stopGracePeriod: 1s
%(extra)s"""
SLEEP = '["sleep", "100000"]'
EXITS = '["sh", "-c", "echo failing on purpose; exit 3"]'
MARKS_READY = '["sh", "-c", "touch /tmp/ready; exec sleep 100000"]'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Any) -> Any:
    with orch_up(tmp_path_factory.mktemp("rollouts"), "--nodes", "2", cidr_start=236) as info:
        yield info


def apply(info: dict[str, Any], rootfs: Any, name: str, version: str, command: str = SLEEP, extra: str = "") -> None:
    text = APP % {"name": name, "rootfs": rootfs, "command": command, "version": version, "extra": extra}
    r = orch(info, "apply", "-", stdin=text)
    assert r.returncode == 0, r.stderr


def status(info: dict[str, Any], name: str) -> tuple[int, str]:
    """`orch rollout status` with a timeout of its own, which the subprocess outlives."""
    tls = ["--tls-dir", info["tlsDir"]] if info.get("tlsDir") else []
    r = run_orch("--scheduler", info["schedulers"][0], *tls, "rollout", "status", name, "--timeout", "90s", timeout=120)
    return r.returncode, r.stdout + r.stderr


def running(info: dict[str, Any], app: str) -> list[dict[str, Any]]:
    return [i for i in instances(info) if i["app"] == app and i["desired"] == "Run" and i["state"] == "Running"]


def version_inside(info: dict[str, Any], instance: str) -> str:
    r = orch(info, "exec", instance, "--", "sh", "-c", 'echo "$VERSION"')
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_undo_brings_the_old_spec_back_into_running_instances(cluster, busybox_rootfs):
    info = cluster
    apply(info, busybox_rootfs, "roll", "one")
    assert status(info, "roll")[0] == 0
    apply(info, busybox_rootfs, "roll", "two")
    code, out = status(info, "roll")
    assert code == 0 and 'app "roll" successfully rolled out (generation 2)' in out, out
    v2 = running(info, "roll")
    assert len(v2) == 2 and {version_inside(info, i["name"]) for i in v2} == {"two"}

    r = orch(info, "rollout", "history", "roll", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert [(g["generation"], g["changeCause"]) for g in json.loads(r.stdout)] == [(1, "created"), (2, "env")]

    r = orch(info, "rollout", "undo", "roll")
    assert r.returncode == 0 and "(generation 2 → 3)" in r.stdout, r.stderr
    code, out = status(info, "roll")
    assert code == 0 and "successfully rolled out (generation 3)" in out, out
    v3 = running(info, "roll")  # done: 2 of generation 3 ready, no other left to run
    assert len(v3) == 2 and {i["generation"] for i in v3} == {3}
    assert not {i["name"] for i in v3} & {i["name"] for i in v2}  # new instances, not v2's relabelled
    assert {version_inside(info, i["name"]) for i in v3} == {"one"}  # generation 1's env, inside
    history = json.loads(orch(info, "rollout", "history", "roll", "-o", "json").stdout)
    assert history[-1]["changeCause"] == "undo to generation 1: env" and history[-1]["current"]
    assert orch(info, "delete", "app", "roll").returncode == 0


def test_a_rollout_that_crash_loops_stops_at_its_deadline(cluster, busybox_rootfs):
    info = cluster
    # progressDeadline is a field of the app (its default, 2m, is unit-tested). The probe makes
    # "ready" mean it: without one, an instance counts as ready while Running, and one that exits
    # at once may be seen Running for a moment (then an old one could go, as in Kubernetes).
    # Generation 1 keeps the default deadline: its first ready instance took over 10 s in the
    # emulated VM, and what is tested is the stop of a rollout that cannot progress. Ready means
    # the command made /tmp/ready, which generation 2's never does: a probe that merely runs
    # (`exit 0`) can pass in a new instance in its moment before the exit, the likely reason both
    # old instances were gone once in the slow VM (each such pass is progress, and lets one go).
    readiness = "  readiness: {exec: [sh, -c, 'test -f /tmp/ready'], periodSeconds: 1s}\n"
    apply(info, busybox_rootfs, "bad", "one", command=MARKS_READY, extra=readiness)
    code, out = status(info, "bad")
    assert code == 0, out
    before = {i["name"] for i in running(info, "bad")}
    apply(info, busybox_rootfs, "bad", "two", command=EXITS, extra=readiness + "  progressDeadline: 10s\n")
    code, out = status(info, "bad")
    assert code == 1, out
    assert 'error: app "bad" exceeded its progress deadline: generation 2: 0 of 2 instances ready' in out

    wide = orch(info, "get", "apps", "bad", "-o", "wide").stdout
    assert "ProgressDeadlineExceeded" in wide, wide
    described = orch(info, "describe", "app", "bad").stdout
    assert "rollout: ProgressDeadlineExceeded" in described and "Warning  ProgressDeadlineExceeded" in described
    # It stopped: both old instances still run, and the one new instance maxSurge allowed is all there is.
    # Empty once in the emulated VM (25654ef): a failure lists what each instance of "bad" was.
    assert {i["name"] for i in running(info, "bad")} >= before, [
        (i["name"], i["generation"], i["desired"], i["state"], i.get("reason"), i.get("ready"))
        for i in instances(info)
        if i["app"] == "bad"
    ]
    new = [i for i in instances(info) if i["app"] == "bad" and i["generation"] == 2 and i["desired"] == "Run"]
    assert len(new) == 1, new

    r = orch(info, "rollout", "undo", "bad")  # the way out
    assert r.returncode == 0, r.stderr
    code, out = status(info, "bad")
    assert code == 0 and "successfully rolled out (generation 3)" in out, out
    assert orch(info, "delete", "app", "bad").returncode == 0
