//! The model runtime: GGUF files (reading, requantizing), tokenizers, the llama forward pass and
//! generation. It knows models, not the cache.

pub mod chat;
pub mod cpu;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod llama;
pub mod lora;
mod model;
pub mod nli;
pub mod spm;
pub mod synthetic;
pub mod tokenizer;

/// Marks an error as the device running out of memory, so that callers branch on the type
/// (`e.downcast_ref::<OutOfMemory>()`) rather than on text; see [`mark_out_of_memory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

impl std::fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the device ran out of memory")
    }
}

impl std::error::Error for OutOfMemory {}

/// `e` with [`OutOfMemory`] attached when it is the device running out of memory. candle hands
/// CUDA's driver and allocator errors on as boxed text (`candle_core::Error::Cuda`), so this is
/// the one place that text is read.
pub fn mark_out_of_memory(e: anyhow::Error) -> anyhow::Error {
    if e.downcast_ref::<OutOfMemory>().is_some() {
        return e;
    }
    let text = format!("{e:#}").to_lowercase();
    if text.contains("out of memory") || text.contains("out_of_memory") {
        e.context(OutOfMemory)
    } else {
        e
    }
}

/// Opens a GGUF model file: the forward pass (on the CPU) and its tokenizer.
pub fn load_gguf(path: &std::path::Path) -> anyhow::Result<(llama::Llama, tokenizer::Tokenizer)> {
    load_gguf_on(path, &candle_core::Device::Cpu)
}

/// Opens a GGUF model file with its weights on `device`.
pub fn load_gguf_on(
    path: &std::path::Path,
    device: &candle_core::Device,
) -> anyhow::Result<(llama::Llama, tokenizer::Tokenizer)> {
    let mut g = gguf::Gguf::open(path)?;
    let tok = tokenizer::Tokenizer::from_gguf(&g)?;
    let model = llama::Llama::load_on(&mut g, device)?;
    Ok((model, tok))
}

/// Opens a GGUF model on `device` with its tokenizer, or without one when the file has none
/// (synthetic weights: valid for speed, energy and memory, which need no text).
pub fn load_model_on(
    path: &std::path::Path,
    device: &candle_core::Device,
) -> anyhow::Result<(llama::Llama, Option<tokenizer::Tokenizer>)> {
    let mut g = gguf::Gguf::open(path)?;
    let tok = match g.metadata_str("tokenizer.ggml.model") {
        Some(_) => Some(tokenizer::Tokenizer::from_gguf(&g)?),
        None => None,
    };
    let model = llama::Llama::load_on(&mut g, device)?;
    Ok((model, tok))
}

/// The candle device for a pipeline device. `cuda(N)` needs the CUDA build, and a GPU: candle
/// panics rather than errors when the driver is absent, so that is caught and said.
pub fn candle_device(d: spec::Device) -> anyhow::Result<candle_core::Device> {
    match d {
        spec::Device::Cpu => Ok(candle_core::Device::Cpu),
        spec::Device::Cuda(i) => {
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!(
                    "device cuda({i}): this edge-eval was built without CUDA; build it with \
                     `cargo build --release --features cuda` (README, \"GPU\") or use `device = cpu`"
                );
            }
            match std::panic::catch_unwind(|| candle_core::Device::new_cuda(i as usize)) {
                Ok(Ok(dev)) => {
                    #[cfg(feature = "cuda")]
                    tune_cuda(&dev, i as usize)?;
                    Ok(dev)
                }
                Ok(Err(e)) => anyhow::bail!("device cuda({i}) cannot be opened: {e}"),
                Err(_) => anyhow::bail!(
                    "device cuda({i}) cannot be opened: no usable NVIDIA driver (libcuda) here"
                ),
            }
        }
    }
}

/// Settings of a freshly opened CUDA device that take host work out of every kernel launch (a
/// decode step of a small model is hundreds of launches, and the host's time per launch is what
/// varies on a shared machine):
/// - no event tracking: by default every buffer carries two CUDA events, created with it and
///   recorded / waited on at each use, which only multi-stream programs need (candle runs one
///   stream per device, and so do we);
/// - the stream-ordered allocator keeps freed memory: with the default release threshold (0) the
///   pool hands its memory back to the driver at every synchronisation (each decode step reads
///   its token back), and the next step maps it again.
///
/// `EDGE_EVAL_CUDA_DEFAULTS=1` leaves both at the driver's defaults (for comparisons).
#[cfg(feature = "cuda")]
fn tune_cuda(dev: &candle_core::Device, ordinal: usize) -> anyhow::Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    if std::env::var_os("EDGE_EVAL_CUDA_DEFAULTS").is_some_and(|v| v == "1") {
        return Ok(());
    }
    let cuda = dev.as_cuda_device()?;
    // SAFETY: one stream per device (see above); set before any tensor exists on it.
    unsafe { cuda.disable_event_tracking() };
    let keep = || -> Result<(), result::DriverError> {
        let d = result::device::get(ordinal as std::ffi::c_int)?;
        // SAFETY: `d` comes from `device::get`; the threshold attribute takes a u64.
        unsafe {
            let pool = result::device::get_default_mem_pool(d)?;
            let mut threshold = u64::MAX;
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            )
        }
    };
    // A device without memory pools allocates synchronously; nothing to keep then.
    if let Err(e) = keep() {
        eprintln!("note: cuda({ordinal}): the allocator's release threshold was not set: {e}");
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::Tensor;

    /// Largest absolute elementwise difference of two tensors of one shape.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar())
            .expect("tensors of one shape")
    }
}
