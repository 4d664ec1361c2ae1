#!/usr/bin/env bash
# Runs every test: Rust unit, model, crash and end-to-end tests, then the TypeScript
# SDK's tests against a real server. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building the rollcall binary"
cargo build --locked -p rollcall-server --bin rollcall
export ROLLCALL_BIN="$PWD/target/debug/rollcall"

echo "==> Rust tests"
cargo test --locked --workspace

if [ -f clients/typescript/package.json ]; then
  echo "==> TypeScript SDK tests"
  (cd clients/typescript && npm ci --no-audit --no-fund && npm test)
fi

echo "==> SDK browser bundle embedded in the server is up to date"
scripts/build-assets.sh --check

echo "==> pages (/ and /demo) in headless Chromium"
(cd tests/browser && npm ci --no-audit --no-fund && npm test)
