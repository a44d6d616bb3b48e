"""The web dashboard on a real scheduler with hollow agents, in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.etcd import free_port
from tests.fixtures.fake_agent import FakeAgent
from tests.fixtures.processes import ROOT, stop, wait_for
from tests.integration.conftest import orch, start_scheduler

ARTIFACTS = ROOT / "test-artifacts"  # kept after the run: CI collects it
APP = """\
apiVersion: orch/v1
kind: App
metadata: {name: dash-web}
spec:
  replicas: 2
  image: rootfs:/nonexistent
  command: [sleep, "1000"]
  env: {API_TOKEN: hunter2-not-for-the-page}
"""


@pytest.fixture
def dashboard(etcd, tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    s = start_scheduler(etcd, tmp_path / "scheduler.log", "dash-0", "--dashboard-listen", f"127.0.0.1:{port}")
    agents = [FakeAgent(s.address, f"dash-n{i}") for i in range(2)]
    try:
        for a in agents:
            assert a.registered.wait(10)
        (tmp_path / "app.yaml").write_text(APP)
        assert orch(s.address, "apply", str(tmp_path / "app.yaml")).returncode == 0
        yield s.address, f"http://127.0.0.1:{port}/"
    finally:
        for a in agents:
            a.kill()
        stop(s.proc)


def get(url: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, dict(e.headers), e.read()


def test_the_overview_has_nodes_apps_and_instances_and_no_spec_contents(dashboard: tuple[str, str]) -> None:
    _, url = dashboard

    def running() -> dict | None:
        doc = json.loads(get(url + "api/overview")[2])
        return doc if sum(i["state"] == "Running" for i in doc["instances"]) == 2 else None

    doc = wait_for(running, 20, "2 Running on the dashboard")
    assert [n["name"] for n in doc["nodes"]] == ["dash-n0", "dash-n1"]
    assert doc["apps"] == [
        {
            "name": "dash-web",
            "replicas": 2,
            "ready": 2,
            "running": 2,
            "pending": 0,
            "generation": 1,
            "rollout": "stable",
        }
    ]
    _, headers, body = get(url + "api/overview")
    assert b"hunter2" not in body and b"sleep" not in body  # env and commands may hold secrets
    assert headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_rebinding_and_writes_are_refused(dashboard: tuple[str, str]) -> None:
    _, url = dashboard
    assert get(url + "api/overview", host="attacker.example")[0] == 421
    assert get(url, host="localhost:1")[0] == 421  # another port: another origin
    assert get(url + "api/overview", host="localhost")[0] == 200
    assert get(url + "nothing-here")[0] == 404
    req = urllib.request.Request(url + "api/overview", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    e.value.close()
    assert e.value.code == 501


@pytest.mark.skipif(
    not shutil.which("chromium"), reason="chromium is not installed (deploy/install-deps.sh installs it)"
)
def test_the_page_renders_in_chromium(dashboard: tuple[str, str], tmp_path: Path) -> None:
    _, url = dashboard
    wait_for(lambda: b'"Running"' in get(url + "api/overview")[2], 20, "instances Running")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    profile = f"--user-data-dir={tmp_path / 'chromium'}"
    chrome = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", profile,
              "--virtual-time-budget=5000", "--window-size=1280,900"]  # fmt: skip
    dom = subprocess.run([*chrome, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    # Drawn by the page's script from /api/overview: the tables hold the cluster.
    for text in ("dash-n0", "dash-n1", "dash-web", "Running", "stable", "updated "):
        assert text in dom, text
    assert "cannot reach the scheduler" not in dom
    subprocess.run([*chrome, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000
