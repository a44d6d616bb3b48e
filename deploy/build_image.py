#!/usr/bin/env python3
"""Build a deterministic OCI image layout from a directory, without docker or umoci.

    python deploy/build_image.py build ROOTFS_DIR LAYOUT_DIR TAG [--cmd JSON|WORD] [--entrypoint JSON|WORD]
                                   [--env K=V]... [--workdir DIR] [--arch ARCH]

Same input, same digests. Push it with skopeo (`--insecure-policy` when /etc/containers/policy.json is missing):
    skopeo copy --dest-tls-verify=false oci:LAYOUT_DIR:TAG docker://127.0.0.1:5000/busybox:TAG
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from node.images.build import ImageSpec, directory_entries, tar_entries, write_layout
from node.images.manifest import host_platform


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_image.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write ROOTFS_DIR as a one-layer image into the OCI layout LAYOUT_DIR")
    build.add_argument("rootfs", type=Path)
    build.add_argument("layout", type=Path)
    build.add_argument("tag")
    build.add_argument("--cmd", help='JSON list (\'["httpd","-f"]\') or a single word', default="")
    build.add_argument("--entrypoint", help="JSON list or a single word", default="")
    build.add_argument("--env", action="append", default=[], help="NAME=value (repeatable); default PATH=/bin:/usr/bin")
    build.add_argument("--workdir", default="")
    build.add_argument("--arch", default=host_platform().architecture, help="GOARCH name; default: this machine's")
    args = parser.parse_args(argv)
    if not args.rootfs.is_dir():
        parser.error(f"{args.rootfs} is not a directory")
    spec = ImageSpec(
        layers=(tar_entries(directory_entries(args.rootfs)),),
        cmd=_argv(args.cmd),
        entrypoint=_argv(args.entrypoint),
        env=tuple(args.env) or ("PATH=/bin:/usr/bin",),
        working_dir=args.workdir,
        architecture=args.arch,
    )
    digest = write_layout(args.layout, args.tag, spec)
    print(f"oci:{args.layout}:{args.tag} {digest}")
    return 0


def _argv(value: str) -> tuple[str, ...]:
    if not value:
        return ()
    if value.startswith("["):
        return tuple(str(v) for v in json.loads(value))
    return (value,)


if __name__ == "__main__":
    sys.exit(main())
