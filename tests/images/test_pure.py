"""Pure parts: reference grammar, Docker's process rules, platform selection, credentials."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

import node.images
from node.images import ImageConfig, InvalidReference, NoCommand, effective_process, parse_reference
from node.images.auth import credentials_for, load_credentials, parse_challenge
from node.images.manifest import Platform, host_platform, select_platform
from node.images.registry import is_insecure

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("team/app", "docker.io/team/app:latest"),
        ("127.0.0.1:5000/busybox:1", "127.0.0.1:5000/busybox:1"),
        ("localhost/a/b/c:v1.2.3-rc_1", "localhost/a/b/c:v1.2.3-rc_1"),
        ("[::1]:5000/busybox", "[::1]:5000/busybox:latest"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1@{DIGEST}", f"docker.io/library/busybox:1@{DIGEST}"),
        ("oci:/var/lib/layout:v1", "oci:/var/lib/layout:v1"),
        ("oci:/var/lib/layout", "oci:/var/lib/layout"),
        ("oci-archive:/x/app.tar", "oci-archive:/x/app.tar"),
        ("docker-archive:/x/app.tar", "docker-archive:/x/app.tar"),
        ("rootfs:/srv/rootfs", "rootfs:/srv/rootfs"),
    ],
)
def test_parse_reference_normalises(image: str, expected: str) -> None:
    assert str(parse_reference(image)) == expected


def test_reference_fields() -> None:
    ref = parse_reference(f"registry.example.com:443/team/app:v2@{DIGEST}")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("registry.example.com:443", "team/app", "v2", DIGEST)
    assert ref.remote_reference == DIGEST
    assert parse_reference("oci:/a/b:c").path == "/a/b"


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("", "empty"),
        ("Busybox", "not a valid repository"),
        ("busybox:", "not a valid tag"),
        ("busybox:-x", "not a valid tag"),
        ("a//b", "not a valid repository"),
        ("busybox@sha256:abc", "digest after"),
        ("with space", "whitespace"),
        ("oci:relative/path", "must be absolute"),
        ("rootfs:dir", "must be absolute"),
        ("bad_host:5000:x/y", "not a valid registry"),
    ],
)
def test_parse_reference_errors(image: str, why: str) -> None:
    with pytest.raises(InvalidReference, match=why) as info:
        parse_reference(image)
    assert f'"{image}"' in str(info.value)


IMG = ImageConfig(
    entrypoint=("/entry",), cmd=("default", "arg"), env=("PATH=/bin", "A=image"), working_dir="/w", user="1"
)


@pytest.mark.parametrize(
    ("command", "args", "argv"),
    [
        (None, None, ("/entry", "default", "arg")),  # image defaults
        ([], [], ("/entry", "default", "arg")),  # empty = unset (protobuf)
        (["/bin/app"], None, ("/bin/app",)),  # command replaces Entrypoint AND drops Cmd
        (["/bin/app"], ["x"], ("/bin/app", "x")),
        (None, ["x", "y"], ("/entry", "x", "y")),  # args replaces Cmd only
    ],
)
def test_effective_process_argv(command: list[str] | None, args: list[str] | None, argv: tuple[str, ...]) -> None:
    assert effective_process(IMG, command, args, None).argv == argv


def test_effective_process_env_workdir_user() -> None:
    p = effective_process(IMG, None, None, {"A": "manifest", "B": "new"})
    assert dict(p.env) == {"PATH": "/bin", "A": "manifest", "B": "new"}
    assert list(p.env) == ["PATH", "A", "B"]  # image order, then new names
    assert (p.working_dir, p.user) == ("/w", "1")
    p = effective_process(IMG, None, None, None, working_dir="/m", user="nobody")
    assert (p.working_dir, p.user) == ("/m", "nobody")
    p = effective_process(ImageConfig(cmd=("sh",)), None, None, None)
    assert (p.working_dir, p.user, dict(p.env)) == ("/", "", {})


def test_effective_process_without_any_command() -> None:
    with pytest.raises(NoCommand):
        effective_process(ImageConfig(), None, None, None)


INDEX = json.dumps(
    {
        "manifests": [
            {"digest": "sha256:" + "1" * 64, "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:" + "2" * 64, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:" + "3" * 64, "size": 1, "platform": {"os": "linux", "architecture": "arm"}},
            {
                "digest": "sha256:" + "4" * 64,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
            },
        ]
    }
).encode()


def test_select_platform() -> None:
    assert host_platform("x86_64") == Platform("linux", "amd64")
    assert select_platform(INDEX, host_platform("x86_64"), "x").digest.endswith("2" * 64)
    assert select_platform(INDEX, host_platform("armv7l"), "x").digest.endswith("4" * 64)
    assert select_platform(INDEX, host_platform("armv6l"), "x").digest.endswith("3" * 64)
    with pytest.raises(node.images.ImageNotFound, match="no manifest for linux/s390x"):
        select_platform(INDEX, host_platform("s390x"), "x")


def test_insecure_hosts() -> None:
    assert is_insecure("127.0.0.1:5000", ())
    assert is_insecure("127.1.2.3", ())
    assert is_insecure("localhost:5000", ())
    assert is_insecure("[::1]:5000", ())
    assert not is_insecure("registry.example.com", ())
    assert is_insecure("registry.lan:5000", ["registry.lan:5000"])
    assert is_insecure("registry.lan:5000", ["registry.lan"])


def test_credentials_file(tmp_path: Path) -> None:
    auth = base64.b64encode(b"alice:s3:cret").decode()
    (tmp_path / "c.json").write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": auth},
                    "reg.lan:5000": {"username": "bob", "password": "pw"},
                    "no-creds": {"email": "x"},
                }
            }
        )
    )
    creds = load_credentials(tmp_path / "c.json")
    assert credentials_for(creds, "docker.io") is not None
    assert credentials_for(creds, "docker.io").password == "s3:cret"  # type: ignore[union-attr]
    assert credentials_for(creds, "reg.lan:5000").username == "bob"  # type: ignore[union-attr]
    assert credentials_for(creds, "other") is None
    assert load_credentials(tmp_path / "missing.json") == {}


def test_parse_challenge() -> None:
    c = parse_challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"')
    assert c is not None and c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg", "scope": "repository:a/b:pull"}
    assert parse_challenge("Negotiate xyz") is None


def test_exports() -> None:
    for name in node.images.__all__:
        assert hasattr(node.images, name), name
    public = {n for n in dir(node.images) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(node.images.__all__) | {"Path"}
    from node.images import ImageError, rootfs_for  # the pre-package import keeps working

    assert issubclass(ImageError, ValueError) and callable(rootfs_for)
