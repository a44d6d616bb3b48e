"""Liveness and startup probes on `orch up` (issue 13 item 4): a wedged instance is restarted by
its node, and what happened is visible through the CLI (restart count, lastState, the event,
the exit metric); `orch logs --previous` shows the old incarnation's output."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.cluster import delete_apps, instances, orch, orch_up
from tests.fixtures.processes import wait_for

pytestmark = pytest.mark.root

APP = """
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: 1
  image: rootfs:%(root)s
  command: ["sh", "-c", %(script)r]
  stopGracePeriod: 1s
%(extra)s"""

# httpd serves /www/healthz while the file is there; each incarnation says hello with a number of its own.
WEB = 'echo "boot $RANDOM$RANDOM"; echo ok > /www/healthz; exec httpd -f -p 8080 -h /www'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with orch_up(tmp_path_factory.mktemp("probes"), "--nodes", "1") as info:
        yield info


def apply(info: dict[str, Any], root: Path, name: str, script: str, extra: str) -> None:
    r = orch(info, "apply", "-", stdin=APP % {"name": name, "root": root, "script": script, "extra": extra})
    assert r.returncode == 0, r.stderr


def only(info: dict[str, Any], app: str) -> dict[str, Any] | None:
    insts = [i for i in instances(info) if i["app"] == app and i["desired"] == "Run"]
    return insts[0] if len(insts) == 1 else None


def logs(info: dict[str, Any], *args: str) -> tuple[int, str, str]:
    r = orch(info, "logs", *args)
    return r.returncode, r.stdout, r.stderr


def exits(info: dict[str, Any], node: str, app: str) -> dict[str, float]:
    agent = next(p for p in info["processes"] if p["role"] == "agent" and p["node"] == node)
    with urllib.request.urlopen(agent["metricsUrl"], timeout=5) as resp:
        text = resp.read().decode()
    return {
        s.labels["reason"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "orch_instance_exits"
        for s in f.samples
        if s.name == "orch_instance_exits_total" and s.labels.get("app") == app
    }


def test_liveness_restarts_a_wedged_instance(cluster: dict[str, Any], busybox_rootfs: Path) -> None:
    info = cluster
    live = "  liveness: {http: {port: 8080, path: /healthz}, periodSeconds: 1, failureThreshold: 2}\n"
    apply(info, busybox_rootfs, "wedge", WEB, live)
    first = wait_for(lambda: (i := only(info, "wedge")) and i["state"] == "Running" and i, 30, "wedge running")
    name = first["name"]
    time.sleep(3)  # three periods: a healthy instance is left alone
    assert only(info, "wedge")["restarts"] == 0  # type: ignore[index]
    code, out, err = logs(info, "--previous", name)
    assert out == ""
    assert code != 0 and f'instance "{name}" has not restarted' in err and "Traceback" not in err
    _, before, _ = logs(info, name)
    assert before.startswith("boot ")

    r = orch(info, "exec", name, "--", "busybox", "rm", "/www/healthz")  # it still runs, but answers 404 now
    assert r.returncode == 0, r.stderr
    again = wait_for(
        lambda: (i := only(info, "wedge")) and i["restarts"] == 1 and i["state"] == "Running" and i, 30, "restarted"
    )
    assert again["name"] == name  # restarted in place by its node, not replaced
    last = again["lastState"]
    assert last["reason"] == "LivenessFailed" and "liveness probe failed 2 times in a row" in last["message"]
    assert ": 404" in last["message"]

    def restart_event() -> tuple[str, str] | None:  # recorded right after the status that counts it
        described = orch(info, "describe", "instance", name).stdout
        lines = [line for line in described.splitlines() if "Warning" in line and "LivenessFailed" in line]
        return (described, lines[0]) if lines else None

    described, event = wait_for(restart_event, 10, "the restart's event")
    assert "restarts: 1" in described and "lastState: reason=LivenessFailed" in described
    assert f"{name}: liveness probe failed 2 times in a row" in event and event.endswith("; restart 1")
    assert exits(info, again["node"], "wedge").get("LivenessFailed") == 1.0

    # The old incarnation's output is the previous log; the new one starts a log of its own.
    wait_for(lambda: logs(info, name)[1].startswith("boot "), 10, "the new incarnation's first line")
    assert logs(info, "-p", name) == (0, before, "")
    _, now, _ = logs(info, name)
    assert len(now.splitlines()) == 1 and now != before
    # Healthy again (the new incarnation wrote /www/healthz): no more restarts.
    time.sleep(3)
    assert only(info, "wedge")["restarts"] == 1  # type: ignore[index]
    delete_apps(info, "wedge")


def test_startup_probe_holds_liveness_back_and_restarts_what_never_starts(
    cluster: dict[str, Any], busybox_rootfs: Path
) -> None:
    info = cluster
    never = "  startup: {exec: [test, -f, /tmp/started], periodSeconds: 1, failureThreshold: 2}\n"
    apply(info, busybox_rootfs, "never", "exec sleep 1000", never)
    # httpd listens only after 12 s; liveness alone (one failure restarts) would kill it first.
    # 12 s, not less: the first look at it must come before it is ready, and in the emulated VM
    # (make test-v2) a CLI call alone takes seconds.
    slow = "sleep 12; " + WEB
    gated = (
        "  startup: {tcp: 8080, periodSeconds: 1, failureThreshold: 30}\n"
        "  liveness: {tcp: 8080, periodSeconds: 1, failureThreshold: 1}\n"
    )
    apply(info, busybox_rootfs, "slow", slow, gated)

    inst = wait_for(lambda: (i := only(info, "slow")) and i["state"] == "Running" and i, 30, "slow running")
    assert inst["ready"] is False  # not before its startup probe succeeded
    ready = wait_for(lambda: (i := only(info, "slow")) and i["ready"] and i, 60, "slow ready")
    assert ready["restarts"] == 0

    restarted = wait_for(lambda: (i := only(info, "never")) and i["restarts"] >= 1 and i, 30, "never restarted")
    assert restarted["lastState"]["reason"] == "StartupFailed"
    assert "startup probe failed 2 times in a row: exec test: exit 1" in restarted["lastState"]["message"]
    assert restarted["ready"] is False
    delete_apps(info, "slow", "never")


def test_a_bad_probe_names_file_line_and_field(cluster: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    probe = "  liveness:\n    tcp: 80\n    failureThreshold: 0\n"
    text = APP % {"name": "bad", "root": "/x", "script": "true", "extra": probe}
    path.write_text(text)
    line = text.splitlines().index("    failureThreshold: 0") + 1
    r = orch(cluster, "apply", str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{path}:{line} spec.liveness.failureThreshold: must be at least 1, got 0" in r.stderr
    assert only(cluster, "bad") is None
