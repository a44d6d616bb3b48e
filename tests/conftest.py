"""Fixtures every test directory shares: real etcd, a busybox root, root gating."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.etcd import EtcdServer, start_etcd
from tests.fixtures.rootfs import BUSYBOX, build_busybox_rootfs


@pytest.fixture(autouse=True)
def _skip_root_tests_unless_root(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture
def etcd() -> Iterator[EtcdServer]:
    server = start_etcd()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox-rootfs"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """With ORCH_TEST_TRACE_AT_ONCE=1, print a failure's traceback when it happens.

    A suite in an emulated VM runs for hours; if it is cut short, the tracebacks
    pytest keeps for its summary are lost with it.
    """
    if report.failed and os.environ.get("ORCH_TEST_TRACE_AT_ONCE") == "1":
        print(f"\n--- {report.nodeid} ({report.when}) failed:\n{report.longreprtext}\n", flush=True)
