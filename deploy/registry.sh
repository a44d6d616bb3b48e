#!/usr/bin/env bash
# A loopback OCI registry (Debian docker-registry) for the demo: registry.sh start|stop STATE_DIR [PORT]
# start: writes STATE_DIR/registry.yml, starts `docker-registry serve` on 127.0.0.1:PORT (default 5000),
#        waits for /v2/, records the PID in STATE_DIR/registry.pid. Images persist in STATE_DIR/data.
# stop:  kills exactly that PID (after checking it is still this registry), then removes the pid file.
set -euo pipefail
CMD=${1:?usage: registry.sh start|stop STATE_DIR [PORT]}
STATE=${2:?usage: registry.sh start|stop STATE_DIR [PORT]}
PORT=${3:-5000}
STATE=$(mkdir -p "$STATE" && cd "$STATE" && pwd)
PIDFILE=$STATE/registry.pid
CONFIG=$STATE/registry.yml

# The recorded PID is ours only while it still runs `docker-registry serve` on this state dir's config.
running() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "serve $CONFIG"
}

case $CMD in
start)
  if running; then
    echo "registry already running (pid $(cat "$PIDFILE")): stop it first" >&2
    exit 1
  fi
  command -v docker-registry >/dev/null || { echo "docker-registry not found: apt-get install docker-registry" >&2; exit 1; }
  mkdir -p "$STATE/data"
  cat > "$CONFIG" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$PORT}
YML
  docker-registry serve "$CONFIG" >>"$STATE/registry.log" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 100); do
    if curl -fsS --noproxy '*' "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1; then
      echo "registry on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), data in $STATE/data)"
      exit 0
    fi
    running || break
    sleep 0.1
  done
  echo "registry did not start on 127.0.0.1:$PORT; see $STATE/registry.log" >&2
  running && kill "$(cat "$PIDFILE")"
  rm -f "$PIDFILE"
  exit 1
  ;;
stop)
  if running; then
    pid=$(cat "$PIDFILE"); kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    echo "registry stopped (pid $pid)"
  fi
  rm -f "$PIDFILE"
  ;;
*) echo "usage: registry.sh start|stop STATE_DIR [PORT]" >&2; exit 2 ;;
esac
