"""Root: image layers stack as overlay lower dirs, top layer first, and stay untouched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from node.runtime import ContainerConfig, Runtime
from tests.runtime.test_runtime_containers import run

pytestmark = pytest.mark.root


def test_lower_dirs_stack_top_first(
    runtime: Runtime, make_config: Callable[..., ContainerConfig], rootfs: Path, tmp_path: Path
) -> None:
    top = tmp_path / "top"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "motd").write_text("from the top layer\n")
    config = make_config("layers", "sh", "-c", "cat /etc/motd; echo changed > /etc/motd; ls /bin/busybox")
    config = ContainerConfig(
        **{**{f: getattr(config, f) for f in config.__dataclass_fields__}, "lower_dirs": (top, rootfs)}
    )
    state, out = run(runtime, config)
    assert state.exit_code == 0, out
    assert out.splitlines() == ["from the top layer", "/bin/busybox"]
    assert (top / "etc" / "motd").read_text() == "from the top layer\n"  # writes go to the upper dir
