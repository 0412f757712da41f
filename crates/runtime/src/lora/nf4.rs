//! NF4, bitsandbytes' 4-bit NormalFloat format (QLoRA, Dettmers et al. 2023), as
//! `quantize_4bit(W, blocksize=64, quant_type="nf4", compress_statistics=True)` lays it out:
//!
//! - the matrix flattened row-major into blocks of 64 values; each block scaled by its absmax
//!   and each value replaced by the index of the nearest of the 16 NF4 levels ([`CODE`]);
//! - two indices per byte, the first value in the high nibble;
//! - double quantization of the absmax scales: their mean is subtracted, then they are
//!   quantized in blocks of 256 to 8 bits with bitsandbytes' signed dynamic map ([`dynamic_map`])
//!   and an f32 absmax per block of 256.
//!
//! Dequantization is a table lookup of whole bytes (a byte's two levels at once), a
//! multiplication by the block's scale and a cast, in tensor operations on the matrix's device.

use super::*;

/// The 16 NF4 levels (bitsandbytes' table; `create_normal_map(offset=0.9677083)`): quantiles of
/// N(0, 1) of equal probability mass, normalised to [-1, 1], with an exact zero.
pub const CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Values per NF4 block.
pub const BLOCK: usize = 64;
/// Scales per block of the double quantization.
pub const SCALE_BLOCK: usize = 256;

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map(signed=True)`): for exponents
/// 10⁻⁶ … 10⁰, `2^i` fractions (midpoints of a linspace over [0.1, 1]) with both signs, plus 0
/// and 1, sorted: 256 levels.
pub fn dynamic_map() -> Vec<f32> {
    let mut data = vec![];
    for i in 0..7i32 {
        let items = (1usize << i) + 1;
        let bounds: Vec<f64> = (0..items)
            .map(|k| 0.1 + 0.9 * k as f64 / (items - 1) as f64)
            .collect();
        let scale = 10f64.powi(i - 6);
        for w in bounds.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push((scale * mean) as f32);
            data.push((-scale * mean) as f32);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data
}

/// Index of the level of `code` (sorted) nearest to `x`; a value exactly between two levels
/// takes the lower one.
fn nearest(code: &[f32], x: f32) -> u8 {
    let hi = code.partition_point(|&c| c < x).min(code.len() - 1);
    if hi > 0 && (x - code[hi - 1]) <= (code[hi] - x) {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

/// A matrix in NF4 with double-quantized scales.
pub struct Nf4 {
    pub rows: usize,
    pub cols: usize,
    /// Two indices per byte, `⌈rows·cols / 64⌉ · 32` bytes (the last block zero-padded).
    pub packed: Vec<u8>,
    /// One 8-bit code per block of 64.
    pub scale_codes: Vec<u8>,
    /// One f32 per block of 256 scales.
    pub scale_absmax: Vec<f32>,
    /// Mean of the scales, subtracted before their quantization.
    pub scale_offset: f32,
    /// The same data on the device, for dequantization there.
    device: Option<DeviceData>,
}

struct DeviceData {
    packed: Tensor,
    /// `[256, 2]` f32: a byte's two levels.
    pairs: Tensor,
    /// `[blocks, 1]` f32 scales (dequantized once: 4 bytes per 64 values).
    scales: Tensor,
}

impl Nf4 {
    /// Quantizes `w` `[rows, cols]` (any float dtype, any device; computed on the host).
    pub fn quantize(w: &Tensor) -> Result<Nf4> {
        let (rows, cols) = w.dims2()?;
        let values: Vec<f32> = w
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            bail!("NF4: the matrix holds a non-finite value ({bad})");
        }
        let blocks = values.len().div_ceil(BLOCK);
        let mut packed = vec![0u8; blocks * BLOCK / 2];
        let mut absmax = Vec::with_capacity(blocks);
        for (b, block) in values.chunks(BLOCK).enumerate() {
            let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            absmax.push(m);
            let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
            for (j, v) in block.iter().enumerate() {
                let q = nearest(&CODE, v * inv);
                let byte = &mut packed[b * BLOCK / 2 + j / 2];
                *byte |= if j % 2 == 0 { q << 4 } else { q };
            }
        }
        // Double quantization of the scales.
        let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / blocks as f64) as f32;
        let code8 = dynamic_map();
        let mut scale_codes = Vec::with_capacity(blocks);
        let mut scale_absmax = vec![];
        for chunk in absmax.chunks(SCALE_BLOCK) {
            let m = chunk.iter().fold(0f32, |m, a| m.max((a - offset).abs()));
            scale_absmax.push(m);
            let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
            scale_codes.extend(chunk.iter().map(|a| nearest(&code8, (a - offset) * inv)));
        }
        // Indices 0 of the zero padding decode to -1 · scale; pad with the zero level instead.
        let n = values.len();
        for j in n..blocks * BLOCK {
            let byte = &mut packed[j / 2];
            *byte |= if j % 2 == 0 { 7 << 4 } else { 7 };
        }
        Ok(Nf4 {
            rows,
            cols,
            packed,
            scale_codes,
            scale_absmax,
            scale_offset: offset,
            device: None,
        })
    }

    /// The blocks' scales as double quantization gives them back.
    pub fn scales(&self) -> Vec<f32> {
        let code8 = dynamic_map();
        self.scale_codes
            .iter()
            .enumerate()
            .map(|(b, &q)| {
                code8[q as usize] * self.scale_absmax[b / SCALE_BLOCK] + self.scale_offset
            })
            .collect()
    }

    /// The quantized matrix ready for dequantization on `device`.
    pub fn to_device(mut self, device: &Device) -> Result<Nf4> {
        let pairs: Vec<f32> = (0..256)
            .flat_map(|b| [CODE[b >> 4], CODE[b & 15]])
            .collect();
        let blocks = self.scale_codes.len();
        self.device = Some(DeviceData {
            packed: Tensor::from_slice(&self.packed, self.packed.len(), device)?,
            pairs: Tensor::from_vec(pairs, (256, 2), device)?,
            scales: Tensor::from_vec(self.scales(), (blocks, 1), device)?,
        });
        Ok(self)
    }

    /// `W` `[rows, cols]` in `dtype` on the device given to [`Nf4::to_device`].
    pub fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        let Some(d) = &self.device else {
            candle_core::bail!("NF4: dequantize before to_device");
        };
        if super::fused::takes(d.packed.device(), dtype) {
            let n = self.rows * self.cols;
            return super::fused::nf4_dequantize(&d.packed, &d.scales, n, dtype)?
                .reshape((self.rows, self.cols));
        }
        self.composite_dequantize(dtype)
    }

    /// [`Nf4::dequantize`] with candle's operations (a code-pair lookup per byte).
    pub(super) fn composite_dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        let Some(d) = &self.device else {
            candle_core::bail!("NF4: dequantize before to_device");
        };
        let blocks = self.scale_codes.len();
        // As u32 indices: candle's index_select reads the largest index of a type (255 for u8)
        // as padding and returns zeros for it.
        d.pairs
            .index_select(&d.packed.to_dtype(DType::U32)?, 0)?
            .reshape((blocks, BLOCK))?
            .broadcast_mul(&d.scales)?
            .to_dtype(dtype)?
            .flatten_all()?
            .narrow(0, 0, self.rows * self.cols)?
            .reshape((self.rows, self.cols))
    }

    /// Bytes held: packed indices, 8-bit scales, second-level scales.
    pub fn bytes(&self) -> u64 {
        (self.packed.len() + self.scale_codes.len() + 4 * self.scale_absmax.len() + 4) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `q` dequantized to f32 on the CPU, flattened.
    fn dequantized_on_cpu(q: Nf4) -> Vec<f32> {
        q.to_device(&Device::Cpu)
            .unwrap()
            .dequantize(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// `tests/data/nf4_bnb.safetensors` is a 97 × 200 matrix quantized by bitsandbytes 0.50.2 on
    /// an H200 (`benches/nf4_bnb_fixture.py`): 303 full blocks and a partial one, two blocks of
    /// scales (the second partial), an outlier. Ours must give the same bytes.
    #[test]
    fn bitsandbytes_quantizes_the_fixture_as_we_do() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/nf4_bnb.safetensors"
        );
        let t = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        let u8s = |k: &str| t[k].to_vec1::<u8>().unwrap();
        let f32s = |k: &str| t[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(f32s("code"), CODE.to_vec(), "the NF4 code book");
        let q = Nf4::quantize(&t["weight"]).unwrap();
        let packed = u8s("packed");
        // bitsandbytes stores ⌈n / 2⌉ bytes; ours pads the last block.
        assert_eq!(packed.len(), 97 * 200 / 2);
        let differ = (0..packed.len())
            .filter(|&i| packed[i] != q.packed[i])
            .count();
        assert_eq!(
            differ,
            0,
            "{differ} of {} packed bytes differ",
            packed.len()
        );
        assert_eq!(q.scale_codes, u8s("absmax"), "8-bit scale codes");
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b.abs().max(1e-6);
        let absmax2 = f32s("absmax2");
        assert_eq!(q.scale_absmax.len(), absmax2.len());
        assert!(
            q.scale_absmax
                .iter()
                .zip(&absmax2)
                .all(|(a, b)| close(*a, *b))
        );
        assert!(close(q.scale_offset, f32s("offset")[0]));
        let ours = dequantized_on_cpu(q);
        let theirs = f32s("dequantized");
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "dequantized values differ by up to {worst}");
    }

    /// Φ⁻¹ by bisection on Φ(x) = ½ erfc(-x/√2) (erfc from its continued fraction / series).
    fn norm_ppf(p: f64) -> f64 {
        fn erf(x: f64) -> f64 {
            // Maclaurin series: exact to f64 for |x| ≤ 3 with enough terms.
            let mut sum = 0.0f64;
            let mut term = x;
            let mut n = 0;
            while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3 {
                sum += term / (2 * n + 1) as f64;
                n += 1;
                term *= -x * x / n as f64;
                if n > 200 {
                    break;
                }
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let cdf = |x: f64| 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
        let (mut lo, mut hi) = (-6.0, 6.0);
        for _ in 0..200 {
            let mid = (lo + hi) / 2.0;
            if cdf(mid) < p {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (lo + hi) / 2.0
    }

    /// The table is what QLoRA's construction gives: 8 positive quantiles of N(0,1) over
    /// linspace(0.9677083, 0.5, 9), 7 negative over linspace(0.9677083, 0.5, 8), zero,
    /// normalised by the largest.
    #[test]
    fn the_code_book_is_the_published_construction() {
        let offset = 0.967_708_3;
        let lin = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|k| offset + (0.5 - offset) * k as f64 / (n - 1) as f64)
                .collect()
        };
        let mut v: Vec<f64> = lin(9)[..8].iter().map(|&p| norm_ppf(p)).collect();
        v.push(0.0);
        v.extend(lin(8)[..7].iter().map(|&p| -norm_ppf(p)));
        let max = v.iter().fold(0f64, |m, x| m.max(x.abs()));
        let mut v: Vec<f64> = v.iter().map(|x| x / max).collect();
        v.sort_by(f64::total_cmp);
        for (a, b) in v.iter().zip(CODE) {
            assert!((a - b as f64).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn the_dynamic_map_has_256_sorted_levels_from_minus_one_to_one() {
        let m = dynamic_map();
        assert_eq!(m.len(), 256);
        assert!(m.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert_eq!((m[0], m[255]), (-0.992_968_75, 1.0));
        assert!(m.contains(&0.0));
        // The smallest magnitude: 10⁻⁶ · the midpoint of [0.1, 1].
        let tiny = m.iter().filter(|x| **x > 0.0).fold(1f32, |a, b| a.min(*b));
        assert!((tiny - 0.55e-6).abs() < 1e-12, "{tiny}");
    }

    #[test]
    fn blocks_pack_the_first_value_in_the_high_nibble_and_scale_by_absmax() {
        // Block 0: a ramp with absmax 2; block 1: one value of -3, the rest zero.
        let mut w: Vec<f32> = (0..64).map(|i| (i as f32 - 32.0) / 16.0).collect();
        w.extend(std::iter::once(-3.0).chain(std::iter::repeat_n(0.0, 63)));
        let q =
            Nf4::quantize(&Tensor::from_vec(w.clone(), (2, 64), &Device::Cpu).unwrap()).unwrap();
        assert_eq!(q.packed.len(), 64);
        // -2 / 2 = -1 → level 0; -31/16 / 2 = -0.96875 → level 0; block 1: -1 then zeros (7).
        assert_eq!(q.packed[0], 0x00);
        assert_eq!(q.packed[32], 0x07);
        assert_eq!(q.packed[33], 0x77);
        // 0 → level 7, 1/16/2 = 0.03125 → nearer 0 than 0.0796 → 7.
        assert_eq!(q.packed[16], 0x77);
        let s = q.scales();
        assert!(
            (s[0] - 2.0).abs() < 0.02 && (s[1] - 3.0).abs() < 0.02,
            "{s:?}"
        );
        let back = dequantized_on_cpu(q);
        // Every value within half the widest gap between levels (0.304 / 2) of its block scale.
        for (b, (x, y)) in w.iter().zip(&back).enumerate() {
            let scale = [2.0, 3.0][b / 64];
            assert!((x - y).abs() <= 0.16 * scale, "{b}: {x} vs {y}");
        }
        assert_eq!(back[64], -s[1]);
    }

    #[test]
    fn a_matrix_that_does_not_fill_its_last_block_round_trips() {
        let w: Vec<f32> = (0..3 * 50)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let t = Tensor::from_vec(w.clone(), (3, 50), &Device::Cpu).unwrap();
        let q = Nf4::quantize(&t).unwrap().to_device(&Device::Cpu).unwrap();
        assert_eq!(q.scale_codes.len(), 3);
        let back = q.dequantize(DType::F32).unwrap();
        assert_eq!(back.dims(), [3, 50]);
        let err = (back - t).unwrap().abs().unwrap().max_all().unwrap();
        assert!(err.to_scalar::<f32>().unwrap() < 0.2);
    }
}
