#!/usr/bin/env bash
# edge-eval's trainer beside PyTorch + PEFT (+ bitsandbytes) in one sitting (issue 21): for each
# shape × method, `edge-eval bench-train` and `benches/peft_train.py` alternate, `ROUNDS` times,
# on the same GPU with the same settings (batch 4 × 512 tokens, r 16 on all 7 projections, alpha
# 16, dropout 0.05, AdamW 2e-4, bf16 base; CHECKPOINTING=1 adds gradient checkpointing to both).
#
#   EDGE_EVAL=path/to/edge-eval PYTHON=/opt/torch/.venv/bin/python bash benches/train_vs_peft.sh OUT.jsonl
#
# Settings: SHAPES (default "smollm2-135m llama-3.2-1b"), METHODS ("lora qlora"), ROUNDS (2),
# STEPS (20), WARMUP (3), BATCH (4), SEQ (512), CHECKPOINTING (1), GPU (0).
# Each run appends one JSON object to OUT.jsonl; the table at the end gives the medians per engine
# and edge-eval / PEFT ratios (tokens/s, J/token from NVML's counter, NVML memory peak).
set -euo pipefail
out=${1:?usage: train_vs_peft.sh OUT.jsonl}
ee=${EDGE_EVAL:-edge-eval}
py=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
shapes=${SHAPES:-smollm2-135m llama-3.2-1b}
methods=${METHODS:-lora qlora}
common=(--batch "${BATCH:-4}" --seq "${SEQ:-512}" --steps "${STEPS:-20}" --warmup "${WARMUP:-3}")
[[ ${CHECKPOINTING:-1} == 1 ]] && common+=(--checkpointing)
gpu=${GPU:-0}
: >"$out"
for round in $(seq "${ROUNDS:-2}"); do
  for shape in $shapes; do
    for method in $methods; do
      echo "round $round: $shape $method" >&2
      "$ee" bench-train "$shape" --method "$method" --device "cuda($gpu)" --json "${common[@]}" >>"$out" \
        || echo "{\"engine\": \"edge-eval\", \"model\": \"$shape\", \"method\": \"$method\", \"failed\": true}" >>"$out"
      "$py" "$here/peft_train.py" --shape "$shape" --method "$method" --gpu "$gpu" "${common[@]}" >>"$out" \
        || echo "{\"engine\": \"peft\", \"model\": \"$shape\", \"method\": \"$method\", \"failed\": true}" >>"$out"
    done
  done
done
"$py" - "$out" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(engine, shape, method, key):
    xs = [r[key] for r in rows if r["engine"] == engine and r["model"] == shape
          and r["method"] == method and r.get(key) is not None]
    return statistics.median(xs) if xs else None
def fmt(x, spec):
    return "-" if x is None else format(x, spec)
print("| shape | method | PEFT tokens/s | edge-eval tokens/s | ratio | PEFT J/token | edge-eval J/token | ratio | PEFT GPU GB | edge-eval GPU GB | ratio |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for shape, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
    cells = [shape, method]
    for key, spec, scale in [("tokens_per_s", ",.0f", 1), ("j_per_token", ".4f", 1),
                             ("gpu_memory_peak_bytes", ".2f", 1e-9)]:
        p, e = med("peft", shape, method, key), med("edge-eval", shape, method, key)
        cells += [fmt(p and p * scale, spec), fmt(e and e * scale, spec),
                  fmt(e / p if p and e else None, ".2f")]
    print("| " + " | ".join(cells) + " |")
EOF
