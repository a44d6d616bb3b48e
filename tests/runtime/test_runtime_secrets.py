"""Root: variables from secrets reach the command's environment and nothing on disk. They
travel in memory (zygote request, shim, then after "G" to PID 1), never in spec.json."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime
from tests.fixtures.scan import files_holding
from tests.runtime.test_runtime_containers import wait_for_output

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]

SECRET = "s3cr3t-value-7d1f"


@pytest.mark.parametrize("init", [False, True])
def test_secret_variables_reach_the_command_and_no_file(
    runtime: Runtime, make_config: MakeConfig, tmp_path: Path, init: bool
) -> None:
    config = make_config("sec", "sh", "-c", 'echo "pw=$DB_PASSWORD plain=$PLAIN"; exec sleep 1000', init=init)
    config = dataclasses.replace(config, env={"PLAIN": "p"}, secret_env={"DB_PASSWORD": SECRET})
    runtime.start(config)
    wait_for_output(config, f"pw={SECRET} plain=p")
    # The state dir holds spec.json, start.json, the container's upper layer: none has it.
    assert files_holding(runtime.state_dir, SECRET.encode()) == []
    spec = (runtime.state_dir / "sec" / "spec.json").read_text()
    assert "secret_env" not in spec and SECRET not in spec and '"PLAIN"' in spec
    runtime.stop("sec", 1)


def test_without_the_zygote_secret_variables_are_refused(tmp_path: Path, make_config: MakeConfig, cgroup_parent: str):
    rt = Runtime(tmp_path / "state", cgroup_parent, use_zygote=False)
    try:
        with pytest.raises(Exception, match="need the zygote"):
            rt.start(make_config("nozyg", "true", secret_env={"A": "b"}))
    finally:
        rt.cleanup_all()
