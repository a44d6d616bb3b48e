from __future__ import annotations

import node.runtime


def test_public_names() -> None:
    assert sorted(node.runtime.__all__) == sorted(
        [
            "CgroupDriver",
            "CgroupStats",
            "CgroupWriteError",
            "ContainerConfig",
            "ContainerError",
            "ContainerState",
            "ContainerStatus",
            "Limits",
            "Mount",
            "NotFound",
            "Runtime",
            "RuntimeStartError",
        ]
    )
    for name in node.runtime.__all__:
        assert getattr(node.runtime, name) is not None


def test_error_hierarchy() -> None:
    for cls in (node.runtime.NotFound, node.runtime.RuntimeStartError, node.runtime.CgroupWriteError):
        assert issubclass(cls, node.runtime.ContainerError)
