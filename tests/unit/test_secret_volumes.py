"""Secret volumes: the manifest's shape and hostile names refused at apply (file:line), the
node's own refusal of hostile keys and paths, files and modes, and the secrets a node is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli.manifest import ManifestError, load_manifests
from cli.render import manifest_yaml
from node.runtime.model import SecretFile, SecretMount
from node.runtime.secret_mounts import SecretPayload, check_files
from node.secret_env import CONFIG_ERROR
from node.secret_volumes import SecretVolumeError, secret_mounts
from node.volumes import NodeVolumes
from orch.secretrefs import item_path_problem, referenced_secrets, secret_key_problem
from orch.v1 import types_pb2 as pb
from scheduler.secrets import KeyRing, Opener, generate_key_line
from scheduler.snapshot import Versioned

HEAD = "apiVersion: orch/v1\nkind: App\nmetadata: {name: web}\nspec:\n  image: busybox\n"
GOOD = (
    "  volumes:\n"
    "    - name: creds\n"
    "      secret: {secretName: db, items: [{key: password, path: db/password}], defaultMode: 0440}\n"
    "    - name: all\n"
    "      secret: {secretName: tls}\n"
    "  volumeMounts:\n"
    "    - {name: creds, mountPath: /etc/creds, readOnly: true}\n"
    "    - {name: all, mountPath: /etc/tls}\n"
)


def load(tmp_path: Path, body: str) -> pb.AppSpec:
    path = tmp_path / "app.yaml"
    path.write_text(HEAD + body)
    (app,) = load_manifests([path])
    return app.spec


def problems(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "app.yaml"
    path.write_text(HEAD + body)
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    return [p.removeprefix(f"{path}:") for p in info.value.problems]


def test_a_secret_volume_loads_with_octal_modes_and_renders_back(tmp_path: Path) -> None:
    spec = load(tmp_path, GOOD)
    creds, everything = spec.volumes
    assert creds.secret.secret_name == "db" and creds.secret.default_mode == 0o440  # YAML 1.1 octal, as kubectl
    assert [(i.key, i.path, i.HasField("mode")) for i in creds.secret.items] == [("password", "db/password", False)]
    assert everything.secret.secret_name == "tls" and not everything.secret.HasField("default_mode")
    assert referenced_secrets(spec) == {"db", "tls"}
    rendered = manifest_yaml(spec)
    assert yaml.safe_load(rendered)["spec"]["volumes"][1] == {"name": "all", "secret": {"secretName": "tls"}}
    again = tmp_path / "again.yaml"
    again.write_text(rendered)
    assert load_manifests([again])[0].spec == spec


@pytest.mark.parametrize(
    ("volume", "expected"),
    [
        (
            "{secretName: db, items: [{key: password, path: ../../etc/x}]}",
            '6 spec.volumes[0].secret.items[0].path: "../../etc/x" must not contain "..", "." or empty components',
        ),
        (
            "{secretName: db, items: [{key: password, path: /etc/x}]}",
            '6 spec.volumes[0].secret.items[0].path: "/etc/x" must be a relative path',
        ),
        (
            '{secretName: db, items: [{key: password, path: "a\\0b"}]}',
            '6 spec.volumes[0].secret.items[0].path: "a\\x00b" may hold only letters, digits, "-", "_", "." and "/"',
        ),
        (
            "{secretName: db, items: [{key: ../pw, path: pw}]}",
            '6 spec.volumes[0].secret.items[0].key: "../pw" is not a secret key '
            '(letters, digits, "-", "_" and ".", not "." or "..")',
        ),
        (
            "{secretName: db, items: [{key: a, path: x}, {key: b, path: x/y}]}",
            "6 spec.volumes[0].secret.items[1].path: clashes with items[0].path (a file cannot also be a directory)",
        ),
        (
            "{secretName: db, defaultMode: 01000}",
            "6 spec.volumes[0].secret.defaultMode: must be between 0 and 0777 (511), got 512",
        ),
        (
            "{secretName: db, items: [{key: a, path: a, mode: -1}]}",
            "6 spec.volumes[0].secret.items[0].mode: must be between 0 and 0777 (511), got -1",
        ),
        ("{secretName: DB}", '6 spec.volumes[0].secret.secretName: "DB" is not a secret name'),
        ("{items: [{key: a}]}", "6 spec.volumes[0].secret.items[0].path: required field is missing"),
    ],
)
def test_bad_secret_volumes_are_refused_at_apply_with_their_line(tmp_path: Path, volume: str, expected: str) -> None:
    found = problems(tmp_path, f"  volumes: [{{name: s, secret: {volume}}}]\n")
    assert any(p.startswith(expected) for p in found), found


def test_nothing_mounts_below_a_secret_volume_and_one_source_only(tmp_path: Path) -> None:
    body = (
        "  volumes: [{name: s, secret: {secretName: db}}, {name: e, emptyDir: {}}]\n"
        "  volumeMounts: [{name: s, mountPath: /etc/creds}, {name: e, mountPath: /etc/creds/cache}]\n"
    )
    assert problems(tmp_path, body) == [
        "7 spec.volumeMounts[1].mountPath: is below spec.volumeMounts[0].mountPath, a secret volume (read-only): "
        "mount it elsewhere"
    ]
    both = "  volumes: [{name: s, secret: {secretName: db}, emptyDir: {}}]\n"
    assert problems(tmp_path, both) == [
        "6 spec.volumes[0]: set only one of emptyDir, hostPath or secret, not emptyDir and secret"
    ]


def _spec(secret: pb.SecretVolume) -> pb.AppSpec:
    return pb.AppSpec(
        volumes=[pb.Volume(name="creds", secret=secret)],
        volume_mounts=[pb.VolumeMount(name="creds", mount_path="/etc/creds", read_only=True)],
    )


DATA = pb.SecretData(data={"password": b"pw", "user": b"u"})


def test_every_key_becomes_a_file_named_by_it_0400_by_default() -> None:
    (mount,) = secret_mounts(_spec(pb.SecretVolume(secret_name="db")), {"db": DATA}.get)
    assert mount == SecretMount("/etc/creds", (SecretFile("password", 0o400, b"pw"), SecretFile("user", 0o400, b"u")))


def test_items_choose_keys_paths_and_modes() -> None:
    secret = pb.SecretVolume(
        secret_name="db",
        default_mode=0o440,
        items=[pb.KeyToPath(key="password", path="db/pw"), pb.KeyToPath(key="user", path="user", mode=0o444)],
    )
    (mount,) = secret_mounts(_spec(secret), {"db": DATA}.get)
    assert mount.files == (SecretFile("db/pw", 0o440, b"pw"), SecretFile("user", 0o444, b"u"))


def test_a_missing_secret_or_key_is_a_config_error() -> None:
    with pytest.raises(SecretVolumeError, match='volume "creds": secret "db" not found') as info:
        secret_mounts(_spec(pb.SecretVolume(secret_name="db")), lambda name: None)
    assert info.value.reason == CONFIG_ERROR == "CreateContainerConfigError"
    secret = pb.SecretVolume(secret_name="db", items=[pb.KeyToPath(key="nope", path="x")])
    with pytest.raises(SecretVolumeError, match='has no key "nope"'):
        secret_mounts(_spec(secret), {"db": DATA}.get)


@pytest.mark.parametrize("key", ["../x", "a/b", "..", ".", "a\0b", "x" * 300])
def test_the_node_refuses_a_hostile_key_in_a_secret_whatever_the_scheduler_checked(key: str) -> None:
    hostile = pb.SecretData(data={"ok": b"1", key: b"2"})
    with pytest.raises(SecretVolumeError, match="refused"):
        secret_mounts(_spec(pb.SecretVolume(secret_name="db")), {"db": hostile}.get)


@pytest.mark.parametrize("path", ["../../etc/x", "/etc/x", "a/../../b", "a//b", "a\0b", ""])
def test_the_node_refuses_a_hostile_item_path_whatever_the_scheduler_checked(path: str) -> None:
    secret = pb.SecretVolume(secret_name="db", items=[pb.KeyToPath(key="password", path=path)])
    with pytest.raises(SecretVolumeError):
        secret_mounts(_spec(secret), {"db": DATA}.get)
    assert check_files(SecretMount("/x", (SecretFile(path, 0o400, b""),))) is not None  # and PID 1 again


def test_pid1_refuses_clashing_files_and_bad_modes() -> None:
    clash = SecretMount("/x", (SecretFile("a", 0o400, b""), SecretFile("a/b", 0o400, b"")))
    assert "clashes" in (check_files(clash) or "")
    assert "0777" in (check_files(SecretMount("/x", (SecretFile("a", 0o4755, b""),))) or "")
    assert check_files(SecretMount("/x", (SecretFile("a/b", 0o400, b""), SecretFile("a/c", 0o400, b"")))) is None


def test_the_payload_travels_as_json_and_garbage_is_refused() -> None:
    payload = SecretPayload({"A": "b"}, (SecretMount("/x", (SecretFile("k", 0o400, b"\x00\xff"),)),))
    assert SecretPayload.from_wire(payload.wire()) == payload
    assert SecretPayload.from_wire({"env": {"A": "b"}}) == SecretPayload({"A": "b"})  # an older agent's
    garbages: list[object] = [
        [],
        {"mounts": [{"target": "/x"}]},
        {"mounts": [{"target": "/x", "files": [["k", 1, "!"]]}]},
    ]
    for garbage in garbages:
        with pytest.raises(ValueError):
            SecretPayload.from_wire(garbage)


def test_the_node_volumes_leave_secret_volumes_to_the_runtime(tmp_path: Path) -> None:
    spec = _spec(pb.SecretVolume(secret_name="db"))
    assert NodeVolumes(tmp_path).prepare(pb.Instance(name="web-1", spec=spec)) == ()


def test_a_node_is_sent_the_secrets_its_volumes_refer_to() -> None:
    keys = KeyRing.parse(generate_key_line("k"))
    stored = {name: Versioned(keys.seal(name, {"k": name.encode()}, 0.0), 1) for name in ("db", "tls", "other")}
    spec = _spec(pb.SecretVolume(secret_name="tls"))
    spec.secret_env.add(name="PW", secret="db", key="k")
    opened = Opener(keys).needed([spec], stored)
    assert sorted(opened) == ["db", "tls"]


def test_key_and_path_rules() -> None:
    assert secret_key_problem("tls.crt") is None and secret_key_problem("a/b") is not None
    assert item_path_problem("db/tls.crt") is None and item_path_problem("db/") is not None
