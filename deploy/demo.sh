#!/usr/bin/env bash
# make demo: a local 3-node cluster with the example app, in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
ORCH=venv/bin/orch
STATE=${ORCH_DEMO_STATE:-$PWD/.state/demo}
deploy/build-busybox-rootfs.sh /var/lib/orch/images/busybox

$ORCH up --nodes 3 --state-dir "$STATE" --port 7070 &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP' INT TERM
for _ in $(seq 100); do [ -f "$STATE/cluster.json" ] && break; sleep 0.2; done
export ORCH_SCHEDULER=127.0.0.1:7070
$ORCH get nodes
$ORCH apply deploy/examples/web.yaml --wait --wait-timeout 60
$ORCH get instances -o wide
ip=$($ORCH get instances -o json | venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["ip"])')
echo "curl http://$ip:8080/  ->  $(curl -s -m 2 "http://$ip:8080/")"
cat <<MSG

The cluster runs until Ctrl-C. In another shell:
  export ORCH_SCHEDULER=127.0.0.1:7070
  venv/bin/orch get instances -o wide
  kill -9 \$(venv/bin/python -c 'import json; print([p["pid"] for p in json.load(open("$STATE/cluster.json"))["processes"] if p["node"]=="node-1"][0])')
  venv/bin/orch get instances --watch
MSG
wait $UP
