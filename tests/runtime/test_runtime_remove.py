"""Root: removing what a container shaped. Its writable layer can be any depth; removal, and the
sweeps that remove many containers, must not stop at one of them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, ContainerError, ContainerStatus, Runtime
from orch import trees
from tests.runtime.test_runtime_containers import run

pytestmark = pytest.mark.root
MakeConfig = Callable[..., ContainerConfig]

DEEP = "cd /tmp; i=0; while [ $i -lt 2000 ]; do mkdir d; cd d; touch f; i=$((i+1)); done; echo depth $i"


def test_a_container_that_made_a_deep_tree_is_removed(
    runtime: Runtime,
    make_config: MakeConfig,
    cgroup_parent: str,
    host_leftovers: Callable[[str, Path], list[str]],
) -> None:
    """2000 levels in its /tmp: deeper than Python's recursion limit, longer than PATH_MAX. Making
    them is 4,000 busybox runs, which took over 20 s in the emulated VM: the wait is for removal."""
    state, text = run(runtime, make_config("deep", "sh", "-c", DEEP), timeout=180.0)
    assert (state.exit_code, text) == (0, "depth 2000\n")
    runtime.remove("deep")
    runtime.cleanup_all()
    assert host_leftovers(cgroup_parent, runtime.state_dir) == []


def test_sweeps_go_on_past_a_container_they_cannot_remove(
    runtime: Runtime, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure of any kind (RecursionError was one) in one container: logged or reported, the
    others removed. Injected: removal no longer fails for a reason that can be made real."""
    for id in ("a-bad", "b-good", "c-good"):
        run(runtime, make_config(id, "true"))

    def remove_tree(path: Path) -> None:
        if path.name == "a-bad":
            raise RecursionError("maximum recursion depth exceeded")
        trees.remove_tree(path)

    monkeypatch.setattr("node.runtime.runtime.remove_tree", remove_tree)
    with caplog.at_level(logging.WARNING, logger="node.runtime.runtime"):
        assert runtime.remove_unknown(keep={"c-good"}) == ["b-good"]  # after a-bad failed
    assert "removing leftover container a-bad: maximum recursion depth exceeded" in caplog.text
    assert sorted(s.id for s in runtime.list()) == ["a-bad", "c-good"]
    with pytest.raises(ContainerError, match="a-bad: maximum recursion depth exceeded"):
        runtime.cleanup_all()
    assert [s.id for s in runtime.list()] == ["a-bad"]
    assert runtime.state("a-bad").status is ContainerStatus.EXITED
    monkeypatch.undo()
    runtime.cleanup_all()
