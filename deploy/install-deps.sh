#!/usr/bin/env bash
# Installs the Debian packages orch needs, only when something is missing, and leaves
# the host as quiet as it was: Debian's etcd, prometheus and docker-registry packages
# ship services that would start on their default ports (2379, 9090, 5000 on every
# address) now and at every boot. orch runs its own etcd and registry when it needs
# them, so:
#  - during the install, a policy-rc.d that exits 101 keeps apt from starting them; it is
#    removed afterwards (only if we made it: a Docker image's own one stays);
#  - the services of packages installed just now are disabled and masked (systemctl on
#    a systemd host, update-rc.d elsewhere). ORCH_KEEP_SERVICES=1 keeps them enabled.
set -euo pipefail

# libseccomp2: the runtime compiles its seccomp filters with it (ctypes).
# gcc, libc6-dev: the runtime compiles its container supervisor and init (node/runtime/native/*.c)
# on the node; the tests build tests/fixtures/sysprobe.c statically.
# chromium: the dashboard test loads the page in a real headless browser.
# wget: the service tests' client (busybox-static's wget cannot resolve names).
PACKAGES=(etcd-server etcd-client busybox-static iproute2 util-linux python3-venv python3-pip curl
          docker-registry skopeo umoci golang-github-containers-common prometheus iptables
          libseccomp2 gcc libc6-dev chromium wget)
# package:service of those that would serve something once installed
SERVICES=(etcd-server:etcd prometheus:prometheus docker-registry:docker-registry
          prometheus-node-exporter:prometheus-node-exporter
          docker.io:docker docker.io:docker.socket containerd:containerd)
GUARD=/usr/sbin/policy-rc.d
# `install-deps.sh bench` adds the peers the benchmarks compare against (bench/converge.py
# runs its own dockerd, in a network namespace of its own, and removes it afterwards).
[ "${1:-}" = bench ] && PACKAGES+=(runc crun docker.io)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi

new_services=()  # package:service, of packages not installed before
for entry in "${SERVICES[@]}"; do
  installed "${entry%%:*}" || new_services+=("$entry")
done

if [ ! -e "$GUARD" ]; then
  printf '#!/bin/sh\n# install-deps.sh (orch): no service starts while it installs packages\nexit 101\n' > "$GUARD"
  chmod +x "$GUARD"
  trap 'rm -f "$GUARD"' EXIT  # however the install ends
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

quiet() {  # disable and mask one unit that a package installed just now enabled
  local unit=$1
  case $unit in *.*) ;; *) unit=$unit.service ;; esac
  if [ -d /run/systemd/system ]; then  # systemd is PID 1
    systemctl disable --now -q "$unit" 2>/dev/null || true
    systemctl mask -q "$unit"
  else
    local script=/etc/init.d/${unit%.service}
    if [ -x "$script" ]; then update-rc.d "${unit%.service}" disable >/dev/null 2>&1 || true; fi
    # and for the day this root boots with systemd (an image built in a container)
    if [ -e "/lib/systemd/system/$unit" ]; then
      if command -v systemctl >/dev/null; then  # works on the unit files, offline
        systemctl disable -q "$unit" >/dev/null 2>&1 || true
        systemctl mask -q "$unit" >/dev/null 2>&1 || true
      else  # what those two do
        rm -f /etc/systemd/system/*.wants/"$unit"
        ln -sfn /dev/null "/etc/systemd/system/$unit"
      fi
    fi
  fi
  echo "install-deps: $unit: disabled and masked (ORCH_KEEP_SERVICES=1 keeps such services)"
}
if [ "${ORCH_KEEP_SERVICES:-0}" != 1 ]; then
  for entry in "${new_services[@]}"; do
    if installed "${entry%%:*}"; then quiet "${entry#*:}"; fi
  done
fi
