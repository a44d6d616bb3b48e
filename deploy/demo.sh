#!/usr/bin/env bash
# make demo: a loopback registry with a busybox web image, and a local 3-node cluster running it,
# in the foreground. Ctrl-C (or SIGTERM) stops the cluster (which removes its containers, cgroups
# and bridges) and the registry. Everything lives under .state/demo (ORCH_DEMO_STATE).
set -euo pipefail
cd "$(dirname "$0")/.."
ORCH=venv/bin/orch
PY=venv/bin/python
STATE=${ORCH_DEMO_STATE:-$PWD/.state/demo}
REGISTRY_STATE=$STATE/registry
IMAGE_REPO=orch/busybox-web
IMAGE_TAG=1
UP=
PROM=

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

port_free() {  # bind-test on loopback, with SO_REUSEADDR like the servers we start
  $PY - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}
any_port() { $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
  trap - EXIT INT TERM
  if [ -n "$UP" ] && kill -0 "$UP" 2>/dev/null; then
    kill -TERM "$UP" 2>/dev/null || true
  fi
  if [ -n "$UP" ]; then wait "$UP" 2>/dev/null || true; fi
  if [ -n "$PROM" ]; then kill -TERM "$PROM" 2>/dev/null || true; wait "$PROM" 2>/dev/null || true; fi
  deploy/registry.sh stop "$REGISTRY_STATE" || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$STATE"
if [ -e "$STATE/cluster.json" ]; then
  echo "demo: $STATE/cluster.json exists: is another demo running? (stop it, or remove the file)" >&2
  exit 1
fi

say "busybox root and OCI image"
deploy/build-busybox-rootfs.sh "$STATE/rootfs"
rm -rf "$STATE/image"
$PY deploy/build_image.py build "$STATE/rootfs" "$STATE/image" "$IMAGE_TAG" \
  --cmd '["httpd","-f","-p","8080","-h","/www"]' --workdir /www --env PATH=/bin --env GREETING=hello

say "registry"
deploy/registry.sh stop "$REGISTRY_STATE" >/dev/null  # a leftover of an interrupted demo, if any
REGISTRY_PORT=${ORCH_DEMO_REGISTRY_PORT:-5000}
if ! port_free "$REGISTRY_PORT"; then
  echo "127.0.0.1:$REGISTRY_PORT is taken; using another port"
  REGISTRY_PORT=$(any_port)
fi
REGISTRY=127.0.0.1:$REGISTRY_PORT
deploy/registry.sh start "$REGISTRY_STATE" "$REGISTRY_PORT"
POLICY=()
[ -f /etc/containers/policy.json ] || POLICY=(--insecure-policy)
IMAGE=$REGISTRY/$IMAGE_REPO:$IMAGE_TAG
skopeo "${POLICY[@]}" copy --quiet --dest-tls-verify=false "oci:$STATE/image:$IMAGE_TAG" "docker://$IMAGE"
echo "pushed $IMAGE"

# The examples name 127.0.0.1:5000; on another port, the demo applies copies that name it.
EXAMPLES=$PWD/deploy/examples
rm -rf "$STATE/examples"
if [ "$REGISTRY_PORT" != 5000 ]; then
  EXAMPLES=$STATE/examples
  mkdir -p "$EXAMPLES"
  for f in deploy/examples/*.yaml; do
    sed "s#127\.0\.0\.1:5000/#$REGISTRY/#" "$f" >"$EXAMPLES/$(basename "$f")"
  done
  echo "manifests for this registry: $EXAMPLES/"
fi

say "orch up --nodes 3"
SCHEDULER_PORT=7070
port_free $SCHEDULER_PORT || SCHEDULER_PORT=0
$ORCH up --nodes 3 --state-dir "$STATE" --port "$SCHEDULER_PORT" &
UP=$!
for _ in $(seq 300); do
  [ -f "$STATE/cluster.json" ] && break
  kill -0 "$UP" 2>/dev/null || { echo "demo: orch up exited; see $STATE/logs/" >&2; exit 1; }
  sleep 0.2
done
[ -f "$STATE/cluster.json" ] || { echo "demo: orch up did not start within 60s; see $STATE/logs/" >&2; exit 1; }
ORCH_SCHEDULER=$($PY -c 'import json, sys; print(",".join(json.load(open(sys.argv[1]))["schedulers"]))' \
  "$STATE/cluster.json")
ORCH_TLS_DIR=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["tlsDir"] or "")' "$STATE/cluster.json")
export ORCH_SCHEDULER ORCH_TLS_DIR   # every hop is mutual TLS; the CLI uses $ORCH_TLS_DIR/admin.crt
$ORCH get nodes

say "prometheus (deploy/prometheus.yml, scraping what orch up listed in prometheus-targets.json)"
cp deploy/prometheus.yml deploy/orch-alerts.yml "$STATE/"
PROM_PORT=${ORCH_DEMO_PROMETHEUS_PORT:-9090}
port_free "$PROM_PORT" || PROM_PORT=$(any_port)
prometheus --config.file="$STATE/prometheus.yml" --storage.tsdb.path="$STATE/prometheus-data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --storage.tsdb.retention.time=1d --log.level=warn \
  >"$STATE/prometheus.log" 2>&1 &
PROM=$!
echo "prometheus on http://127.0.0.1:$PROM_PORT (log: $STATE/prometheus.log)"

say "orch apply $EXAMPLES/web.yaml --wait"
$ORCH apply "$EXAMPLES/web.yaml" --wait --wait-timeout 90
$ORCH get apps
$ORCH get instances -o wide
ip=$($ORCH get instances --app web -o json |
  $PY -c 'import json, sys; print(next(i["ip"] for i in json.load(sys.stdin) if i["state"] == "Running"))')
echo "curl http://$ip:8080/  ->  $(curl -sS --noproxy '*' -m 5 "http://$ip:8080/")"

cat <<MSG

The cluster runs until Ctrl-C (which also stops the registry on $REGISTRY and Prometheus).
Prometheus: http://127.0.0.1:$PROM_PORT/graph?g0.expr=orch_scheduler_instances  (the Grafana
dashboard to import is deploy/grafana/orch-dashboard.json). In another shell:
  export PATH=$PWD/venv/bin:\$PATH ORCH_SCHEDULER=$ORCH_SCHEDULER ORCH_TLS_DIR=$ORCH_TLS_DIR
  orch get instances -o wide
  # kill a node: its agent's PID is in $STATE/cluster.json
  kill -9 \$(python3 -c 'import json; print([p["pid"] for p in json.load(open("$STATE/cluster.json"))["processes"] if p["node"] == "node-1"][0])')
  orch get instances --watch       # node-1's instances turn Lost; replacements start elsewhere
  orch apply $EXAMPLES/ticker.yaml && orch logs ticker -f
MSG
wait "$UP"
