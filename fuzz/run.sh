#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) with its seed corpus (fuzz/seeds/TARGET:
# the project's own pipelines, examples and diagnostics cases; small GGUF headers; the first
# records of each task file; a manifest of each stage kind) and prints the executions per
# target. A crash leaves its input in fuzz/artifacts/TARGET/ and fails.
#   bash fuzz/run.sh [SECONDS]        (needs nightly and cargo-fuzz)
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
for target in eep gguf tasks manifest; do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  if ! cargo +nightly fuzz run "$target" -s none "corpus/$target" "seeds/$target" -- \
      -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $target found a crash: see fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(grep -oE '#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)
  echo "fuzz target $target: ${runs:-0} executions in ${secs} s, no crash"
  rm -f "$log"
done
