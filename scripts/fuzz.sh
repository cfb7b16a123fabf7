#!/usr/bin/env bash
# The fuzzing drill (issue #15): runs every cargo-fuzz target in fuzz/ for a
# bounded time each and fails on the first crash (libFuzzer leaves the input
# under fuzz/artifacts/<target>/). Not part of the test command: it needs the
# nightly toolchain and cargo-fuzz, which this script installs when missing.
#
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  # -rss_limit_mb: a parser that allocates what a hostile length field asks
  # for is a finding, not an out-of-memory kill of the machine.
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "^(#|Done|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|thread)" | tail -5
done
