#!/usr/bin/env bash
# A CUDA 13.0 build toolchain from PyPI wheels, for building `--features cuda` on a machine that
# has no GPU and no CUDA install (the binary then runs where the NVIDIA driver is).
#
#   eval "$(bash tools/cuda-toolkit.sh)"      # installs once, then prints the exports to eval
#   cargo build --release --features cuda
#
# Settings: CUDA_PIP_DIR (where the wheels go; default ~/.cache/edge-eval/cuda13),
#           CUDA_COMPUTE_CAP (default 90: H100 / H200; a T4 is 75).
# 13.0 because the GPU hosts run driver 580 (CUDA 13.0): an nvcc newer than the driver emits PTX
# the driver refuses. The wheels carry no libcuda (the driver does); the linker gets a stub made
# from the driver functions cudarc declares, and the real library is loaded at run time.
# On the GPU host: LD_LIBRARY_PATH must reach the CUDA 13 runtime and cuBLAS (README, "GPU").
set -euo pipefail

root=${CUDA_PIP_DIR:-$HOME/.cache/edge-eval/cuda13}
cuda=$root/nvidia/cu13
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)

if [[ ! -x $cuda/bin/nvcc ]]; then
  echo "cuda-toolkit: installing the CUDA 13.0 wheels into $root (~1.2 GB, once)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$root" "${wheels[@]}" >&2
fi

# The wheels name their libraries libX.so.N only; the linker looks for libX.so.
for lib in "$cuda"/lib/lib*.so.*; do
  plain=${lib%%.so.*}.so
  [[ -e $plain ]] || ln -s "$(basename "$lib")" "$plain"
done

stub=$cuda/lib/stubs
if [[ ! -e $stub/libcuda.so ]]; then
  decls=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*/cudarc-*/src/driver/sys/mod.rs' 2>/dev/null | sort -V | tail -n 1)
  if [[ -z $decls ]]; then
    echo "cuda-toolkit: cudarc's sources are not in the cargo registry yet: run 'cargo fetch' first" >&2
    exit 1
  fi
  mkdir -p "$stub"
  grep -ohE 'pub (unsafe )?fn cu[A-Za-z0-9_]+' "$decls" | awk '{ print $NF }' | sort -u |
    awk '{ printf "void %s(void) {}\n", $1 }' >"$stub/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/libcuda_stub.c"
  ln -sf libcuda.so "$stub/libcuda.so.1"
fi

echo "export CUDA_HOME=$cuda CUDA_PATH=$cuda"
echo "export PATH=$cuda/bin:\$PATH"
echo "export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}"
echo "export LIBRARY_PATH=$cuda/lib:$stub\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
