#!/usr/bin/env bash
# A bounded run of every cargo-fuzz target (fuzz/), for the test suite: SECS seconds each
# (default 30), from its corpus (fuzz/corpus/<target>) and the committed seeds (fuzz/seeds/<target>).
# Fails if a target does not build or libFuzzer finds a crash (the input is kept in
# fuzz/artifacts/<target>/). Needs the nightly toolchain; installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS="${1:-30}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
targets=$(cargo +nightly fuzz list)
for t in $targets; do
  echo "fuzz-smoke: $t for ${SECS}s"
  mkdir -p "corpus/$t"
  log="target/fuzz-smoke-$t.log"
  mkdir -p target
  rc=0
  # -rss_limit_mb: the extractor's own limits must keep memory bounded on any input.
  seeds=(); [ -d "seeds/$t" ] && seeds=("seeds/$t")
  cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|SUMMARY)' "$log" || true
  if [ "$rc" != 0 ]; then
    tail -n 30 "$log" >&2
    echo "fuzz-smoke: $t FAILED (log fuzz/$log, input in fuzz/artifacts/$t)" >&2
    exit 1
  fi
done
echo "fuzz-smoke: all targets ok"
