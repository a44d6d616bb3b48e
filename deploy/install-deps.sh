#!/usr/bin/env bash
# Installs the Debian packages orch needs, only when something is missing.
# Debian's etcd/prometheus/registry packages ship init scripts that would
# start services on their default ports: a policy-rc.d that exits 101 keeps
# apt from starting them.
set -euo pipefail

# libseccomp2: the runtime compiles its seccomp filters with it (ctypes).
# gcc, libc6-dev: the tests build tests/fixtures/sysprobe.c statically.
PACKAGES=(etcd-server etcd-client busybox-static iproute2 util-linux python3-venv python3-pip curl
          docker-registry skopeo umoci golang-github-containers-common prometheus iptables
          libseccomp2 gcc libc6-dev)
# `install-deps.sh bench` adds the peers the benchmarks compare against.
[ "${1:-}" = bench ] && PACKAGES+=(runc crun)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi
if [ ! -x /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
