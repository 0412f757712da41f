#!/usr/bin/env bash
# CPU speed of edge-eval's runtime against llama.cpp on the same GGUF files (issue 3's anchor):
# prompt (pp128) and generation (tg128) tokens/s, 2 threads, median of 5 after warm-up, each
# file measured by both tools back to back, rounds interleaved.
#
#   LLAMA_BENCH=/path/to/llama-bench benches/cpu_vs_llamacpp.sh FILE.gguf [FILE.gguf …]
#
# llama-bench: build llama.cpp from the llama-cpp-python sdist that .ci/fetch-models.sh pins
# (vendor/llama.cpp; cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF;
# cmake --build build --target llama-bench). edge-eval: target/release/edge-eval.
# Prints one markdown row per file: llama.cpp pp/tg, edge-eval pp/tg, ratios.
set -euo pipefail
ee="${EDGE_EVAL:-$(dirname "$0")/../target/release/edge-eval}"
lb="${LLAMA_BENCH:?set LLAMA_BENCH to llama.cpp\'s llama-bench}"
threads="${THREADS:-2}"
rounds="${ROUNDS:-1}"
echo "| file | round | llama.cpp pp128 / tg128 | edge-eval pp128 / tg128 | ratio pp / tg |"
echo "|---|---|---|---|---|"
for r in $(seq "$rounds"); do
  for f in "$@"; do
    read -r lpp ltg < <("$lb" -m "$f" -t "$threads" -p 128 -n 128 -r 5 -o csv 2>/dev/null |
      python3 -c 'import csv,sys; r=list(csv.DictReader(sys.stdin)); print(*[x["avg_ts"] for x in r])')
    out=$(RAYON_NUM_THREADS="$threads" "$ee" bench-model "$f" --prompt 128 --gen 128 --repeats 5)
    epp=$(sed -n 's/.*pp128: *\([0-9.]*\) tok.*/\1/p' <<<"$out")
    etg=$(sed -n 's/.*tg128 batch 1: *\([0-9.]*\) tok.*/\1/p' <<<"$out")
    python3 -c "import sys; l,t,e,g=map(float,sys.argv[2:]); print(f'| {sys.argv[1]} | $r | {l:.1f} / {t:.1f} | {e:.1f} / {g:.1f} | {e/l:.2f} / {g/t:.2f} |')" \
      "$(basename "$f")" "$lpp" "$ltg" "$epp" "$etg"
  done
done
