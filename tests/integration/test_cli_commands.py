"""The CLI against a real scheduler: `orch diff` and `apply --dry-run` (unified diff, rollout or
scale, kubectl diff's exit codes), `get -o yaml` and `-l`, describe, version and completion."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from orch.v1 import api_pb2, api_pb2_grpc
from tests.fixtures.etcd import start_etcd
from tests.fixtures.processes import orch_argv, orch_env, stop
from tests.integration.conftest import orch, start_scheduler

APP = """\
apiVersion: orch/v1
kind: App
metadata: {name: %(name)s}
spec:
  replicas: %(replicas)d
  image: rootfs:/nonexistent
  command: [sleep, "1000"]
  env: {MODE: %(mode)s}
"""


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    etcd = start_etcd()
    try:
        s = start_scheduler(etcd, tmp_path_factory.mktemp("diff") / "scheduler.log", "diff-0")
        yield s.address
        stop(s.proc)
    finally:
        etcd.stop()


def manifest(tmp_path: Path, name: str, replicas: int = 2, mode: str = "a") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(APP % {"name": name, "replicas": replicas, "mode": mode})
    return str(path)


def test_a_new_app_is_all_additions_and_exit_1(scheduler: str, tmp_path: Path) -> None:
    r = orch(scheduler, "diff", manifest(tmp_path, "diff-new"))
    assert r.returncode == 1, r.stderr
    assert "--- /dev/null" in r.stdout and "+++ app/diff-new (" in r.stdout
    assert "+  replicas: 2" in r.stdout
    assert "app/diff-new: created, generation 1, 2 replicas" in r.stderr
    assert orch(scheduler, "get", "apps", "diff-new").returncode == 1  # nothing stored


def test_unchanged_is_silent_and_exit_0(scheduler: str, tmp_path: Path) -> None:
    path = manifest(tmp_path, "diff-same")
    assert orch(scheduler, "apply", path).returncode == 0
    r = orch(scheduler, "diff", path)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert "app/diff-same: unchanged" in r.stderr


def test_scaling_is_told_apart_from_a_rollout(scheduler: str, tmp_path: Path) -> None:
    assert orch(scheduler, "apply", manifest(tmp_path, "diff-web")).returncode == 0

    r = orch(scheduler, "diff", manifest(tmp_path, "diff-web", replicas=5))
    assert r.returncode == 1
    assert "-  replicas: 2\n+  replicas: 5\n" in r.stdout
    assert "--- app/diff-web (stored, generation 1)" in r.stdout
    assert "app/diff-web: scales 2 → 5, instances stay (generation 1)" in r.stderr

    r = orch(scheduler, "diff", manifest(tmp_path, "diff-web", replicas=3, mode="b"))
    assert r.returncode == 1
    assert "-    MODE: a\n+    MODE: b\n" in r.stdout
    assert "app/diff-web: rolls its instances (generation 1 → 2) and scales 2 → 3" in r.stderr


def test_apply_dry_run_shows_the_diff_and_stores_nothing(scheduler: str, tmp_path: Path) -> None:
    assert orch(scheduler, "apply", manifest(tmp_path, "diff-dry")).returncode == 0
    r = orch(scheduler, "apply", "--dry-run", manifest(tmp_path, "diff-dry", mode="c"))
    assert r.returncode == 0, r.stderr
    assert "+    MODE: c" in r.stdout
    assert "app/diff-dry: rolls its instances (generation 1 → 2) (dry run)" in r.stdout
    r = orch(scheduler, "diff", manifest(tmp_path, "diff-dry"))
    assert r.returncode == 0, r.stdout  # still what was applied first


def test_errors_exit_2(scheduler: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((APP % {"name": "diff-bad", "replicas": 1, "mode": "a"}).replace("replicas: 1", "replicas: many"))
    r = orch(scheduler, "diff", str(bad))
    assert r.returncode == 2 and f"{bad}:5" in r.stderr, r.stderr
    r = orch("127.0.0.1:1", "diff", manifest(tmp_path, "diff-x"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr


def test_get_o_yaml_is_a_manifest_that_applies_unchanged(scheduler: str, tmp_path: Path) -> None:
    assert orch(scheduler, "apply", manifest(tmp_path, "diff-back", replicas=3)).returncode == 0
    r = orch(scheduler, "get", "apps", "diff-back", "-o", "yaml")
    assert r.returncode == 0 and "kind: App" in r.stdout, r.stderr
    back = orch(scheduler, "diff", "-", stdin=r.stdout)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "app/diff-back: unchanged" in back.stderr


def test_selectors_pick_apps_and_their_instances(scheduler: str, tmp_path: Path) -> None:
    for name, tier in (("diff-sel-a", "web"), ("diff-sel-b", "db")):
        text = (APP % {"name": name, "replicas": 1, "mode": "a"}).replace(
            f"metadata: {{name: {name}}}", f"metadata: {{name: {name}, labels: {{tier: {tier}, suite: diff}}}}"
        )
        (tmp_path / f"{name}.yaml").write_text(text)
        assert orch(scheduler, "apply", str(tmp_path / f"{name}.yaml")).returncode == 0

    def names(*args: str) -> list[str]:
        r = orch(scheduler, "get", *args, "-o", "json")
        assert r.returncode == 0, r.stderr
        return sorted(x["name"] for x in json.loads(r.stdout))

    assert names("apps", "-l", "suite=diff,tier=web") == ["diff-sel-a"]
    assert names("apps", "-l", "suite=diff,tier!=web") == ["diff-sel-b"]
    assert [n.rsplit("-", 1)[0] for n in names("instances", "-l", "tier=db,suite")] == ["diff-sel-b"]
    r = orch(scheduler, "get", "apps", "-l", "tier=web,,x")
    assert r.returncode == 2 and "empty requirement" in r.stderr


def test_version_of_the_client_and_the_scheduler(scheduler: str) -> None:
    r = orch(scheduler, "version", "-o", "json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["client"] == v["scheduler"] != "unknown" and v["api"] == "orch.v1"
    r = orch("127.0.0.1:1", "version", "--client")
    assert r.returncode == 0 and r.stdout.startswith("Client version: "), r.stderr


def test_describe_app_shows_its_spec_instances_and_events(scheduler: str, tmp_path: Path) -> None:
    assert orch(scheduler, "apply", manifest(tmp_path, "diff-desc", replicas=2, mode="z")).returncode == 0
    r = orch(scheduler, "describe", "app", "diff-desc")
    assert r.returncode == 0, r.stderr
    assert "spec:\n  replicas: 2\n" in r.stdout and "    MODE: z" in r.stdout
    assert "instances:" in r.stdout and r.stdout.count("diff-desc-") >= 2
    assert "Applied" in r.stdout  # its event


def complete(scheduler: str, words: str) -> list[str]:
    env = orch_env() | {
        "_ORCH_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    argv = orch_argv("--scheduler", scheduler)
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return [line.split(",", 1)[1] for line in r.stdout.splitlines() if line]


def test_shell_completion_offers_names_from_the_cluster(scheduler: str, tmp_path: Path) -> None:
    assert orch(scheduler, "apply", manifest(tmp_path, "diff-comp", replicas=1)).returncode == 0
    assert "complete -o nosort -F _orch_completion orch" in orch(scheduler, "completion", "bash").stdout
    assert complete(scheduler, f"orch --scheduler {scheduler} scale diff-co") == ["diff-comp"]
    assert complete(scheduler, f"orch --scheduler {scheduler} describe app diff-co") == ["diff-comp"]
    (inst,) = complete(scheduler, f"orch --scheduler {scheduler} describe instance diff-comp-")
    assert inst.startswith("diff-comp-")
    assert "diff-comp" in complete(scheduler, f"orch --scheduler {scheduler} logs diff-co")
    assert complete("127.0.0.1:1", "orch --scheduler 127.0.0.1:1 scale x") == []  # no cluster: no names, no error


def test_watch_streams_a_message_after_each_change(scheduler: str, tmp_path: Path) -> None:
    with grpc.insecure_channel(scheduler) as ch:
        stream = api_pb2_grpc.OrchStub(ch).Watch(api_pb2.WatchRequest(), timeout=30)
        first = next(stream).revision
        assert orch(scheduler, "apply", manifest(tmp_path, "diff-watch", replicas=1)).returncode == 0
        assert next(stream).revision > first
        stream.cancel()


def test_get_watch_prints_again_when_something_changes(scheduler: str, tmp_path: Path) -> None:
    argv = orch_argv("--scheduler", scheduler, "get", "apps", "--watch", "-l", "watched=yes", "-o", "json")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=orch_env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "[]"
        text = (APP % {"name": "diff-watched", "replicas": 1, "mode": "a"}).replace(
            "metadata: {name: diff-watched}", "metadata: {name: diff-watched, labels: {watched: 'yes'}}"
        )
        (tmp_path / "w.yaml").write_text(text)
        assert orch(scheduler, "apply", str(tmp_path / "w.yaml")).returncode == 0
        printed = ""
        while '"diff-watched"' not in printed:  # the next listing; a timeout fails the test
            printed += proc.stdout.readline()
    finally:
        proc.kill()
        proc.communicate()  # and closes the pipes
