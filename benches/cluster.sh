#!/usr/bin/env bash
# Cross-node figures for a 3-node cluster on this machine: nats-server and three
# `rollcall serve --nats` nodes on loopback, rollcall-load spreading its clients over
# the nodes (client i on node i mod 3, so every room has members on every node).
#
#   benches/cluster.sh            # about 2 minutes
#   benches/cluster.sh --quick    # about 40 seconds
#
# Needs nats-server (apt-get install nats-server). Nothing is pinned: the three nodes,
# nats-server and the load generator share the machine's cores, so these figures are
# a floor for nodes on machines of their own. Results land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if [ "$QUICK" = 1 ]; then STEP=5s; WARM=2s; else STEP=10s; WARM=3s; fi
OUT="${OUT:-target/cluster-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }

echo "==> building rollcall and rollcall-load (release)"
cargo build --release --locked -p rollcall-server -p rollcall-benches --bin rollcall --bin rollcall-load
ROLLCALL=target/release/rollcall
LOAD=target/release/rollcall-load

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$OUT/nats.log" 2>&1 &
PIDS+=($!); SERVER_PIDS=("--server-pid" "$!")
head -c 32 /dev/urandom | base64 >"$WORK/resume-secret"
URLS=()
for node in 1 2 3; do
  port=$(free_port)
  "$ROLLCALL" serve --listen "127.0.0.1:$port" --data "$WORK/node$node" --durability flush \
    --nats "nats://127.0.0.1:$NATS_PORT" --node-id "$node" \
    --resume-secret-file "$WORK/resume-secret" --log warn >"$OUT/node$node.log" 2>&1 &
  PIDS+=($!); SERVER_PIDS+=("--server-pid" "$!")
  until curl -sf "http://127.0.0.1:$port/healthz" | grep -q '"cluster":"connected"'; do sleep 0.05; done
  URLS+=("--url" "ws://127.0.0.1:$port/ws")
done

load() { # $1 = label, then rollcall-load flags
  local label=$1; shift
  "$LOAD" "${URLS[@]}" "${SERVER_PIDS[@]}" --label "$label" --room-prefix "$label" \
    --json "$OUT/$label.json" "$@" >/dev/null 2>"$OUT/$label.progress"
  tail -n 1 "$OUT/$label.progress" >&2 || true
}
field() { python3 -c "import json,sys; d=json.load(open('$OUT/$1.json')); v=d$2; print('' if v is None else v)"; }

echo "==> light: 300 clients, rooms of 10, 10 Hz"
load light --clients 300 --room-size 10 --rate 10 --duration "$STEP" --warmup "$WARM"

echo "==> the largest load with p99 <= 50 ms (rooms of 50, 20 Hz)"
best=""
for clients in 150 300 375 450 600 750 900; do
  load "scan-$clients" --clients "$clients" --room-size 50 --rate 20 --duration "$STEP" --warmup "$WARM"
  ok=$(python3 -c "import json; d=json.load(open('$OUT/scan-$clients.json')); print(int(d['latency_ms']['p99'] <= 50 and d['deliveries_per_s'] >= 0.95 * d['expected_deliveries_per_s']))")
  [ "$ok" = 1 ] || break
  best=$clients
done
echo "$best" >"$OUT/best"

echo
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(label):
    with open(os.path.join(out, label + ".json")) as f:
        return json.load(f)
def row(name, d):
    c = d.get("cross_node_latency_ms") or {}
    l = d["latency_ms"]
    print(f"| {name} | {d['clients']} | {d['deliveries_per_s']:,.0f} | "
          f"{c.get('p50', 0):.2f} / {c.get('p99', 0):.2f} ms | {l['p50']:.2f} / {l['p99']:.2f} ms | "
          f"{(d.get('server_cpu_cores') or 0):.2f} |")
print("| workload (3 nodes + nats-server, 2 shared cores) | clients | deliveries/s | cross-node p50 / p99 | all p50 / p99 | CPU cores (nodes + NATS) |")
print("|---|---|---|---|---|---|")
row("light: rooms of 10, 10 Hz", load("light"))
best = open(os.path.join(out, "best")).read().strip()
if best:
    row("largest with p99 <= 50 ms: rooms of 50, 20 Hz", load("scan-" + best))
scans = sorted((int(f[5:-5]) for f in os.listdir(out) if f.startswith("scan-") and f.endswith(".json")))
for n in scans:
    if str(n) != best:
        row(f"scan step: rooms of 50, 20 Hz", load(f"scan-{n}"))
PY
