"""Manifest `init: true` (issue 12 item 5): the app's choice reaches the container's config; without
it the command is PID 1, as under Docker."""

from __future__ import annotations

from pathlib import Path

from node.images import ImageConfig, PreparedImage
from node.runtime import ContainerConfig
from node.worker import container_config
from orch.v1 import types_pb2 as pb

IMAGE = PreparedImage("rootfs:/x", "", (Path("/x"),), ImageConfig(cmd=("sh",)))


def test_init_is_off_unless_the_app_asks() -> None:
    assert ContainerConfig("c", Path("/x"), ("sh",), {}, Path("/l")).init is False
    plain = pb.Instance(name="web-a", app="web", spec=pb.AppSpec())
    assert container_config(plain, IMAGE, Path("/logs")).init is False
    reaped = pb.Instance(name="web-a", app="web", spec=pb.AppSpec(init=True))
    assert container_config(reaped, IMAGE, Path("/logs")).init is True
