"""The committed generated code must match the .proto files."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools not installed")
def test_generated_code_is_fresh(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "proto"))
    try:
        from generate import generate
    finally:
        sys.path.pop(0)
    generate(tmp_path)
    committed = ROOT / "proto" / "orch" / "v1"
    fresh = tmp_path / "orch" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.suffix in (".py", ".pyi"))
    assert names, "protoc generated nothing"
    stale = [n for n in names if not filecmp.cmp(fresh / n, committed / n, shallow=False)]
    assert not stale, f"regenerate with `make proto`: stale {stale}"
