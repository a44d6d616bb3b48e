#!/usr/bin/env bash
# A loopback OCI registry (Debian docker-registry) for the demo: registry.sh start|stop STATE_DIR PORT
# start: writes STATE_DIR/registry.yml, starts `docker-registry serve` on 127.0.0.1:PORT, waits for /v2/,
#        records the PID in STATE_DIR/registry.pid. stop: kills exactly that PID.
set -euo pipefail
CMD=${1:?usage: registry.sh start|stop STATE_DIR PORT}
STATE=${2:?usage: registry.sh start|stop STATE_DIR PORT}
PORT=${3:-5000}
PIDFILE=$STATE/registry.pid

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

case $CMD in
start)
  if running; then echo "registry already running (pid $(cat "$PIDFILE"))"; exit 0; fi
  mkdir -p "$STATE/data"
  cat > "$STATE/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $STATE/data}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$PORT}
YML
  docker-registry serve "$STATE/registry.yml" >>"$STATE/registry.log" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 100); do
    if curl -fsS "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1; then echo "registry on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; exit 0; fi
    running || break
    sleep 0.1
  done
  echo "registry did not start; see $STATE/registry.log" >&2
  exit 1
  ;;
stop)
  if running; then
    pid=$(cat "$PIDFILE"); kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$PIDFILE"
  ;;
*) echo "usage: registry.sh start|stop STATE_DIR PORT" >&2; exit 2 ;;
esac
