//! The fused kernels' launches on a GPU (`kernels.cu`, compiled to PTX by build.rs).

use super::{Kind, Output};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Shape, backend::BackendStorage};
use half::bf16;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lora_kernels.ptx"));
const MODULE: &str = "edge_eval_lora";

type R<T> = candle_core::Result<T>;

fn err(e: impl std::error::Error + Send + Sync + 'static) -> candle_core::Error {
    candle_core::Error::Cuda(Box::new(e))
}

/// A contiguous input.
enum View<'a> {
    F32(CudaView<'a, f32>),
    Bf16(CudaView<'a, bf16>),
    U8(CudaView<'a, u8>),
    U32(CudaView<'a, u32>),
}

impl<'a> View<'a> {
    fn of(s: &'a CudaStorage, l: &Layout) -> R<View<'a>> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("a fused kernel takes contiguous inputs");
        };
        Ok(match s.dtype() {
            DType::F32 => View::F32(s.as_cuda_slice::<f32>()?.slice(start..end)),
            DType::BF16 => View::Bf16(s.as_cuda_slice::<bf16>()?.slice(start..end)),
            DType::U8 => View::U8(s.as_cuda_slice::<u8>()?.slice(start..end)),
            DType::U32 => View::U32(s.as_cuda_slice::<u32>()?.slice(start..end)),
            other => candle_core::bail!("a fused kernel does not take {other:?}"),
        })
    }
    fn push<'b>(&'b self, b: &mut LaunchArgs<'b>) {
        match self {
            View::F32(v) => b.arg(v),
            View::Bf16(v) => b.arg(v),
            View::U8(v) => b.arg(v),
            View::U32(v) => b.arg(v),
        };
    }
}

enum Out {
    F32(CudaSlice<f32>),
    Bf16(CudaSlice<bf16>),
}

impl Out {
    fn alloc(dev: &CudaDevice, dtype: DType, n: usize) -> R<Out> {
        // SAFETY: every element is written by the kernel before it is read.
        Ok(match dtype {
            DType::F32 => Out::F32(unsafe { dev.alloc::<f32>(n)? }),
            DType::BF16 => Out::Bf16(unsafe { dev.alloc::<bf16>(n)? }),
            other => candle_core::bail!("a fused kernel does not produce {other:?}"),
        })
    }
    fn push<'b>(&'b self, b: &mut LaunchArgs<'b>) {
        match self {
            Out::F32(v) => b.arg(v),
            Out::Bf16(v) => b.arg(v),
        };
    }
    fn storage(self, dev: CudaDevice) -> CudaStorage {
        match self {
            Out::F32(v) => CudaStorage::wrap_cuda_slice(v, dev),
            Out::Bf16(v) => CudaStorage::wrap_cuda_slice(v, dev),
        }
    }
}

enum Scalar {
    U32(u32),
    I32(i32),
    U64(u64),
    F32(f32),
}

impl Scalar {
    fn push<'b>(&'b self, b: &mut LaunchArgs<'b>) {
        match self {
            Scalar::U32(v) => b.arg(v),
            Scalar::I32(v) => b.arg(v),
            Scalar::U64(v) => b.arg(v),
            Scalar::F32(v) => b.arg(v),
        };
    }
}

fn suffix(dtype: DType) -> R<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        other => candle_core::bail!("the fused kernels take f32 or bf16, not {other:?}"),
    })
}

fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1 << 20) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row of `cols`, at most 256 threads (a multiple of 32).
fn per_row(elems: usize, cols: u32) -> R<LaunchConfig> {
    let cols = cols.max(1) as usize;
    if !elems.is_multiple_of(cols) {
        candle_core::bail!("{elems} elements are not rows of {cols}");
    }
    Ok(LaunchConfig {
        grid_dim: ((elems / cols) as u32, 1, 1),
        block_dim: (cols.next_multiple_of(32).min(256) as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Runs kernel `k` on `ins`: its output's storage and shape.
pub(super) fn launch(k: Kind, ins: &[(&CudaStorage, &Layout)]) -> R<(CudaStorage, Shape)> {
    let dev = ins[0].0.device().clone();
    let typed: Vec<(DType, &Layout)> = ins.iter().map(|(s, l)| (s.dtype(), *l)).collect();
    let Output { t, dtype, shape } = super::plan(k, &typed)?;
    let elems = ins[0].1.shape().elem_count();
    let n = elems as u32;
    use Scalar::*;
    let (scalars, cfg) = match k {
        Kind::Softmax { t, window, scale } => {
            (vec![U32(t), U32(window), F32(scale)], per_row(elems, t)?)
        }
        Kind::SoftmaxBack { t, scale } => (vec![U32(t), F32(scale)], per_row(elems, t)?),
        Kind::RmsNorm { n, eps } | Kind::RmsNormBack { n, eps } => {
            (vec![U32(n), F32(eps)], per_row(elems, n)?)
        }
        Kind::Dropout { seed, p } | Kind::DropoutBack { seed, p, .. } => {
            (vec![U32(n), U64(seed), F32(p)], elementwise(elems))
        }
        Kind::AddScaled { s } | Kind::ScaleToF32 { s } => {
            (vec![U32(n), F32(s)], elementwise(elems))
        }
        Kind::Swiglu | Kind::SwigluBack => (vec![U32(n)], elementwise(elems)),
        Kind::Rope {
            t,
            h,
            d,
            interleaved,
            inverse,
        } => {
            let pairs = elems / 2;
            (
                vec![
                    U32(t),
                    U32(h),
                    U32(d),
                    I32(interleaved as i32),
                    I32(inverse as i32),
                    U32(pairs as u32),
                ],
                elementwise(pairs),
            )
        }
        Kind::Nf4 { n, .. } => (vec![U32(n)], elementwise(n as usize)),
        Kind::CrossEntropy { v } | Kind::CrossEntropyBack { v } => {
            (vec![U32(v)], per_row(elems, v)?)
        }
        Kind::AdamW(a) => {
            let scalars = [a.lr, a.beta1, a.beta2, a.eps, a.weight_decay, a.bc1, a.bc2];
            let mut args = vec![U32(n)];
            args.extend(scalars.map(F32));
            (args, elementwise(elems))
        }
    };
    let name = format!("{}_{}", super::Op(k).name(), suffix(t)?);
    let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
    let views = ins
        .iter()
        .map(|(s, l)| View::of(s, l))
        .collect::<R<Vec<_>>>()?;
    let out = Out::alloc(&dev, dtype, shape.elem_count())?;
    {
        let mut b = func.builder();
        for v in &views {
            v.push(&mut b);
        }
        out.push(&mut b);
        for s in &scalars {
            s.push(&mut b);
        }
        // SAFETY: the arguments are the kernel's, in its order (kernels.cu).
        unsafe { b.launch(cfg) }.map_err(err)?;
    }
    Ok((out.storage(dev), shape))
}
