#!/usr/bin/env bash
# Builds the TypeScript SDK's single-file browser bundle and copies it into
# server/assets/, where the server embeds it (include_bytes!) for its pages.
#
#   scripts/build-assets.sh          rebuild clients/typescript and update server/assets/
#   scripts/build-assets.sh --check  rebuild from the SDK's sources in a temp folder and
#                                    fail if server/assets/rollcall-client.js differs
#
# The bundle is committed because clients/typescript/dist/ is not, and `cargo build`
# must work without Node. --check (run by scripts/test.sh) keeps it from drifting.
set -euo pipefail
cd "$(dirname "$0")/.."

sdk=clients/typescript
bundle=dist/rollcall-client.browser.js
committed=server/assets/rollcall-client.js

case "${1:-}" in
  "")
    (cd "$sdk" && npm ci --no-audit --no-fund && npm run build)
    cp "$sdk/$bundle" "$committed"
    echo "updated $committed ($(wc -c <"$committed") bytes)"
    ;;
  --check)
    # A copy of the SDK's sources, so the check never touches the working copy's
    # dist/ or node_modules/ (other test runs may be using them).
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cp -R "$sdk/package.json" "$sdk/package-lock.json" "$sdk/tsconfig.json" \
      "$sdk/src" "$sdk/scripts" "$tmp/"
    if ! log=$(cd "$tmp" && npm ci --no-audit --no-fund 2>&1 && npm run build 2>&1); then
      echo "$log" >&2
      echo "error: building the SDK's browser bundle failed" >&2
      exit 1
    fi
    if ! cmp -s "$tmp/$bundle" "$committed"; then
      echo "error: $committed is not the bundle built from $sdk/src." >&2
      echo "       Run scripts/build-assets.sh and commit the result." >&2
      exit 1
    fi
    echo "$committed matches the SDK's sources"
    ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac
