#!/usr/bin/env bash
# Builds the Debian package (cargo deb) and checks it: the stripped binary, the unit,
# the conffile. As root (CI) it also installs the package with dpkg -i, runs the
# unit's ExecStart line as the unit's user (no systemd needed), checks /healthz, and
# purges the package again.
# Usage: scripts/package-test.sh [--no-build]
# Needs cargo-deb: cargo install cargo-deb --locked --version 3.8.0
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package test: $*" >&2; exit 1; }

command -v cargo-deb >/dev/null || fail "cargo-deb is missing: cargo install cargo-deb --locked --version 3.8.0"
if [ "${1:-}" != "--no-build" ]; then
  cargo deb --locked -p rollcall-server --strip
fi
deb=$(ls -t target/debian/rollcall_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || fail "no target/debian/rollcall_*.deb"
echo "==> $deb: $(du -h "$deb" | cut -f1)"

work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> contents"
dpkg-deb -x "$deb" "$work/root"
dpkg-deb -e "$deb" "$work/control"
unit_path=$(cd "$work/root" && find . -name rollcall.service | sed 's#^\./#/#')
[ -n "$unit_path" ] || fail "no rollcall.service in the package"
for path in /usr/bin/rollcall /etc/rollcall/rollcall.toml "$unit_path"; do
  [ -e "$work/root$path" ] || fail "$path is missing"
  echo "    $path"
done
grep -qx /etc/rollcall/rollcall.toml "$work/control/conffiles" || fail "/etc/rollcall/rollcall.toml is not a conffile"
if readelf -S "$work/root/usr/bin/rollcall" | grep -Eq '\.(debug_info|symtab)'; then
  fail "/usr/bin/rollcall is not stripped"
fi
echo "    /usr/bin/rollcall is stripped: $(du -h "$work/root/usr/bin/rollcall" | cut -f1)"

if [ "$(id -u)" -ne 0 ]; then
  echo "==> not root: skipping dpkg -i and the run (CI runs them)"
  exit 0
fi
if dpkg-query -W -f='${Status}' rollcall 2>/dev/null | grep -q "ok installed"; then
  [ -n "${CI:-}" ] || fail "a rollcall package is already installed here; not touching it"
fi

echo "==> dpkg -i"
dpkg -i "$deb"
trap 'cleanup; dpkg --purge rollcall >/dev/null 2>&1 || true' EXIT
unit=$unit_path
getent passwd rollcall >/dev/null || fail "the package did not create the rollcall user"
[ "$(stat -c '%U:%G %a' /etc/rollcall/rollcall.toml)" = "root:rollcall 640" ] \
  || fail "/etc/rollcall/rollcall.toml is $(stat -c '%U:%G %a' /etc/rollcall/rollcall.toml)"
[ "$(stat -c '%U' /var/lib/rollcall)" = rollcall ] || fail "/var/lib/rollcall is not the rollcall user's"

if command -v systemd-analyze >/dev/null; then
  echo "==> systemd-analyze verify $unit"
  systemd-analyze verify "$unit"
else
  echo "==> systemd-analyze is not available here: skipping the unit check"
fi

echo "==> the unit's ExecStart as its user (no systemd here)"
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
user=$(sed -n 's/^User=//p' "$unit")
[ -n "$exec_start" ] && [ -n "$user" ] || fail "the unit has no ExecStart or no User"
echo "    $user: $exec_start"
# A free port instead of the config's 7700 (ROLLCALL_LISTEN beats the file). setpriv
# execs the command, so $! is the server itself.
(cd / && exec env ROLLCALL_LISTEN=127.0.0.1:0 \
  setpriv --reuid="$user" --regid="$user" --init-groups -- $exec_start) \
  >"$work/out" 2>"$work/err" &
server_pid=$!
for _ in $(seq 1 600); do
  grep -q "rollcall listening on" "$work/out" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/err"; fail "the server exited"; }
  sleep 0.05
done
addr=$(sed -n 's#^rollcall listening on http://##p' "$work/out" | head -n 1)
[ -n "$addr" ] || { cat "$work/err"; fail "the server did not say where it listens"; }
health=$(curl -sf "http://$addr/healthz") || fail "/healthz failed"
echo "    /healthz: $health"
[ "$(stat -c '%U' /var/lib/rollcall/"$(ls /var/lib/rollcall | head -n 1)")" = rollcall ] \
  || fail "the data files are not the rollcall user's"
kill -TERM "$server_pid"
wait "$server_pid" || fail "the server did not stop cleanly on SIGTERM"
server_pid=""

echo "==> dpkg --purge"
dpkg --purge rollcall
[ ! -e /usr/bin/rollcall ] || fail "/usr/bin/rollcall is still there"
[ ! -e /var/lib/rollcall ] || fail "/var/lib/rollcall is still there"
echo "==> package test passed"
