"""Secrets, pure parts: the key file, sealing and opening (names bound in), rotation, the
checks on a new secret, the manifest's env list with secretKeyRef, and the node's lookup."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cli.manifest import ManifestError, load_manifests
from cli.render import manifest_yaml
from node.secret_env import SecretEnvError, secret_env
from orch.v1 import types_pb2 as pb
from scheduler.errors import InvalidRequest
from scheduler.secrets import KeyRing, SecretKeyError, SecretUnreadable, check_secret, generate_key_line

KEY_A = "a " + base64.b64encode(b"A" * 32).decode()
KEY_B = "b " + base64.b64encode(b"B" * 32).decode()


def test_sealed_values_are_not_in_the_record_and_open_again() -> None:
    keys = KeyRing.parse(KEY_A)
    sealed = keys.seal("db", {"password": b"hunter2-very-secret"}, now=100.0)
    assert b"hunter2" not in sealed.SerializeToString()
    assert (list(sealed.keys), sealed.key_id) == (["password"], "a")
    assert keys.open(sealed).data == {"password": b"hunter2-very-secret"}


def test_a_record_copied_under_another_name_does_not_open() -> None:
    keys = KeyRing.parse(KEY_A)
    sealed = keys.seal("db", {"password": b"x"}, now=1.0)
    sealed.name = "other"  # as if its value were put at secrets/other
    with pytest.raises(SecretUnreadable, match="does not verify"):
        keys.open(sealed)


def test_rotation_opens_with_the_old_key_and_reseals_with_the_new() -> None:
    old = KeyRing.parse(KEY_A).seal("db", {"k": b"v"}, now=1.0)
    rotated = KeyRing.parse(f"{KEY_B}\n# the old one, until resealed\n{KEY_A}\n")
    assert rotated.open(old).data == {"k": b"v"}
    again = rotated.reseal(old, now=2.0)
    assert again is not None and again.key_id == "b" and again.created_at == old.created_at
    assert rotated.reseal(again, now=3.0) is None
    with pytest.raises(SecretUnreadable, match="sealed with key b, which --secret-key-file lacks"):
        KeyRing.parse(KEY_A).open(again)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "no key"),
        ("a notbase64!", "not base64"),
        ("a " + base64.b64encode(b"short").decode(), "has 5 bytes, not 32"),
        (f"{KEY_A}\n{KEY_A}", "named twice"),
        ("bad/name " + base64.b64encode(b"A" * 32).decode(), "not a key name"),
    ],
)
def test_bad_key_files(text: str, why: str) -> None:
    with pytest.raises(SecretKeyError, match=why):
        KeyRing.parse(text, "keys")


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(generate_key_line("k") + "\n")
    path.chmod(0o640)
    with pytest.raises(SecretKeyError, match="readable by its group or other users"):
        KeyRing.load(path)
    path.chmod(0o600)
    assert KeyRing.load(path).primary == "k"


def test_check_secret_names_every_problem() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_secret("Bad_Name", {"ok": b"1", "../x": b"2", "a" * 300: b"3"})
    assert len(info.value.problems) == 3
    with pytest.raises(InvalidRequest, match="no data"):
        check_secret("db", {})
    with pytest.raises(InvalidRequest, match="over the limit"):
        check_secret("db", {"big": b"x" * (1 << 20)})
    check_secret("db.prod", {"password": b"x", "tls.crt": b"y"})


MANIFEST = """\
apiVersion: orch/v1
kind: App
metadata: {name: web}
spec:
  image: busybox
  env:
    - {name: MODE, value: prod}
    - name: DB_PASSWORD
      valueFrom:
        secretKeyRef: {name: db, key: password}
"""


def test_the_env_list_with_secret_refs_loads_and_renders_back(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MANIFEST)
    [app] = load_manifests([path])
    assert dict(app.spec.env) == {"MODE": "prod"}
    assert [(v.name, v.secret, v.key) for v in app.spec.secret_env] == [("DB_PASSWORD", "db", "password")]
    again = tmp_path / "again.yaml"
    again.write_text(manifest_yaml(app.spec))
    assert load_manifests([again])[0].spec == app.spec


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("    - {name: X, value: a, valueFrom: {secretKeyRef: {name: db, key: k}}}\n",
         "app.yaml:7 spec.env.X: set exactly one of value or valueFrom"),
        ("    - {name: X, valueFrom: {secretKeyRef: {name: Db_1, key: k}}}\n",
         'app.yaml:7 spec.env.X.valueFrom.secretKeyRef.name: "Db_1" is not a secret name'),
        ("    - {name: X, valueFrom: {secretKeyRef: {name: db}}}\n",
         "app.yaml:7 spec.env.X.valueFrom.secretKeyRef.key: required field is missing"),
        ("    - {name: MODE, value: a}\n    - {name: MODE, valueFrom: {secretKeyRef: {name: db, key: k}}}\n",
         "app.yaml:8 spec.env.MODE: set twice"),
    ],
)  # fmt: skip
def test_bad_env_entries_name_the_line(tmp_path: Path, env: str, expected: str) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(MANIFEST.split("  env:\n")[0] + "  env:\n" + env)
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    assert any(line.endswith("/" + expected) for line in str(info.value).splitlines()), str(info.value)


def test_the_node_resolves_variables_or_names_what_is_missing() -> None:
    spec = pb.AppSpec(secret_env=[pb.SecretEnvVar(name="PW", secret="db", key="password")])
    found = {"db": pb.SecretData(data={"password": b"s3cret"})}
    assert secret_env(spec, found.get) == {"PW": "s3cret"}
    with pytest.raises(SecretEnvError, match='secret "db" not found'):
        secret_env(spec, lambda name: None)
    with pytest.raises(SecretEnvError, match='has no key "password"'):
        secret_env(spec, lambda name: pb.SecretData(data={"user": b"u"}))
    with pytest.raises(SecretEnvError, match="not UTF-8"):
        secret_env(spec, lambda name: pb.SecretData(data={"password": b"\xff"}))
