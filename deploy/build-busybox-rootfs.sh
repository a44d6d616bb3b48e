#!/usr/bin/env bash
# Builds a tiny image root from Debian's busybox-static: what the examples run
# until they pull OCI images from a registry.
set -euo pipefail
ROOT=${1:?usage: build-busybox-rootfs.sh DIR}
mkdir -p "$ROOT"/{bin,proc,sys,dev,etc,tmp,www}
cp /bin/busybox "$ROOT/bin/busybox"
for a in sh ls cat echo sleep env ps hostname mount true false id wget httpd nc ip kill top grep date; do
  ln -sf busybox "$ROOT/bin/$a"
done
echo "hello from orch" > "$ROOT/www/index.html"
