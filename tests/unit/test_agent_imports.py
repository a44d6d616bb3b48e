"""Unit: the node agent does not load what it need not keep (its RSS: docs/benchmarks.md, footprint).

A fresh interpreter imports what `orch node` imports (the CLI, the agent), checks the node's
certificate as `orch node` does and opens an image store, then lists what got loaded: not
pyroute2's whole library (NDB, sqlite3, psutil: node/network/pyroute.py), not cryptography
(the checks run in a forked child: orch/tls.py), not httpx before a registry pull.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli import pki
from tests.fixtures.processes import orch_env

NOT_IN_THE_AGENT = ("pyroute2.ndb", "pyroute2.ipdb", "sqlite3", "psutil", "cryptography", "httpx")

SCRIPT = """
import json, sys
from pathlib import Path
import cli.main, node.agent
from cli.transport import node_credentials
from node.images import ImageStore
from node.network.pyroute import IPRoute

d = Path(sys.argv[1])
creds = node_credentials(str(d / "ca.crt"), str(d / "n1.crt"), str(d / "n1.key"), "n1", False)
with IPRoute() as ipr:
    ipr.link_lookup(ifname="lo")
ImageStore(d / "images").close()
loaded = sorted({m for m in sys.modules for top in json.loads(sys.argv[2]) if m == top or m.startswith(top + ".")})
print(json.dumps({"identity": creds.identity, "loaded": loaded}))
"""


def test_the_agent_loads_neither_all_of_pyroute2_nor_cryptography_nor_httpx(tmp_path: Path) -> None:
    pki.init(tmp_path)
    pki.issue_for(tmp_path, "node", "n1", ["127.0.0.1"])
    argv = [sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(NOT_IN_THE_AGENT)]
    done = subprocess.run(argv, capture_output=True, text=True, env=orch_env(), timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["identity"] == "node:n1"  # checked, by the child
    assert result["loaded"] == []


def test_the_runtimes_small_processes_do_not_load_protobuf() -> None:
    """The zygote, the shim and PID 1 (when Python) import node.runtime: protobuf there cost
    each zygote and spare shim ~2-4 MiB (a capability table once lived beside the validation)."""
    script = (
        "import sys, node.runtime.zygote, node.runtime.shim, node.runtime.init; "
        "print(sorted(m for m in sys.modules if m.startswith(('google.protobuf', 'orch.v1', 'grpc'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=orch_env(), check=True
    ).stdout
    assert out.strip() == "[]", out
