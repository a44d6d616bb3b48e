"""Secrets through a real scheduler on a real etcd: created with the CLI, listed without values,
sealed in etcd (the raw value read with etcdctl holds no plaintext), refused without a key."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from scheduler.secrets import generate_key_line
from tests.fixtures.etcd import free_port
from tests.fixtures.fake_agent import FakeAgent
from tests.fixtures.processes import orch_argv, orch_env, stop, wait_for
from tests.integration.conftest import orch, start_scheduler

VALUE = "correct-horse-battery-staple-42"


def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text(generate_key_line("k1") + "\n")
    path.chmod(0o600)
    return path


def raw(etcd, key: str) -> bytes:
    out = subprocess.run(["etcdctl", "--endpoints", etcd.url, "get", key, "--print-value-only"],
                         capture_output=True, check=True).stdout  # fmt: skip
    return out


def test_a_secret_is_sealed_in_etcd_and_never_shown(etcd, tmp_path: Path) -> None:
    s = start_scheduler(etcd, tmp_path / "s.log", "s0", "--secret-key-file", str(key_file(tmp_path)))
    try:
        (tmp_path / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\n")
        made = orch(s.address, "secret", "create", "db", "--from-literal", f"password={VALUE}",
                    "--from-file", str(tmp_path / "tls.crt"))  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert "secret/db created (2 keys)" in made.stdout
        stored = raw(etcd, "/orch/secrets/db")
        assert stored and VALUE.encode() not in stored and b"BEGIN CERTIFICATE" not in stored

        listed = orch(s.address, "secret", "get")
        assert listed.returncode == 0 and "db" in listed.stdout and "password,tls.crt" in listed.stdout
        assert VALUE not in listed.stdout
        as_json = json.loads(orch(s.address, "secret", "get", "db", "-o", "json").stdout)
        assert as_json[0]["keys"] == ["password", "tls.crt"] and VALUE not in json.dumps(as_json)

        again = orch(s.address, "secret", "create", "db", "--from-literal", "password=x")
        assert again.returncode == 1 and 'secret "db" already exists (--replace' in again.stderr
        bad = orch(s.address, "secret", "create", "Bad_Name", "--from-literal", "a=b")
        assert bad.returncode == 1 and "not a DNS subdomain" in bad.stderr and "Traceback" not in bad.stderr

        assert orch(s.address, "secret", "delete", "db").returncode == 0
        assert raw(etcd, "/orch/secrets/db") == b""
        gone = orch(s.address, "secret", "delete", "db")
        assert gone.returncode == 1 and 'secret "db" not found' in gone.stderr
    finally:
        stop(s.proc)


def test_without_a_key_secrets_are_refused_with_the_reason(etcd, tmp_path: Path) -> None:
    s = start_scheduler(etcd, tmp_path / "s.log", "s0")
    try:
        r = orch(s.address, "secret", "create", "db", "--from-literal", "a=b")
        assert r.returncode == 1 and "started without --secret-key-file" in r.stderr
    finally:
        stop(s.proc)


def test_a_key_file_others_can_read_stops_the_scheduler(etcd, tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    keys.chmod(0o644)
    argv = orch_argv("scheduler", "--listen", f"127.0.0.1:{free_port()}", "--etcd", etcd.endpoint,
                     "--insecure", "--insecure-etcd", "--secret-key-file", str(keys))  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=orch_env())
    assert r.returncode == 1 and "readable by its group or other users (mode 644); chmod 600" in r.stderr


SECRET_VOLUME_APP = """\
apiVersion: orch/v1
kind: App
metadata: {name: files}
spec:
  image: busybox
  volumes: [{name: creds, secret: {secretName: db, items: [{key: password, path: db/password}]}}]
  volumeMounts: [{name: creds, mountPath: /etc/creds, readOnly: true}]
"""


def test_a_secret_used_only_by_a_volume_reaches_the_node_and_its_changes_too(etcd, tmp_path: Path) -> None:
    """The desired set carries the secrets of volumes as of variables (scheduler/secrets.py Opener),
    and a changed secret is sent again (scheduler/cache.py); USED-BY counts the volume."""
    s = start_scheduler(etcd, tmp_path / "s.log", "s0", "--secret-key-file", str(key_file(tmp_path)))
    agent = FakeAgent(s.address, "n0")
    try:
        assert agent.registered.wait(10)
        assert orch(s.address, "secret", "create", "db", "--from-literal", f"password={VALUE}").returncode == 0
        assert orch(s.address, "apply", "-", stdin=SECRET_VOLUME_APP).returncode == 0
        wait_for(lambda: "db" in agent.secrets, 20)
        assert agent.secrets["db"].data["password"] == VALUE.encode()
        replaced = orch(s.address, "secret", "create", "db", "--from-literal", "password=new", "--replace")
        assert replaced.returncode == 0, replaced.stderr
        wait_for(lambda: agent.secrets["db"].data["password"] == b"new", 20)
        assert "files" in orch(s.address, "secret", "get", "db").stdout
        shown = orch(s.address, "get", "app", "files", "-o", "yaml").stdout
        assert "secretName: db" in shown and VALUE not in shown
    finally:
        agent.kill()
        stop(s.proc)
