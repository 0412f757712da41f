//! Dot products of GGUF weight blocks with 8-bit quantized activations.
//!
//! Weights stay in the file's blocks of 32 (`Q4_0`: f16 scale + 16 bytes of nibbles; `Q4_1`:
//! f16 scale, f16 minimum + nibbles; `Q8_0`: f16 scale + 32 bytes), repacked at load
//! ([`Packed`]). Activations are quantized per block of 32 to 8 bits ([`Acts`]: f32 scale, its
//! scaled sum, 32 × i8), as llama.cpp does, so each block product is an integer dot product of
//! 32 pairs; the scale products of 8 blocks are formed in one vector multiply. The AVX2 kernels
//! are used when the CPU has AVX2, FMA and F16C (checked once at run time); a portable version
//! computes the same sums. Q6_K rows are used in the file's super-blocks of 256 against the same
//! 8-bit activations ([`q6k_rows`]); f16 rows against the f32 activations ([`f16_rows`]).
//! Every kernel walks a range of weight rows and gives `ROWS` dot products per weight row, one
//! per activation row, so a weight block is unpacked once per tile of prompt rows.

use half::f16;

/// Elements per block (Q4_0, Q4_1, Q8_0 and the activations).
pub const QK: usize = 32;

/// The weight block types with kernels here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Q4_0,
    Q4_1,
    Q8_0,
}

impl Kind {
    /// Bytes of one GGUF block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Kind::Q4_0 => 18,
            Kind::Q4_1 => 20,
            Kind::Q8_0 => 34,
        }
    }

    /// Bytes of one block's quants (after the f16 scale and, for Q4_1, minimum).
    pub fn quant_bytes(self) -> usize {
        match self {
            Kind::Q4_0 | Kind::Q4_1 => QK / 2,
            Kind::Q8_0 => QK,
        }
    }
}

/// Rows of activations quantized per block of 32: `x ≈ d · qs`; `s = d · Σ qs` (for the
/// minimum / offset term of the 4-bit types). Scales and sums in arrays of their own, so the
/// kernels read 8 at a time.
pub struct Acts {
    /// Blocks per row.
    kb: usize,
    d: Vec<f32>,
    s: Vec<f32>,
    qs: Vec<[i8; QK]>,
}

/// One row of [`Acts`].
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub qs: &'a [[i8; QK]],
}

impl Acts {
    /// Quantizes the rows of `x` (`cols` wide, a multiple of 32).
    pub fn quantize(x: &[f32], cols: usize) -> Acts {
        debug_assert!(cols.is_multiple_of(QK) && x.len().is_multiple_of(cols));
        let blocks = x.len() / QK;
        let mut a = Acts {
            kb: cols / QK,
            d: Vec::with_capacity(blocks),
            s: Vec::with_capacity(blocks),
            qs: Vec::with_capacity(blocks),
        };
        for b in x.chunks_exact(QK) {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            // |v · id| ≤ 127 by construction; `as` saturates anyway.
            let q: [i8; QK] = std::array::from_fn(|j| (b[j] * id).round() as i8);
            a.d.push(d);
            a.s.push(d * q.iter().map(|v| *v as i32).sum::<i32>() as f32);
            a.qs.push(q);
        }
        a
    }

    pub fn row(&self, r: usize) -> ActRow<'_> {
        let at = r * self.kb..(r + 1) * self.kb;
        ActRow {
            d: &self.d[at.clone()],
            s: &self.s[at.clone()],
            qs: &self.qs[at],
        }
    }
}

/// Weights repacked from GGUF blocks: the quants of all blocks back to back (16-byte aligned,
/// so no load straddles a cache line, which GGUF's 18- and 34-byte blocks make loads do), and
/// the f16 scales (and Q4_1 minimums) in arrays of their own. Same bytes as the file.
pub struct Packed {
    pub kind: Kind,
    /// Quants, `blocks × quant_bytes` bytes (stored as u128 for the alignment).
    qs: Vec<u128>,
    d: Vec<u16>,
    /// Q4_1 only.
    m: Vec<u16>,
}

/// One weight row of a [`Packed`] matrix.
#[derive(Clone, Copy)]
pub struct Row<'a> {
    qs: &'a [u8],
    d: &'a [u16],
    m: &'a [u16],
}

impl Packed {
    /// Repacks GGUF blocks of `kind` (`gguf.len()` a multiple of the block size).
    pub fn from_gguf(kind: Kind, gguf: &[u8]) -> Packed {
        let bb = kind.block_bytes();
        let blocks = gguf.len() / bb;
        let qb = kind.quant_bytes();
        let mut qs = vec![0u128; (blocks * qb).div_ceil(16)];
        let (mut d, mut m) = (Vec::with_capacity(blocks), Vec::new());
        let bytes = bytes_mut(&mut qs);
        for (i, blk) in gguf.chunks_exact(bb).enumerate() {
            d.push(u16::from_le_bytes([blk[0], blk[1]]));
            if kind == Kind::Q4_1 {
                m.push(u16::from_le_bytes([blk[2], blk[3]]));
            }
            bytes[i * qb..(i + 1) * qb].copy_from_slice(&blk[bb - qb..]);
        }
        Packed { kind, qs, d, m }
    }

    pub fn bytes(&self) -> usize {
        self.d.len() * self.kind.block_bytes()
    }

    /// Row `r` of a matrix whose rows have `kb` blocks.
    pub fn row(&self, r: usize, kb: usize) -> Row<'_> {
        let qb = self.kind.quant_bytes();
        let qs = bytemuck_u8(&self.qs);
        Row {
            qs: &qs[r * kb * qb..(r + 1) * kb * qb],
            d: &self.d[r * kb..(r + 1) * kb],
            m: if self.m.is_empty() {
                &[]
            } else {
                &self.m[r * kb..(r + 1) * kb]
            },
        }
    }
}

fn bytes_mut(v: &mut [u128]) -> &mut [u8] {
    // SAFETY: u128 has no padding and every bit pattern of u8 is valid; same memory, 16× length.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 16) }
}

fn bytemuck_u8(v: &[u128]) -> &[u8] {
    // SAFETY: as in `bytes_mut`.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 16) }
}

fn half(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// `put(o, [x[0] · W[o], …])` for each weight row `o` of `rows` (of `kb` blocks): the loop over
/// rows runs inside the vectorised code, so a short row (576 weights: 18 blocks) pays no dispatch
/// per row.
pub fn dot_rows<const ROWS: usize>(
    p: &Packed,
    kb: usize,
    rows: std::ops::Range<usize>,
    x: [ActRow; ROWS],
    mut put: impl FnMut(usize, [f32; ROWS]),
) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked by `avx2`).
        unsafe { x86::rows(p, kb, rows, x, put) }
        return;
    }
    for o in rows {
        put(o, portable(p.kind, p.row(o, kb), x));
    }
}

/// `put(o, [x[0] · W[o], …])` for each f16 weight row `o` of `rows` (`w` row-major, `cols` wide,
/// a multiple of 16) and `ROWS` f32 activation rows: sixteen lanes of products (two vectors of
/// eight), summed the same way for a row alone or in a tile.
pub fn f16_rows<const ROWS: usize>(
    w: &[u16],
    cols: usize,
    rows: std::ops::Range<usize>,
    x: [&[f32]; ROWS],
    mut put: impl FnMut(usize, [f32; ROWS]),
) {
    assert!(
        cols.is_multiple_of(16) && w.len() >= rows.end * cols && x.iter().all(|r| r.len() >= cols)
    );
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C; lengths asserted above.
        unsafe { x86::f16_rows(w, cols, rows, x, put) };
        return;
    }
    for o in rows {
        let wr = &w[o * cols..(o + 1) * cols];
        put(
            o,
            std::array::from_fn(|r| {
                let mut lanes = [0f32; 16];
                for (wc, xc) in wr.chunks_exact(16).zip(x[r].chunks_exact(16)) {
                    for l in 0..16 {
                        lanes[l] += half(wc[l]) * xc[l];
                    }
                }
                lanes.iter().sum()
            }),
        );
    }
}

/// Weights per Q6_K super-block, and its bytes: 128 bytes of low nibbles, 64 of high bit pairs,
/// 16 signed 8-bit scales (one per 16 weights), an f16 scale.
pub const QK_K: usize = 256;
pub const Q6K_BYTES: usize = 210;

/// The 6-bit values (0 … 63; the weight is `d · scale · (q − 32)`) of 32-weight block `b` (0 … 7)
/// of a Q6_K super-block, and the two scales of its halves.
fn q6k_block(blk: &[u8], b: usize) -> ([u8; QK], [i8; 2]) {
    let (h, k) = (b / 4, b % 4);
    let (ql, qh) = (
        &blk[64 * h..64 * h + 64],
        &blk[128 + 32 * h..128 + 32 * h + 32],
    );
    let q = std::array::from_fn(|l| {
        let low = match k {
            0 => ql[l] & 0x0F,
            1 => ql[l + 32] & 0x0F,
            2 => ql[l] >> 4,
            _ => ql[l + 32] >> 4,
        };
        low | (((qh[l] >> (2 * k)) & 3) << 4)
    });
    let sc = &blk[192 + 8 * h + 2 * k..];
    (q, [sc[0] as i8, sc[1] as i8])
}

/// `put(o, [x[0] · W[o], …])` for each Q6_K weight row `o` of `rows` (`w`: the file's
/// super-blocks, `cols / 256` per row) and `ROWS` quantized activation rows. Each 32-weight block
/// meets one activation block: integer sums per 16 weights times their scale, then `d · d_x`.
pub fn q6k_rows<const ROWS: usize>(
    w: &[u8],
    cols: usize,
    rows: std::ops::Range<usize>,
    x: [ActRow; ROWS],
    mut put: impl FnMut(usize, [f32; ROWS]),
) {
    let nb = cols / QK_K;
    assert!(
        cols.is_multiple_of(QK_K)
            && w.len() >= rows.end * nb * Q6K_BYTES
            && x.iter()
                .all(|r| r.qs.len() >= cols / QK && r.d.len() >= cols / QK)
    );
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C; lengths asserted above.
        unsafe { x86::q6k_rows(w, nb, rows, x, put) };
        return;
    }
    for o in rows {
        put(
            o,
            q6k_portable(&w[o * nb * Q6K_BYTES..(o + 1) * nb * Q6K_BYTES], x),
        );
    }
}

/// One Q6_K row's products without SIMD (the path on CPUs without AVX2, and the kernel's test).
fn q6k_portable<const ROWS: usize>(row: &[u8], x: [ActRow; ROWS]) -> [f32; ROWS] {
    let mut out = [0f32; ROWS];
    for (s, blk) in row.chunks_exact(Q6K_BYTES).enumerate() {
        let d = half(u16::from_le_bytes([blk[208], blk[209]]));
        for b in 0..8 {
            let (q, sc) = q6k_block(blk, b);
            let j = s * 8 + b;
            for (o, y) in out.iter_mut().zip(&x) {
                let part = |lo: usize| -> i32 {
                    (lo..lo + 16)
                        .map(|i| (q[i] as i32 - 32) * y.qs[j][i] as i32)
                        .sum()
                };
                let sum = sc[0] as i32 * part(0) + sc[1] as i32 * part(16);
                *o += d * y.d[j] * sum as f32;
            }
        }
    }
    out
}

/// The reference sums (and the path on CPUs without AVX2).
pub fn portable<const ROWS: usize>(kind: Kind, w: Row, x: [ActRow; ROWS]) -> [f32; ROWS] {
    let qb = kind.quant_bytes();
    let mut out = [0f32; ROWS];
    for (i, qs) in w.qs.chunks_exact(qb).enumerate() {
        let d = half(w.d[i]);
        for (o, y) in out.iter_mut().zip(x) {
            let (yd, ys, yq) = (y.d[i], y.s[i], &y.qs[i]);
            *o += match kind {
                Kind::Q8_0 => {
                    let s: i32 = qs
                        .iter()
                        .zip(yq)
                        .map(|(a, b)| (*a as i8) as i32 * *b as i32)
                        .sum();
                    d * yd * s as f32
                }
                Kind::Q4_0 | Kind::Q4_1 => {
                    let m = match kind {
                        Kind::Q4_1 => half(w.m[i]),
                        _ => -8.0 * d,
                    };
                    let mut s = 0i32;
                    for (j, q) in qs.iter().enumerate() {
                        s += (q & 0x0F) as i32 * yq[j] as i32;
                        s += (q >> 4) as i32 * yq[j + QK / 2] as i32;
                    }
                    d * yd * s as f32 + m * ys
                }
            };
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ActRow, Kind, Packed, QK, Row};
    use std::arch::x86_64::*;
    use std::ops::Range;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn half(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `d_w · d_y` of blocks `i .. i + 8` of the row pair, into `out`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales8(wd: &[u16], yd: &[f32], i: usize, out: &mut [f32; 8]) {
        // SAFETY: the caller guarantees `i + 8 <= wd.len(), yd.len()`.
        unsafe {
            let w = _mm256_cvtph_ps(_mm_loadu_si128(wd.as_ptr().add(i) as *const __m128i));
            let y = _mm256_loadu_ps(yd.as_ptr().add(i));
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(w, y));
        }
    }

    /// Runs `block(i, scale of row r)` for every block, the scales formed 8 blocks at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn for_blocks<const ROWS: usize>(
        w: &Row,
        x: &[ActRow; ROWS],
        mut block: impl FnMut(usize, &[f32; ROWS]),
    ) {
        let blocks = w.d.len();
        let mut sc = [[0f32; 8]; ROWS];
        let mut i = 0;
        while i + 8 <= blocks {
            for r in 0..ROWS {
                // SAFETY: `i + 8 <= blocks`, and every row has `blocks` scales (asserted by
                // the callers).
                unsafe { scales8(w.d, x[r].d, i, &mut sc[r]) };
            }
            (0..8).for_each(|j| block(i + j, &std::array::from_fn(|r| sc[r][j])));
            i += 8;
        }
        for i in i..blocks {
            let d = half(w.d[i]);
            block(i, &std::array::from_fn(|r| d * x[r].d[i]));
        }
    }

    /// Σ m_i · s_i of one row: the 4-bit types' offset term (Q4_0: m = −8·d), 8 blocks at a
    /// time (f16 → f32 by F16C: a software conversion here cost more than the block products).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn offsets<const MIN: bool>(w: &Row, y: &ActRow) -> f32 {
        let m = if MIN { w.m } else { w.d };
        let n = m.len().min(y.s.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n` for both slices.
            unsafe {
                let mv = _mm256_cvtph_ps(_mm_loadu_si128(m.as_ptr().add(i) as *const __m128i));
                acc = _mm256_fmadd_ps(mv, _mm256_loadu_ps(y.s.as_ptr().add(i)), acc);
            }
            i += 8;
        }
        let mut sum = hsum(acc);
        for (m, s) in m[i..n].iter().zip(&y.s[i..n]) {
            sum += half(*m) * s;
        }
        if MIN { sum } else { -8.0 * sum }
    }

    /// [`super::dot_rows`]: the loop over weight rows, each row's block kernel inlined.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (check with `avx2()` first).
    /// Every row in `rows` must exist in `p`, and each activation row hold `kb` blocks (the
    /// block kernels assert their lengths).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows<const ROWS: usize>(
        p: &Packed,
        kb: usize,
        rows: Range<usize>,
        x: [ActRow; ROWS],
        mut put: impl FnMut(usize, [f32; ROWS]),
    ) {
        for o in rows {
            let w = p.row(o, kb);
            // SAFETY: the caller's guarantee (AVX2, FMA, F16C); lengths asserted inside.
            let v = unsafe {
                match p.kind {
                    Kind::Q4_0 => dot_q4::<false, ROWS>(w, x),
                    Kind::Q4_1 => dot_q4::<true, ROWS>(w, x),
                    Kind::Q8_0 => dot_q8::<ROWS>(w, x),
                }
            };
            put(o, v);
        }
    }

    /// [`super::f16_rows`].
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (check with `avx2()` first).
    /// `w` must hold `rows.end × cols` values, each activation row `cols` (a multiple of 16):
    /// the loads are unchecked.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_rows<const ROWS: usize>(
        w: &[u16],
        cols: usize,
        rows: Range<usize>,
        x: [&[f32]; ROWS],
        mut put: impl FnMut(usize, [f32; ROWS]),
    ) {
        for o in rows {
            // SAFETY: row `o` and the activation rows hold `cols` values (caller's checks).
            unsafe {
                let wp = w.as_ptr().add(o * cols);
                let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
                let mut i = 0;
                while i < cols {
                    for (k, half) in [0, 8].into_iter().enumerate() {
                        let wv =
                            _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i + half) as *const __m128i));
                        for r in 0..ROWS {
                            let xv = _mm256_loadu_ps(x[r].as_ptr().add(i + half));
                            acc[r][k] = _mm256_fmadd_ps(wv, xv, acc[r][k]);
                        }
                    }
                    i += 16;
                }
                put(
                    o,
                    std::array::from_fn(|r| hsum(_mm256_add_ps(acc[r][0], acc[r][1]))),
                );
            }
        }
    }

    /// [`super::q6k_rows`] (`nb` super-blocks per row).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (check with `avx2()` first).
    /// `w` must hold `rows.end × nb` super-blocks and each activation row `nb × 8` blocks: the
    /// loads are unchecked.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q6k_rows<const ROWS: usize>(
        w: &[u8],
        nb: usize,
        rows: Range<usize>,
        x: [ActRow; ROWS],
        mut put: impl FnMut(usize, [f32; ROWS]),
    ) {
        use super::Q6K_BYTES;
        let (m4, m2, c32) = (
            _mm256_set1_epi8(0x0F),
            _mm256_set1_epi8(3),
            _mm256_set1_epi8(32),
        );
        for o in rows {
            let mut acc = [_mm256_setzero_ps(); ROWS];
            for s in 0..nb {
                // SAFETY: super-block `s` of row `o` is inside `w`, and every activation row
                // has `8 · nb` blocks (caller's checks).
                unsafe {
                    let blk = w.as_ptr().add((o * nb + s) * Q6K_BYTES);
                    let d = half(u16::from_le_bytes([*blk.add(208), *blk.add(209)]));
                    for h in 0..2 {
                        let l0 = _mm256_loadu_si256(blk.add(64 * h) as *const __m256i);
                        let l1 = _mm256_loadu_si256(blk.add(64 * h + 32) as *const __m256i);
                        let hb = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
                        let high = |shift: i32| {
                            let bits = match shift {
                                0 => hb,
                                2 => _mm256_srli_epi16(hb, 2),
                                4 => _mm256_srli_epi16(hb, 4),
                                _ => _mm256_srli_epi16(hb, 6),
                            };
                            _mm256_slli_epi16(_mm256_and_si256(bits, m2), 4)
                        };
                        let q = [
                            _mm256_or_si256(_mm256_and_si256(l0, m4), high(0)),
                            _mm256_or_si256(_mm256_and_si256(l1, m4), high(2)),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                high(4),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                high(6),
                            ),
                        ];
                        for (k, q) in q.into_iter().enumerate() {
                            let sc = blk.add(192 + 8 * h + 2 * k) as *const i8;
                            let scales = _mm256_set_m128i(
                                _mm_set1_epi16(*sc.add(1) as i16),
                                _mm_set1_epi16(*sc as i16),
                            );
                            let j = s * 8 + h * 4 + k;
                            for r in 0..ROWS {
                                let xv = _mm256_loadu_si256(
                                    x[r].qs.get_unchecked(j).as_ptr() as *const __m256i
                                );
                                let p = _mm256_sub_epi16(
                                    _mm256_maddubs_epi16(q, xv),
                                    _mm256_maddubs_epi16(c32, xv),
                                );
                                let f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, scales));
                                let scale = _mm256_set1_ps(d * *x[r].d.get_unchecked(j));
                                acc[r] = _mm256_fmadd_ps(f, scale, acc[r]);
                            }
                        }
                    }
                }
            }
            put(o, std::array::from_fn(|r| hsum(acc[r])));
        }
    }

    /// Q4_0 (`MIN = false`: values `q − 8`) or Q4_1 (`MIN = true`: `d·q + m`) rows.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (check with `avx2()` first).
    /// Lengths are asserted.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4<const MIN: bool, const ROWS: usize>(
        w: Row,
        x: [ActRow; ROWS],
    ) -> [f32; ROWS] {
        let blocks = w.d.len();
        assert!(w.qs.len() >= blocks * QK / 2 && (!MIN || w.m.len() >= blocks));
        assert!(
            x.iter()
                .all(|r| r.d.len() >= blocks && r.qs.len() >= blocks)
        );
        let low = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); ROWS];
        // SAFETY: blocks in bounds (asserted above).
        unsafe {
            for_blocks(&w, &x, |i, sc| {
                let raw = _mm_loadu_si128(w.qs.as_ptr().add(i * QK / 2) as *const __m128i);
                let lo = _mm_and_si128(raw, low);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
                let q = _mm256_set_m128i(hi, lo);
                for r in 0..ROWS {
                    let v = _mm256_loadu_si256(x[r].qs.get_unchecked(i).as_ptr() as *const __m256i);
                    let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(q, v), ones));
                    acc[r] = _mm256_fmadd_ps(p, _mm256_set1_ps(sc[r]), acc[r]);
                }
            });
        }
        std::array::from_fn(|r| hsum(acc[r]) + offsets::<MIN>(&w, &x[r]))
    }

    /// Q8_0 rows (signed × signed: the sign of the weight moves onto the activation so that
    /// `maddubs` multiplies unsigned by signed).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (check with `avx2()` first).
    /// Lengths are asserted.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8<const ROWS: usize>(w: Row, x: [ActRow; ROWS]) -> [f32; ROWS] {
        let blocks = w.d.len();
        assert!(w.qs.len() >= blocks * QK);
        assert!(
            x.iter()
                .all(|r| r.d.len() >= blocks && r.qs.len() >= blocks)
        );
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); ROWS];
        // SAFETY: as in `dot_q4`.
        unsafe {
            for_blocks(&w, &x, |i, sc| {
                let q = _mm256_loadu_si256(w.qs.as_ptr().add(i * QK) as *const __m256i);
                let aq = _mm256_sign_epi8(q, q);
                for r in 0..ROWS {
                    let v = _mm256_loadu_si256(x[r].qs.get_unchecked(i).as_ptr() as *const __m256i);
                    let p16 = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(v, q));
                    let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                    acc[r] = _mm256_fmadd_ps(p, _mm256_set1_ps(sc[r]), acc[r]);
                }
            });
        }
        std::array::from_fn(|r| hsum(acc[r]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random bytes and values (no dependency on a RNG crate).
    fn noise(seed: u64, n: usize) -> Vec<u64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            })
            .collect()
    }

    fn weights(kind: Kind, blocks: usize, seed: u64) -> Vec<u8> {
        let mut w = Vec::new();
        for (i, r) in noise(seed, blocks).into_iter().enumerate() {
            let d = f16::from_f32(0.01 + (i % 7) as f32 * 0.003)
                .to_bits()
                .to_le_bytes();
            w.extend(d);
            if kind == Kind::Q4_1 {
                w.extend(f16::from_f32(-0.05).to_bits().to_le_bytes());
            }
            let n = kind.block_bytes() - w.len() % kind.block_bytes();
            w.extend(noise(r, n).into_iter().map(|v| v as u8));
        }
        w
    }

    fn f16_at(b: &[u8], at: usize) -> f64 {
        half(u16::from_le_bytes([b[at], b[at + 1]])) as f64
    }

    /// The dot product in f64 from the dequantized GGUF blocks (the definition of each format).
    fn reference(kind: Kind, w: &[u8], x: ActRow) -> f64 {
        let mut sum = 0f64;
        for (i, blk) in w.chunks_exact(kind.block_bytes()).enumerate() {
            let d = f16_at(blk, 0);
            let vals: Vec<f64> = match kind {
                Kind::Q8_0 => blk[2..].iter().map(|q| d * (*q as i8) as f64).collect(),
                Kind::Q4_0 | Kind::Q4_1 => {
                    let (m, qs) = if kind == Kind::Q4_1 {
                        (f16_at(blk, 2), &blk[4..])
                    } else {
                        (-8.0 * d, &blk[2..])
                    };
                    let lo = qs.iter().map(|q| d * (q & 15) as f64 + m);
                    let hi = qs.iter().map(|q| d * (q >> 4) as f64 + m);
                    lo.chain(hi).collect()
                }
            };
            for (v, q) in vals.iter().zip(&x.qs[i]) {
                sum += v * x.d[i] as f64 * *q as f64;
            }
        }
        sum
    }

    #[test]
    fn activations_round_trip_within_half_a_step() {
        let x: Vec<f32> = noise(3, 64)
            .into_iter()
            .map(|v| (v % 2001) as f32 / 100.0 - 10.0)
            .collect();
        let a = Acts::quantize(&x, QK);
        for (i, b) in x.chunks(QK).enumerate() {
            let (d, s, qs) = (a.row(i).d[0], a.row(i).s[0], a.row(i).qs[0]);
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!((d - amax / 127.0).abs() < 1e-6);
            for (v, qv) in b.iter().zip(&qs) {
                assert!((v - d * *qv as f32).abs() <= d * 0.5 + 1e-5);
            }
            let sum: i32 = qs.iter().map(|v| *v as i32).sum();
            assert!((s - d * sum as f32).abs() < 1e-4);
        }
        let zero = Acts::quantize(&[0.0; QK], QK);
        let z = zero.row(0);
        assert_eq!((z.d[0], z.s[0], z.qs[0]), (0.0, 0.0, [0; QK]));
    }

    #[test]
    fn every_kernel_matches_the_dequantized_reference() {
        // 18 blocks: two groups of 8 and a tail of 2.
        let blocks = 18;
        let v: Vec<f32> = noise(100, 4 * blocks * QK)
            .into_iter()
            .map(|v| (v % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let acts = Acts::quantize(&v, blocks * QK);
        let x: Vec<ActRow> = (0..4).map(|r| acts.row(r)).collect();
        for kind in [Kind::Q4_0, Kind::Q4_1, Kind::Q8_0] {
            // Two rows: the second one's blocks start mid-way through the packed arrays.
            let w = weights(kind, 2 * blocks, 7);
            assert_eq!(w.len(), 2 * blocks * kind.block_bytes());
            let packed = Packed::from_gguf(kind, &w);
            assert_eq!(packed.bytes(), w.len());
            let w1 = &w[blocks * kind.block_bytes()..];
            let want: Vec<f64> = x.iter().map(|r| reference(kind, w1, *r)).collect();
            let rows = [x[0], x[1], x[2], x[3]];
            let row = packed.row(1, blocks);
            let (mut fast4, mut fast1) = ([0f32; 4], [0f32]);
            dot_rows::<4>(&packed, blocks, 1..2, rows, |_, v| fast4 = v);
            dot_rows::<1>(&packed, blocks, 1..2, [x[2]], |_, v| fast1 = v);
            let slow4 = portable::<4>(kind, row, rows);
            for r in 0..4 {
                let tol = 1e-4 * want[r].abs().max(1.0);
                assert!((fast4[r] as f64 - want[r]).abs() < tol, "{kind:?} row {r}");
                assert!((slow4[r] as f64 - want[r]).abs() < tol, "{kind:?} row {r}");
            }
            assert_eq!(
                fast1[0], fast4[2],
                "{kind:?}: one row = the same row in a tile"
            );
        }
    }

    /// Q6_K: the AVX2 kernel and the portable one against the weights as candle dequantizes them,
    /// times the quantized activations (f64); a row alone equals the same row in a tile.
    #[test]
    fn q6k_matches_candles_dequantization() {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let cols = 512;
        let w = Tensor::randn(0f32, 1.0, (3, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q6K).unwrap();
        let deq: Vec<Vec<f32>> = q.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
        let bytes = q.data().unwrap();
        let v: Vec<f32> = noise(9, 4 * cols)
            .into_iter()
            .map(|v| (v % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let acts = Acts::quantize(&v, cols);
        let x = [acts.row(0), acts.row(1), acts.row(2), acts.row(3)];
        let mut tile = vec![];
        q6k_rows::<4>(&bytes, cols, 0..3, x, |o, v| tile.push((o, v)));
        for (o, four) in tile {
            let mut one = [0f32];
            q6k_rows::<1>(&bytes, cols, o..o + 1, [x[2]], |_, v| one = v);
            assert_eq!(one[0], four[2], "row {o}: alone vs in a tile");
            let slow = q6k_portable(&bytes[o * 2 * Q6K_BYTES..(o + 1) * 2 * Q6K_BYTES], x);
            for r in 0..4 {
                let want: f64 = (0..cols)
                    .map(|i| {
                        deq[o][i] as f64 * x[r].d[i / QK] as f64 * x[r].qs[i / QK][i % QK] as f64
                    })
                    .sum();
                let tol = 1e-4 * want.abs().max(1.0);
                assert!(
                    (four[r] as f64 - want).abs() < tol,
                    "row {o}/{r}: {} vs {want}",
                    four[r]
                );
                assert!((slow[r] as f64 - want).abs() < tol, "row {o}/{r} portable");
            }
        }
    }
}
