#!/usr/bin/env bash
# edge-eval's engine beside DVC on the same pipeline shape (issue 30), in one sitting: the
# 373-stage benchmark pipeline of `edge-eval bench` (72 variants × finetune → quantize →
# {cold_load, evaluate, measure}, plus 13 inputs) and a DVC project of the same graph (each stage
# a file copy of its inputs, the 13 inputs as files).
#
#   EDGE_EVAL=target/release/edge-eval DVC=dvc bash benches/engine_vs_dvc.sh [WORKDIR]
#
# Times (REPEATS, default 7, runs each; min / median / max in ms): the first full build of each,
# `dvc status` and a no-op `dvc repro` against edge-eval's `plan` and no-op `run`; then one
# source changed (one model's input) and the rerun of what it touches, in both, with the number
# of stages each reran. DVC installs with `pip install dvc`; it needs git.
set -euo pipefail
ee=${EDGE_EVAL:-edge-eval}
dvc=${DVC:-dvc}
repeats=${REPEATS:-7}
# The script changes folders: a relative path to either tool is made absolute.
abs() { if [[ $1 == */* ]]; then echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; else echo "$1"; fi; }
ee=$(abs "$ee")
dvc=$(abs "$dvc")
command -v "$dvc" >/dev/null || { echo "engine_vs_dvc: no \`$dvc\`: pip install dvc (or set DVC)" >&2; exit 2; }
command -v git >/dev/null || { echo "engine_vs_dvc: DVC needs git" >&2; exit 2; }
work=${1:-$(mktemp -d)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
py=${PYTHON:-python3}

log=$(mktemp)
# `quiet CMD...`: CMD with its output kept aside; on failure the output is shown and the
# script stops (a timing of a failed command would be a wrong number).
quiet() {
  if ! "$@" >"$log" 2>&1; then
    echo "engine_vs_dvc: \`$*\` failed:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}
# `timed NAME CMD...`: REPEATS runs of CMD, min / median / max wall time in ms.
timed() {
  local name=$1
  shift
  local xs=()
  for _ in $(seq "$repeats"); do
    local t0 t1
    t0=$(date +%s%N)
    quiet "$@"
    t1=$(date +%s%N)
    xs+=($(((t1 - t0) / 1000)))
  done
  printf '%s\n' "${xs[@]}" | "$py" -c '
import sys, statistics
xs = sorted(int(l) / 1e3 for l in sys.stdin)
name = sys.argv[1]
print(f"  {name:<44} min {xs[0]:9.1f}   median {statistics.median(xs):9.1f}   max {xs[-1]:9.1f} ms")
' "$name"
}
# `once CMD...`: CMD once; its wall time in ms is in $took.
once() {
  local t0 t1
  t0=$(date +%s%N)
  quiet "$@"
  t1=$(date +%s%N)
  took=$(((t1 - t0) / 1000000))
}
# DVC's usage analytics and update check stay out of its timings.
export DVC_NO_ANALYTICS=1

echo "engine_vs_dvc: $("$ee" --version 2>/dev/null || echo edge-eval), $("$dvc" --version 2>/dev/null | head -1 | sed 's/^/dvc /'), $repeats runs each, in $work"

# --- edge-eval: the benchmark's own pipeline, first run into a fresh cache.
ed=$work/edge-eval
rm -rf "$ed"
"$ee" bench --hash-mib 0 --repeats 1 --dir "$ed" >"$work/ee-bench.txt"
grep "first run" "$work/ee-bench.txt" | sed 's/^/  edge-eval /'
eep=$ed/bench.eep
cache=$ed/cache

# --- DVC: the same graph.
dd=$work/dvc
rm -rf "$dd"
mkdir -p "$dd/in" "$dd/out"
"$py" - "$dd" "$eep" <<'EOF'
import re, sys
root, eep = sys.argv[1], open(sys.argv[2]).read()
models = re.findall(r'"([^"]+)"', re.search(r"for m in \[([^\]]*)\] \{ base", eep).group(1))
methods, precs, tasks = ["lora", "qlora"], ["f16", "q8_0", "q4_0"], ["rag", "summ"]
for name in [*models, *methods, *precs, *tasks]:
    open(f"{root}/in/{name}", "w").write(name + "\n")
stages = []
def stage(name, deps):
    out = f"out/{name}"
    stages.append(f"  {name}:\n    cmd: cat {' '.join(deps)} > {out}\n    deps: [{', '.join(deps)}]\n    outs: [{out}]\n")
    return out
for m in models:
    for a in methods:
        for q in precs:
            for t in tasks:
                v = f"{m}_{a}_{q}_{t}".replace(".", "_")
                ft = stage(f"ft_{v}", [f"in/{m}", f"in/{a}", f"in/{t}"])
                qz = stage(f"quantize_{v}", [ft, f"in/{q}"])
                stage(f"cold_load_{v}", [qz])
                stage(f"evaluate_{v}", [qz, f"in/{t}"])
                stage(f"measure_{v}", [qz, f"in/{t}"])
open(f"{root}/dvc.yaml", "w").write("stages:\n" + "".join(stages))
print(f"  dvc project: {len(stages)} stages, {len(models) + 7} input files")
EOF
cd "$dd"
quiet git init -q .
quiet "$dvc" init -q
quiet "$dvc" config core.check_update false
quiet git add -A
quiet git -c user.name=engine-vs-dvc -c user.email=bench@invalid commit -qm init
once "$dvc" repro
echo "  dvc first repro (all stages)                 $took ms"
cd "$work"

echo "no-op (everything up to date):"
(cd "$dd" && timed "dvc status" "$dvc" status)
(cd "$dd" && timed "dvc repro (no-op)" "$dvc" repro)
timed "edge-eval plan" "$ee" --cache "$cache" plan "$eep"
timed "edge-eval run (no-op, tables written)" "$ee" --cache "$cache" run --quiet "$eep"

# --- One source changed: the first model's input.
first=$(grep -o 'for m in \["[^"]*"' "$eep" | head -n 1 | sed 's/.*"\(.*\)"/\1/')
echo "one source changed (model $first), then the rerun:"
cd "$dd"
echo "$first-v2" >"in/$first"
once "$dvc" repro
n=$(grep -c "^Running stage" "$log" || true)
echo "  dvc repro                                    $took ms ($n stages ran)"
cd "$work"
# In edge-eval the model's input is the `base[m]` stage, whose output is the model's name: the
# same change is the name's.
sed -i "s/\"$first\"/\"$first-v2\"/g" "$eep"
once "$ee" --cache "$cache" run --quiet --json "$eep"
"$py" - "$log" "$took" "$first-v2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
ms, new = int(sys.argv[2]), sys.argv[3]
ran = [s for s in r["stages"] if s["status"] == "ran"]
cached = [s for s in r["stages"] if s["status"] == "cached"]
# Stages of the renamed model are new: one cached is served by an identical stage of this run.
served = sum(new in s["id"] for s in cached)
outside = sum(new not in s["id"] for s in ran)
stage_s = sum(s["seconds"] or 0 for s in ran)
print(f"  edge-eval run                                {ms} ms ({len(ran)} ran, {served} served by "
      f"an identical stage of the run, {len(cached) - served} cached; {outside} of those that "
      f"ran are not downstream of the change; {stage_s * 1e3:.0f} ms inside stages)")
EOF
