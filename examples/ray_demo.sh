#!/usr/bin/env bash
# make ray-demo: the product page's example on a real two-node Ray cluster on this machine.
#
# It runs the README's "Running on a Ray cluster" commands as they are written there, with
# HEAD_IP=127.0.0.2 and NODE_IP=127.0.0.3 (two loopback addresses, so both nodes live on
# this machine):
#   1. `ray start --head` on HEAD_IP and `ray start --address HEAD_IP:6379` on NODE_IP: two
#      real Ray nodes (each its own raylet, object store and workers; the head also runs the
#      GCS). Each declares 8 vCPU / 16 GiB as logical resources, so the large tier (2 vCPU /
#      4 GiB) fits 4 shards per node although this host may have 2 cores.
#   2. an org and an API key (`sylphx admin`), then `sylphx server` with SYLPHX_EXECUTOR=ray:
#      the control plane, the cluster's Ray driver.
#   3. sylphx run --parallelism 9 --opportunistic --backoff-limit-per-index 12 \
#        --machine large --timeout 7200 --volume VOL:/cache --follow -- python train.py
#      (examples/train.py: one walk-forward fold per shard; fold 3 fails its first attempt on
#      purpose and is retried), then the aggregate (`runs get`) and shard 3's logs.
# The EXIT trap stops the server and both nodes by their process ids, also on failure or
# Ctrl-C. It never runs `ray stop`, which would stop every Ray process on the machine.
#
# Why not 127.0.0.1: `ray start` replaces 127.0.0.1 and localhost, in --address and in
# --node-ip-address, with the host's outward IP (ray/_private/services.py,
# resolve_ip_for_localhost), so a worker node dials OUTWARD_IP:6379, where a head started on
# loopback does not listen, and retries for minutes. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# keeps loopback as it is, but it also makes `ray start --address` refuse to add a node
# ("Multi-node Ray clusters are not supported on Windows and OSX"). Every 127.x.y.z is
# loopback on Linux, and Ray keeps any address but 127.0.0.1 and localhost as given.
#
# Knobs (environment): HEAD_IP, NODE_IP, RAY_PORT (6379), SERVER_PORT (8080), NODE_CPUS (8),
# NODE_MEMORY (16 GiB), RAY_DEMO_DIR (.sylphx-demo/ray: the control plane's home, the shared
# volume root, the logs). A busy port is replaced by a free one. The envelope's settings
# (SYLPHX_SANDBOX, SYLPHX_UNENFORCED_TIERS, SYLPHX_SHARD_NETWORK, ...) pass through.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$REPO/.venv/bin:$PATH"
DEMO_DIR=${RAY_DEMO_DIR:-$REPO/.sylphx-demo/ray}
HEAD_IP=${HEAD_IP:-127.0.0.2}
NODE_IP=${NODE_IP:-127.0.0.3}
RAY_PORT=${RAY_PORT:-6379}
SERVER_PORT=${SERVER_PORT:-8080}
NODE_CPUS=${NODE_CPUS:-8}
NODE_MEMORY=${NODE_MEMORY:-$((16 << 30))}
START_TIMEOUT=${START_TIMEOUT:-120}

# Only what this script sets: a stray RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the tests set it)
# would make the second `ray start` abort; a stray RAY_ADDRESS, SYLPHX_URL or
# SYLPHX_DATABASE_URL would point the commands at another cluster, server or store.
unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER RAY_ADDRESS SYLPHX_URL SYLPHX_TOKEN SYLPHX_HOME \
  SYLPHX_DATABASE_URL SYLPHX_SECRETS_KEY SYLPHX_EXECUTOR SYLPHX_RAY_ADDRESS SYLPHX_RAY_VOLUME_ROOT

say() { printf '\n>> %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; }  # the command about to run, as the README writes it

free_port() {  # $1 if nothing listens on it (on any address), else one the kernel picks
  python - "$1" <<'EOF'
import socket, sys
want = int(sys.argv[1])
for port in (want, 0):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT is no listener
        try:
            s.bind(("", port))
        except OSError:
            continue
        print(s.getsockname()[1])
        break
EOF
}

check_loopback() {
  python - "$HEAD_IP" "$NODE_IP" 2>/dev/null <<'EOF' || {
import socket, sys
for ip in sys.argv[1:]:
    with socket.socket() as s:
        s.bind((ip, 0))
EOF
    echo "error: cannot bind $HEAD_IP and $NODE_IP (every 127.x.y.z is loopback on Linux)." >&2
    echo "Fix: set HEAD_IP and NODE_IP to addresses of this machine other than 127.0.0.1." >&2
    exit 1
  }
}

# -- the processes this script started, stopped by id ---------------------------------------
server_pid="" node_pid="" head_pid="" session=""
current_file="${RAY_TMPDIR:-/tmp}/ray/ray_current_cluster" current_before=""

stop_pid() {  # stop_pid NAME PID: SIGTERM to it, SIGKILL to its process group after 45 s
  # Only the process itself gets SIGTERM: `ray start --block` then drains its node (up to
  # 30 s, quick when idle) and stops its raylet, GCS and agents; signalling them too would
  # kill the GCS under the drain, which then waits out its whole timeout.
  local name=$1 pid=$2
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 450); do
    kill -0 "$pid" 2>/dev/null || { echo "   stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  echo "   killed $name (pid $pid): it did not stop within 45 s"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  say "stopping the control plane and both Ray nodes"
  stop_pid "sylphx server" "$server_pid"
  stop_pid "ray node $NODE_IP" "$node_pid"
  stop_pid "ray head $HEAD_IP" "$head_pid"
  if [ -n "$session" ]; then  # Ray workers re-parented away: ours carry our session dir
    local left
    left=$(pgrep -f -- "$session" || true)
    if [ -n "$left" ]; then
      sleep 2
      left=$(pgrep -f -- "$session" || true)
      # shellcheck disable=SC2086  # one pid per word
      [ -z "$left" ] || { echo "   killing leftovers of $session: $left"; kill -KILL $left || true; }
    fi
  fi
  # `ray start` repointed Ray's "latest cluster" file (what `ray.init()` without an address
  # reads) at this cluster: point it back at what it named before.
  if [ "$(cat "$current_file" 2>/dev/null)" = "$HEAD_IP:$RAY_PORT" ]; then
    if [ -n "$current_before" ]; then
      printf '%s' "$current_before" >"$current_file"
    else
      rm -f "$current_file"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for() {  # wait_for NAME PID LOG PATTERN: until PATTERN shows in LOG, while PID lives
  local name=$1 pid=$2 log=$3 pattern=$4
  for _ in $(seq $((START_TIMEOUT * 10))); do
    grep -q -- "$pattern" "$log" 2>/dev/null && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "error: $name exited while starting; the end of $log:" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "error: $name did not start within ${START_TIMEOUT}s; the end of $log:" >&2
  tail -n 20 "$log" >&2
  exit 1
}

wait_healthy() {  # wait_healthy URL: until it answers 200, while the server lives
  for _ in $(seq $((START_TIMEOUT * 5))); do
    python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
      "$1" 2>/dev/null && return 0
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "error: sylphx server exited while starting; the end of $DEMO_DIR/server.log:" >&2
      tail -n 20 "$DEMO_DIR/server.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "error: sylphx server not healthy within ${START_TIMEOUT}s; see $DEMO_DIR/server.log" >&2
  exit 1
}

# -- a fresh demo directory ---------------------------------------------------------------
if [ -e "$DEMO_DIR" ] && [ ! -e "$DEMO_DIR/.ray-demo" ]; then
  echo "error: $DEMO_DIR exists and was not made by this script; set RAY_DEMO_DIR." >&2
  exit 1
fi
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/shared"
touch "$DEMO_DIR/.ray-demo"
export SYLPHX_HOME="$DEMO_DIR/home"
check_loopback
RAY_PORT=$(free_port "$RAY_PORT")
SERVER_PORT=$(free_port "$SERVER_PORT")
current_before=$(cat "$current_file" 2>/dev/null || true)
started=$SECONDS

say "1. a two-node Ray cluster: head on $HEAD_IP:$RAY_PORT, worker node on $NODE_IP"
# Both with --block in the background, each in its own session (setsid): the process we
# stop by id, and it stops its raylet, GCS and agents on SIGTERM.
head_cmd=(ray start --head --node-ip-address "$HEAD_IP" --port "$RAY_PORT"
  --num-cpus "$NODE_CPUS" --memory "$NODE_MEMORY" --include-dashboard=false
  --disable-usage-stats --block)
show "${head_cmd[*]}"
setsid "${head_cmd[@]}" >"$DEMO_DIR/ray-head.log" 2>&1 &
head_pid=$!
wait_for "the Ray head" "$head_pid" "$DEMO_DIR/ray-head.log" "Ray runtime started"
session=$(grep -o '/[^ ]*/session_[0-9_-]*' "$DEMO_DIR/ray-head.log" | head -n 1 || true)

node_cmd=(ray start --address "$HEAD_IP:$RAY_PORT" --node-ip-address "$NODE_IP"
  --num-cpus "$NODE_CPUS" --memory "$NODE_MEMORY" --disable-usage-stats --block)
show "${node_cmd[*]}"
setsid "${node_cmd[@]}" >"$DEMO_DIR/ray-node.log" 2>&1 &
node_pid=$!
wait_for "the Ray worker node" "$node_pid" "$DEMO_DIR/ray-node.log" "Ray runtime started"

# Both nodes alive in the GCS (ray.nodes(): id and address, for the usage per node below).
python - "$HEAD_IP:$RAY_PORT" >"$DEMO_DIR/nodes.txt" <<'EOF'
import sys
import time

import ray

ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
for _ in range(100):
    alive = [node for node in ray.nodes() if node["Alive"]]
    if len(alive) >= 2:
        break
    time.sleep(0.2)
for node in alive:
    cpus, memory = node["Resources"].get("CPU", 0), node["Resources"].get("memory", 0)
    print(node["NodeID"], node["NodeManagerAddress"], f"{cpus:g} vCPU / {memory / 2**30:g} GiB")
EOF
awk '{printf "   alive: node %.8s… at %s, %s %s %s %s %s\n", $1, $2, $3, $4, $5, $6, $7}' "$DEMO_DIR/nodes.txt"
nodes=$(wc -l <"$DEMO_DIR/nodes.txt")
if [ "$nodes" -ne 2 ]; then
  echo "error: the cluster has $nodes alive node(s), not 2; see $DEMO_DIR/ray-*.log" >&2
  exit 1
fi

say "2. an org and an API key, then the control plane as the cluster's Ray driver"
show "sylphx admin org create acme --plan pro"
sylphx admin org create acme --plan pro >>"$DEMO_DIR/admin.log" 2>&1 \
  || { cat "$DEMO_DIR/admin.log" >&2; exit 1; }
show "sylphx admin key create --org acme --name ray-demo"
SYLPHX_TOKEN=$(sylphx admin key create --org acme --name ray-demo 2>>"$DEMO_DIR/admin.log") \
  || { cat "$DEMO_DIR/admin.log" >&2; exit 1; }
export SYLPHX_EXECUTOR=ray SYLPHX_RAY_ADDRESS="$HEAD_IP:$RAY_PORT"
export SYLPHX_RAY_VOLUME_ROOT="$DEMO_DIR/shared/sylphx"  # stands in for /mnt/shared/sylphx
show "SYLPHX_EXECUTOR=ray SYLPHX_RAY_ADDRESS=$SYLPHX_RAY_ADDRESS" \
  "SYLPHX_RAY_VOLUME_ROOT=$SYLPHX_RAY_VOLUME_ROOT sylphx server --host $HEAD_IP --port $SERVER_PORT"
setsid sylphx server --host "$HEAD_IP" --port "$SERVER_PORT" >"$DEMO_DIR/server.log" 2>&1 &
server_pid=$!
wait_healthy "http://$HEAD_IP:$SERVER_PORT/healthz"
grep -o 'control plane started.*' "$DEMO_DIR/server.log" | head -n 1 || true
unset SYLPHX_EXECUTOR SYLPHX_RAY_ADDRESS SYLPHX_RAY_VOLUME_ROOT  # the server's, not the CLI's

say "3. the product page's example, from a client of that control plane"
export SYLPHX_URL="http://$HEAD_IP:$SERVER_PORT" SYLPHX_TOKEN
show "export SYLPHX_URL=$SYLPHX_URL SYLPHX_TOKEN=sx_…"
show "sylphx volumes create --name cache --json"
vol=$(sylphx volumes create --name cache --json | python -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "$vol"
cd "$REPO/examples"  # the shards start here too (no --image): `python train.py` as on the page
run_cmd=(sylphx run --parallelism 9 --opportunistic --backoff-limit-per-index 12
  --machine large --timeout 7200 --volume "$vol:/cache" --env TRAIN_FLAKY_SHARDS=3
  --follow -- python train.py)
show "${run_cmd[*]}"
# One look at the cluster while the shards run: both nodes busy.
(sleep 4 && ray status --address "$HEAD_IP:$RAY_PORT" -v >"$DEMO_DIR/ray-status-mid-run.txt" 2>&1) &
probe_pid=$!
set +e
"${run_cmd[@]}" | tee "$DEMO_DIR/run.txt"
run_rc=${PIPESTATUS[0]}
set -e
wait "$probe_pid" || true
run_id=$(awk 'NR == 1 {print $1}' "$DEMO_DIR/run.txt")
case $run_id in wrk_*) ;; *) echo "error: no run id in the output of sylphx run" >&2; exit 1 ;; esac

say "the cluster ~4 s into the run (ray status -v: usage per node)"
while read -r id ip _; do  # the node ids of `ray status -v`, named by their address
  sed -n "/^Node: $id/,/^\$/p" "$DEMO_DIR/ray-status-mid-run.txt" | grep -E ' CPU$| memory$' \
    | sed "s/^ */   $ip: /"
done <"$DEMO_DIR/nodes.txt"

say "the aggregate"
show "sylphx runs get $run_id"
sylphx runs get "$run_id"

say "shard 3's logs"
show "sylphx runs logs $run_id --shard 3"
sylphx runs logs "$run_id" --shard 3
attempts=$(sylphx runs get "$run_id" --json | python -c '
import json, sys
shards = json.load(sys.stdin).get("shards") or []
print(next((s.get("attempts", 1) for s in shards if s.get("index") == 3), 1))')
if [ "$attempts" -gt 1 ]; then
  show "sylphx runs logs $run_id --shard 3 --attempt 1 --stderr"
  sylphx runs logs "$run_id" --shard 3 --attempt 1 --stderr
fi

say "the shared volume: one scores file per fold"
ls "$DEMO_DIR/shared/sylphx/$vol" 2>/dev/null | tr '\n' ' ' || true
echo
say "done in $((SECONDS - started)) s (run exit code $run_rc); logs and home in $DEMO_DIR"
exit "$run_rc"
