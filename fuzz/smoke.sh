#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time; exits non-zero if one crashes.
# FUZZ_SECONDS (default 25) sets the time per target.
set -euo pipefail
cd "$(dirname "$0")"

# cargo-fuzz passes nightly-only flags (-Zsanitizer and friends); the stable toolchain
# accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

seconds="${FUZZ_SECONDS:-25}"
limits=(-rss_limit_mb=512 -malloc_limit_mb=256 -print_final_stats=1)
# A fresh corpus each time: libFuzzer replays an existing corpus in full before the time
# limit applies, so a grown corpus/ would make the smoke run unbounded.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir "$scratch/decode" "$scratch/replay_model"

# Build first so that the time limit is spent fuzzing, not compiling.
cargo fuzz build

echo "fuzz: decode for ${seconds}s"
cargo fuzz run decode "$scratch/decode" -- -max_total_time="$seconds" "${limits[@]}"

# Long operation sequences from the start: a reboot after many events is where the
# interesting states are, and this target runs only tens of inputs per second. Leak
# checks would triple the cost of each input (sled's threads and pages) for safe code.
echo "fuzz: replay_model for ${seconds}s"
cargo fuzz run replay_model "$scratch/replay_model" -- \
    -max_total_time="$seconds" -max_len=400 -len_control=0 -detect_leaks=0 "${limits[@]}"
