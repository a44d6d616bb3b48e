"""The node's default limits (issue 9 item 8): an app without resources.pids gets the node's
default pids limit in its ContainerConfig, not in its spec (so describe and accounting are unchanged)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from node.images import ImageConfig, PreparedImage
from node.worker import DEFAULT_PIDS_LIMIT, container_config
from orch.v1 import types_pb2 as pb

IMAGE = PreparedImage("rootfs:/x", "", (Path("/x"),), ImageConfig(cmd=("sh",)))


def instance(pids: int = 0) -> pb.Instance:
    return pb.Instance(name="web-a", app="web", spec=pb.AppSpec(resources=pb.Resources(pids=pids)))


def test_an_app_without_pids_gets_the_node_default() -> None:
    assert DEFAULT_PIDS_LIMIT == 4096
    assert container_config(instance(), IMAGE, Path("/logs")).pids == 4096
    assert container_config(instance(), IMAGE, Path("/logs"), default_pids=100).pids == 100
    assert container_config(instance(), IMAGE, Path("/logs"), default_pids=0).pids == 0  # unlimited
    assert container_config(instance(pids=16), IMAGE, Path("/logs")).pids == 16  # the app's own wins
    inst = instance()
    container_config(inst, IMAGE, Path("/logs"))
    assert inst.spec.resources.pids == 0  # the spec is not touched: describe shows what the app asked


def test_node_flag(tmp_path: Path) -> None:
    from cli.commands import agent_config

    def config(**kw: object) -> int:
        return agent_config("n1", tmp_path, (), [], "", "", "", "", "", **kw).default_pids_limit  # type: ignore[arg-type]

    assert config() == DEFAULT_PIDS_LIMIT
    assert config(default_pids_limit=0) == 0
    assert config(default_pids_limit=512) == 512


@pytest.mark.parametrize(("value", "parsed"), [("512", 512), ("0", 0), (None, None), ("-1", "error"), ("x", "error")])
def test_node_flag_parsing(value: str | None, parsed: object) -> None:
    from cli.main import cli

    node = cli.commands["node"]
    args = ["--name", "n", "--state-dir", "/nonexistent"] + (["--default-pids-limit", value] if value else [])
    if parsed == "error":
        with pytest.raises(click.BadParameter) as info:
            node.make_context("node", args)
        assert "--default-pids-limit" in info.value.format_message()
    else:
        assert node.make_context("node", args).params["default_pids_limit"] == parsed
