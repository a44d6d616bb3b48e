"""One real `orch up` cluster shared by every attack module (issue 9).

Each module attacks from one side (an image, a container, a local user, a
node's certificate) and looks only at its own apps, so one failure does not
cascade into the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.cluster import orch_up

pytestmark = pytest.mark.root


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Any) -> Iterator[dict[str, Any]]:
    """cluster.json of a 2-node `orch up` with its defaults (mutual TLS on)."""
    with orch_up(tmp_path_factory.mktemp("attacks"), "--nodes", "2", cidr_start=230) as info:
        yield info
