#!/usr/bin/env bash
# Runs every test: Rust unit, model, crash and end-to-end tests, then the TypeScript
# SDK's tests against a real server, the pages in headless Chromium, and the SDK
# installed from `npm pack` into fresh projects (needs the npm registry).
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Everything the tests need, checked before any runs: installed when missing (as
# root), or a stop at once with the command that installs it.
scripts/prerequisites.sh
export PATH="$PATH:/usr/sbin"  # Debian's nats-server and nginx live there

echo "==> building the rollcall binary"
cargo build --locked -p rollcall-server --bin rollcall
export ROLLCALL_BIN="$PWD/target/debug/rollcall"

echo "==> Rust tests"
cargo test --locked --workspace

if [ -f clients/typescript/package.json ]; then
  echo "==> TypeScript SDK tests"
  (cd clients/typescript && npm ci --no-audit --no-fund && npm test)
fi

if [ -f clients/react/package.json ]; then
  echo "==> React bindings: hooks in jsdom, server rendering, the example app (vite build) in headless Chromium"
  (cd clients/react && npm ci --no-audit --no-fund && npm test && npm run typecheck)
fi

echo "==> SDK browser bundle embedded in the server is up to date"
scripts/build-assets.sh --check

echo "==> pages (/ and /demo) in headless Chromium"
(cd tests/browser && npm ci --no-audit --no-fund && npm test)

echo "==> TypeScript SDK as users install it: npm pack into fresh projects (effect 3 and 4, zod, valibot, arktype, a folder install), bundles in headless Chromium"
(cd clients/typescript && npm run test:install)

echo "==> rollcall-load smoke: 10 s against a real server (no speed thresholds)"
cargo build --locked -p rollcall-benches --bin rollcall-load
smoke_dir="$(mktemp -d)"
"$ROLLCALL_BIN" serve --listen 127.0.0.1:0 --data "$smoke_dir/data" --log warn >"$smoke_dir/out" 2>&1 &
smoke_pid=$!
trap 'kill "$smoke_pid" 2>/dev/null || true; rm -rf "$smoke_dir"' EXIT
for _ in $(seq 1 600); do
  grep -q "rollcall listening on" "$smoke_dir/out" 2>/dev/null && break
  sleep 0.05
done
smoke_addr=$(sed -n 's#^rollcall listening on http://##p' "$smoke_dir/out" | head -n 1)
[ -n "$smoke_addr" ] || { cat "$smoke_dir/out"; echo "the server did not start" >&2; exit 1; }
until curl -sf "http://$smoke_addr/healthz" >/dev/null; do sleep 0.05; done
target/debug/rollcall-load --url "ws://$smoke_addr/ws" --server-pid "$smoke_pid" \
  --clients 50 --room-size 10 --rate 10 --duration 10s --warmup 1s --json "$smoke_dir/summary.json"
# It must have measured something; how fast is for benches/compare.sh.
python3 -c "import json,sys; d=json.load(open('$smoke_dir/summary.json')); sys.exit(0 if d['deliveries_per_s'] > 0 and d['connect_failures'] == 0 else 'no deliveries measured')"
