"""Regenerate the Python code for proto/orch/v1/*.proto.

python proto/generate.py            # writes next to the .proto files
python proto/generate.py OUT_DIR    # writes into OUT_DIR (the staleness test)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent


def generate(out_dir: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "orch" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    out = str(out_dir)
    bindir = Path(sys.executable).parent  # the venv's plugins, even when it is not on PATH
    argv = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(argv) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
