//! With `--features cuda`: the trainer's fused kernels (`src/lora/fused/kernels.cu`) compiled to PTX
//! by nvcc, for `src/lora/fused/cuda.rs` to embed. nvcc is `$NVCC`, else `$CUDA_PATH/bin/nvcc` or
//! `$CUDA_HOME/bin/nvcc`, else the one on PATH (`tools/cuda-toolkit.sh` sets these up); the
//! target is `compute_$CUDA_COMPUTE_CAP` (as candle's kernels), 75 (T4 and newer) if unset.
//! Without the feature nothing is built and nvcc is not needed.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/lora/fused/kernels.cu");
    for var in ["NVCC", "CUDA_PATH", "CUDA_HOME", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| {
            ["CUDA_PATH", "CUDA_HOME"].iter().find_map(|v| {
                let p = PathBuf::from(std::env::var_os(v)?).join("bin/nvcc");
                p.is_file().then_some(p)
            })
        })
        .unwrap_or_else(|| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "75".into());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out.join("lora_kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("-arch=compute_{cap}"))
        .arg("src/lora/fused/kernels.cu")
        .arg("-o")
        .arg(&ptx)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "building the CUDA kernels: cannot run {} ({e}); install the CUDA toolkit \
                 (tools/cuda-toolkit.sh) or set NVCC",
                nvcc.display()
            )
        });
    assert!(status.success(), "nvcc failed on src/lora/fused/kernels.cu");
}
