#!/usr/bin/env bash
# Checks, before any test runs, that everything scripts/test.sh needs is installed:
# Node >= 20.19 with npm, chromium (the pages' and bundles' browser tests), nats-server
# (the cluster tests), nginx (the reverse-proxy test), curl and python3 (the load
# smoke), setpriv (the data-directory permission tests, as root). As root with apt-get
# it installs what is missing; otherwise it stops at once with the one command that
# does. Usage: scripts/prerequisites.sh (scripts/test.sh and .ci/run call it).
set -euo pipefail

export PATH="$PATH:/usr/sbin"  # Debian's nats-server and nginx live there

# "command-or-path Debian-package" pairs.
needs=(
  "cargo -"
  "node nodejs"
  "npm npm"
  "/usr/bin/chromium chromium"
  "nats-server nats-server"
  "/usr/sbin/nginx nginx"
  "curl curl"
  "python3 python3"
  "setpriv util-linux"
)

have() {
  case "$1" in
    /*) [ -x "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing=()
for need in "${needs[@]}"; do
  read -r what package <<<"$need"
  if ! have "$what"; then
    if [ "$package" = "-" ]; then
      echo "error: $what is not installed: install Rust with rustup (https://rustup.rs)" >&2
      exit 1
    fi
    missing+=("$package")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing what the tests need: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "error: the tests need ${missing[*]}, which are not installed. Install them with:" >&2
    echo "  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

# The TypeScript packages need Node >= 20.19 (their package.json "engines").
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)'; then
  echo "error: the tests need Node >= 20.19; this is $(node --version). Install a newer one (https://nodejs.org/en/download)." >&2
  exit 1
fi

echo "==> prerequisites: cargo $(cargo --version | cut -d' ' -f2), node $(node --version), $(/usr/bin/chromium --version 2>/dev/null | head -n 1), nats-server $(nats-server --version 2>&1 | head -n 1 | awk '{print $NF}'), $(/usr/sbin/nginx -v 2>&1 | head -n 1)"
