#!/usr/bin/env bash
# Runs the same presence workloads against Rollcall and the y-websocket awareness
# server, side by side, and prints a table with the ratios.
#
#   benches/compare.sh            # the full comparison (about 12 minutes)
#   benches/compare.sh --quick    # every workload, short (about 3 minutes)
#
# Each server runs pinned to core 0 and the load generator to core 1 (taskset), on
# loopback only. Everything started here is stopped by pid on exit. Results (one JSON
# summary per run and the table) land in $OUT (default: target/compare-<date>).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if [ "$QUICK" = 1 ]; then STORM=10s; STEP=5s; LIGHT=8s; IDLE=10s; WARM=2s; else STORM=60s; STEP=8s; LIGHT=15s; IDLE=30s; WARM=3s; fi
OUT="${OUT:-target/compare-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
SERVER_CORE=0
LOAD_CORE=1
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

echo "==> building rollcall and rollcall-load (release)"
cargo build --release --locked -p rollcall-server -p rollcall-benches --bin rollcall --bin rollcall-load
ROLLCALL=target/release/rollcall
LOAD=target/release/rollcall-load

echo "==> installing the peer: @y/websocket-server in a temp dir"
PEER_DIR="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$PEER_DIR" "${DATA_DIR:-}"
}
trap cleanup EXIT
(cd "$PEER_DIR" && npm init -y >/dev/null && npm install --no-audit --no-fund --silent \
  @y/websocket-server@0.1.1 yjs@13 y-protocols@1 ws >/dev/null)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "server on port $1 did not start" >&2; return 1
}

SERVER_PID=""
start_rollcall() { # $1 = durability
  DATA_DIR="$(mktemp -d)"
  local port; port=$(free_port)
  taskset -c "$SERVER_CORE" "$ROLLCALL" serve --listen "127.0.0.1:$port" --data "$DATA_DIR/data" \
    --durability "$1" --log warn >"$OUT/rollcall-$1.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  wait_port "$port"
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do sleep 0.05; done
  URL="ws://127.0.0.1:$port/ws"; TARGET=rollcall
}
start_y() {
  local port; port=$(free_port)
  (cd "$PEER_DIR" && HOST=127.0.0.1 PORT=$port exec taskset -c "$SERVER_CORE" \
    node node_modules/@y/websocket-server/src/server.js) >"$OUT/y-websocket.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID")
  wait_port "$port"
  URL="ws://127.0.0.1:$port"; TARGET=y-websocket
}
stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "${DATA_DIR:-}"; DATA_DIR=""
}
load() { # $1 = label, then rollcall-load flags
  local label=$1; shift
  # Each run gets its own rooms: a peer keeps earlier runs' state for a while.
  taskset -c "$LOAD_CORE" "$LOAD" --target "$TARGET" --url "$URL" --server-pid "$SERVER_PID" \
    --label "$label" --room-prefix "$label" --json "$OUT/$label.json" "$@" >/dev/null 2>"$OUT/$label.progress"
  tail -n 1 "$OUT/$label.progress" >&2 || true
}
field() { python3 -c "import json,sys; d=json.load(open('$OUT/$1.json')); v=d$2; print('' if v is None else v)"; }

echo "==> 3. light load: 100 clients, rooms of 10, 10 Hz"
start_rollcall flush; load light-rollcall --clients 100 --room-size 10 --rate 10 --duration "$LIGHT" --warmup "$WARM"; stop_server
start_y;              load light-y        --clients 100 --room-size 10 --rate 10 --duration "$LIGHT" --warmup "$WARM"; stop_server
echo "==> 3b. light load with intervalMs 50 subscriptions (the latest state per client at 20 Hz)"
start_rollcall flush; load light-rollcall-paced --clients 100 --room-size 10 --rate 10 --interval-ms 50 --duration "$LIGHT" --warmup "$WARM"; stop_server

echo "==> 2. efficiency: the largest load each sustains with p99 <= 50 ms (rooms of 50, 20 Hz)"
best() { # $1 = name; the rest: client counts to try in order
  local name=$1; shift; local last=""
  for clients in "$@"; do
    load "scan-$name-$clients" --clients "$clients" --room-size 50 --rate 20 --duration "$STEP" --warmup "$WARM"
    local p99; p99=$(field "scan-$name-$clients" "['latency_ms']['p99']")
    local ratio; ratio=$(python3 -c "d=$(field "scan-$name-$clients" "['deliveries_per_s']"); e=$(field "scan-$name-$clients" "['expected_deliveries_per_s']"); print(d/e)")
    if python3 -c "import sys; sys.exit(0 if $p99 <= 50 and $ratio >= 0.95 else 1)"; then last=$clients; else break; fi
  done
  echo "$last" >"$OUT/best-$name"
}
start_rollcall flush; best rollcall 200 400 600 800 900 1000 1100 1200 1400 1600 2000; stop_server
start_y;              best y 20 30 40 50 60 70 80 100 120 150; stop_server

echo "==> 1 and 6. cursor storm: 2,000 clients, 40 rooms of 50, 20 Hz, flush then memory"
start_rollcall flush;  load storm-flush  --clients 2000 --room-size 50 --rate 20 --duration "$STORM" --warmup "$WARM"
du -sk "$DATA_DIR/data" | awk '{print $1}' >"$OUT/storm-flush.disk-kib"
stop_server
start_rollcall memory; load storm-memory --clients 2000 --room-size 50 --rate 20 --duration "$STORM" --warmup "$WARM"; stop_server

echo "==> 5. churn: the storm with 0.5% of clients per second leaving or dropping"
start_rollcall flush; load churn --clients 2000 --room-size 50 --rate 20 --duration "$STORM" --warmup "$WARM" --churn 0.005; stop_server

# Each side needs a descriptor per connection: under a lower hard limit (a container's),
# the fleet shrinks to fit and the table says so.
IDLE_CLIENTS=20000
fd_room=$(( $(ulimit -n) - 200 ))
if [ "$fd_room" -lt "$IDLE_CLIENTS" ]; then
  IDLE_CLIENTS=$fd_room
  echo "note: open-file limit $(ulimit -n): the idle fleet is $IDLE_CLIENTS connections" | tee "$OUT/idle-note"
fi
echo "==> 4. idle fleet: $IDLE_CLIENTS connections in rooms of 10, a heartbeat every 20 s"
start_rollcall flush; load idle --clients "$IDLE_CLIENTS" --room-size 10 --rate 0.05 --ttl-ms 60000 --duration "$IDLE" --warmup 10s --connect-rate 4000; stop_server
start_y;              load idle-y --clients "$IDLE_CLIENTS" --room-size 10 --rate 0.05 --duration "$IDLE" --warmup 10s --connect-rate 4000 || true; stop_server

echo
python3 benches/compare_table.py "$OUT"
