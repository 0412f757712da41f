//! Weights as candle's pass holds them: [`Matrix`] (a quantized matrix, a half-precision one on a
//! GPU, or one of ours on the CPU), the embedding table (rows dequantized on lookup) and one
//! block's layer.

use super::*;

/// One transformer block of candle's pass: candle's matrices and tensors.
pub(super) type CandleLayer = Layer<Matrix, Tensor>;

impl CandleLayer {
    /// The layer for the CPU forward pass: every matrix must be one of ours.
    pub(super) fn into_cpu(self) -> Result<Layer<CpuMat, Vec<f32>>> {
        let m = |m: Matrix| match m {
            Matrix::Cpu(m) => Ok(m),
            _ => bail!("a matrix without CPU kernels reached the CPU forward pass"),
        };
        let v = |t: Tensor| -> Result<Vec<f32>> { Ok(t.to_vec1()?) };
        Ok(Layer {
            attn_norm: v(self.attn_norm)?,
            q: m(self.q)?,
            k: m(self.k)?,
            v: m(self.v)?,
            bias: vectors(self.bias)?,
            extra: vectors(self.extra)?,
            o: m(self.o)?,
            ffn_norm: v(self.ffn_norm)?,
            gate: m(self.gate)?,
            up: m(self.up)?,
            down: m(self.down)?,
        })
    }
}

pub(super) fn vectors<const N: usize>(ts: Option<[Tensor; N]>) -> Result<Option<[Vec<f32>; N]>> {
    let Some(ts) = ts else { return Ok(None) };
    let v = ts
        .into_iter()
        .map(|t| t.to_vec1())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Some(v.try_into().expect("N tensors give N vectors")))
}

/// Token embeddings kept in their GGUF type; rows are dequantized on lookup (a Llama-3 vocabulary
/// in f32 would be 1 GB).
pub(crate) struct Embedding {
    pub(super) q: Arc<QTensor>,
    pub(super) hidden: usize,
    pub(super) row_bytes: usize,
}

impl Embedding {
    pub(crate) fn new(q: Arc<QTensor>) -> Result<Embedding> {
        let (_, hidden) = q.shape().dims2()?;
        let t = q.dtype();
        Ok(Embedding {
            row_bytes: hidden / t.block_size() * t.type_size(),
            hidden,
            q,
        })
    }

    /// `[ids.len(), hidden]` f32.
    pub(crate) fn lookup(&self, ids: &[u32]) -> Result<Tensor> {
        let data = self.q.data()?;
        let mut rows = Vec::with_capacity(ids.len());
        for id in ids {
            let start = *id as usize * self.row_bytes;
            let Some(row) = data.get(start..start + self.row_bytes) else {
                bail!("token id {id} is outside the vocabulary");
            };
            let q = qtensor_from_ggml(self.q.dtype(), row, vec![1, self.hidden], &Device::Cpu)?;
            rows.push(q.dequantize(&Device::Cpu)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }
}

/// A weight matrix as held for inference.
pub(crate) enum Matrix {
    /// Q4_0 / Q4_1 / Q8_0 / Q6_K / F16 on the CPU, when every matrix of the model is one of
    /// these: our own kernels; the layers are then moved into [`cpu::forward::Model`].
    Cpu(CpuMat),
    /// Through candle's quantized matmul (other GGUF block types; f16 on the CPU; f32; GPUs).
    Q(QMatMul),
    /// `W` `[out, in]` in f16 or bf16 on a GPU: activations are converted to the weight's type
    /// for the product (cuBLAS half GEMM) and back. candle's `QMatMul` would hold f16 as f32 and
    /// has no bf16 path: twice the bytes read per token.
    Half(Tensor),
}

impl Matrix {
    /// Bytes the matrix occupies once loaded.
    pub(super) fn resident_bytes(&self) -> u64 {
        match self {
            Matrix::Cpu(m) => m.resident_bytes(),
            Matrix::Q(QMatMul::QTensor(q)) => q.storage_size_in_bytes() as u64,
            Matrix::Q(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) | Matrix::Half(t) => {
                (t.elem_count() * t.dtype().size_in_bytes()) as u64
            }
        }
    }
}

impl Module for Matrix {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Matrix::Cpu(m) => m.forward(x),
            Matrix::Q(m) => m.forward(x),
            Matrix::Half(w) => {
                let wt = match *x.dims() {
                    [b1, b2, _, _] => w.broadcast_left((b1, b2))?.t()?,
                    [b, _, _] => w.broadcast_left(b)?.t()?,
                    _ => w.t()?,
                };
                x.to_dtype(w.dtype())?.matmul(&wt)?.to_dtype(x.dtype())
            }
        }
    }
}
