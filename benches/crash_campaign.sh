#!/usr/bin/env bash
# Crash campaign for the cache's integrity model (issue 20): N runs of a model-free pipeline
# (each with new keys, so that its stages run), each SIGKILLed at a random moment; after every kill, sometimes a byte of a random object is
# flipped or a random object truncated (damage a crash or the disk could leave). Then:
#   cache verify (exit 0 or 1: problems found and removed), a full run (must succeed),
#   a second run (must be all cached), and the final outputs must equal a clean run's.
# Any other outcome is a failure, printed with its iteration.
#
#   bash benches/crash_campaign.sh [N=50] [BINARY=target/release/edge-eval]
set -uo pipefail
n=${1:-50}
bin=$(realpath "${2:-target/release/edge-eval}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > p.eep <<'EEP'
pipeline crash { results = "out" }
let round = "0"          # --set round=… : new keys every iteration, the same outputs
for i in ["1", "2", "3", "4", "5", "6"] {
  a[i] = test_stage(emit = i, sleep_ms = 150, note = round)
  b[i] = test_stage(a[i], emit = "b", sleep_ms = 200, note = round)
  c[i] = test_stage(b[i], emit = "c", sleep_ms = 100, note = round)
}
all = test_stage([c["1"], c["2"], c["3"], c["4"], c["5"], c["6"]], emit = "all")
EEP

# What every stage output (stage id → output digest), from a run's runs.parquet (needs pyarrow).
outputs() { python3 - "$1" <<'PY'
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1]).to_pylist()
print(json.dumps({r["stage_id"]: r["output_digest"] for r in t}, sort_keys=True))
PY
}
EDGE_EVAL_CACHE=clean "$bin" run p.eep --quiet >/dev/null 2>&1 || { echo "clean run failed"; exit 1; }
want=$(outputs out/runs.parquet)
rm -rf out

failures=0; damaged=0; killed=0
for i in $(seq 1 "$n"); do
  set_round=(--set "round=\"$i\"")
  EDGE_EVAL_CACHE=cache "$bin" run p.eep --quiet "${set_round[@]}" >/dev/null 2>&1 &
  pid=$!
  sleep "$(python3 -c "import random; print(random.uniform(0.05, 1.6))")"
  if kill -9 "$pid" 2>/dev/null; then killed=$((killed + 1)); fi
  wait "$pid" 2>/dev/null
  objects=$(find cache/objects -type f 2>/dev/null)
  if [ -n "$objects" ] && [ $((RANDOM % 3)) -eq 0 ]; then
    victim=$(echo "$objects" | shuf -n 1)
    chmod u+w "$victim"
    if [ $((RANDOM % 2)) -eq 0 ]; then
      python3 -c "import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[0]^=1; open(p,'wb').write(b)" "$victim"
    else
      truncate -s $(( $(stat -c %s "$victim") / 2 )) "$victim"
    fi
    damaged=$((damaged + 1))
  fi
  EDGE_EVAL_CACHE=cache "$bin" cache verify >/dev/null 2>&1
  rc=$?
  if [ "$rc" -gt 1 ]; then echo "iteration $i: verify exited $rc"; failures=$((failures + 1)); continue; fi
  if ! EDGE_EVAL_CACHE=cache "$bin" run p.eep --quiet "${set_round[@]}" >/dev/null 2>&1; then
    echo "iteration $i: the run after the kill failed"; failures=$((failures + 1)); continue
  fi
  got=$(outputs out/runs.parquet)
  EDGE_EVAL_CACHE=cache "$bin" run p.eep --json --quiet "${set_round[@]}" 2>/dev/null | tail -n 1 > again.json
  if grep -q '"ran"' again.json; then
    echo "iteration $i: the second run was not all cached"; failures=$((failures + 1)); continue
  fi
  if [ "$got" != "$want" ]; then
    echo "iteration $i: outputs differ from a clean run's"; failures=$((failures + 1)); continue
  fi
  rm -rf out
done
echo "crash campaign: $n runs, $killed killed mid-run, $damaged objects damaged after a kill, $failures failures"
[ "$failures" -eq 0 ]
