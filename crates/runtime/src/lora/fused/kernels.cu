// The trainer's fused CUDA kernels (issue 21): each replaces a chain of candle's elementwise
// kernels that read and wrote the whole activation once per step of the chain. Compiled to PTX by
// build.rs (nvcc, with `--features cuda`) and launched by `lora/fused/cuda.rs`; `lora/fused/cpu.rs`
// computes the same formulas on the CPU, and the tests of `lora/fused/mod.rs`
// (`against_the_composite`) hold both to candle's composite operations.
//
// Every kernel comes in two element types, `_f32` and `_bf16` (bf16 as raw 16-bit words, widened
// to f32 for all arithmetic and rounded to nearest-even on store: no <cuda_bf16.h>, so the PTX
// builds for any architecture). Sizes are `unsigned int` element counts (< 2^32).

typedef unsigned short bf16;

__device__ __forceinline__ float ld(const float *p, unsigned int i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16 *p, unsigned int i) {
  return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st(float *p, unsigned int i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16 *p, unsigned int i, float v) {
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    p[i] = 0x7fc0;  // NaN
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  p[i] = (bf16)(u >> 16);
}

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum (or max) over the block, returned to every thread. blockDim.x: a multiple of 32.
__device__ float block_reduce(float v, bool max) {
  __shared__ float part[33];
  v = max ? warp_max(v) : warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // an earlier call's readers are done with `part`
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float x = lane < warps ? part[lane] : (max ? NEG_INF : 0.f);
    x = max ? warp_max(x) : warp_sum(x);
    if (lane == 0) part[32] = x;
  }
  __syncthreads();
  return part[32];
}

// splitmix64's output for index `i` of the stream `seed` (as `lora::dropout_keep` on the CPU).
__device__ __forceinline__ bool keep(unsigned long long seed, unsigned int i, float p) {
  unsigned long long z = seed + (unsigned long long)(i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}

// Attention probabilities over rows of `t` scores, causal: the row's query position is
// `row % t` (rows laid out [.., t queries, t keys]); with `window` > 0 a query also ignores keys
// `window` or more behind it. y = softmax(x · scale) over the visible keys, 0 elsewhere.
template <typename T>
__device__ void softmax_causal_fwd(const T *x, T *y, unsigned int t, unsigned int window,
                                   float scale) {
  const unsigned int row = blockIdx.x, i = row % t, base = row * t;
  const unsigned int lo = (window > 0 && i + 1 > window) ? i + 1 - window : 0;
  float m = NEG_INF;
  for (unsigned int j = lo + threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, ld(x, base + j) * scale);
  m = block_reduce(m, true);
  float s = 0.f;
  for (unsigned int j = lo + threadIdx.x; j <= i; j += blockDim.x) s += expf(ld(x, base + j) * scale - m);
  const float inv = 1.f / block_reduce(s, false);
  for (unsigned int j = threadIdx.x; j < t; j += blockDim.x)
    st(y, base + j, (j >= lo && j <= i) ? expf(ld(x, base + j) * scale - m) * inv : 0.f);
}

// dx = scale · y ⊙ (g − Σ g ⊙ y), per row of `t`.
template <typename T>
__device__ void softmax_bwd(const T *y, const T *g, T *dx, unsigned int t, float scale) {
  const unsigned int base = blockIdx.x * t;
  float dot = 0.f;
  for (unsigned int j = threadIdx.x; j < t; j += blockDim.x) dot += ld(g, base + j) * ld(y, base + j);
  dot = block_reduce(dot, false);
  for (unsigned int j = threadIdx.x; j < t; j += blockDim.x)
    st(dx, base + j, scale * ld(y, base + j) * (ld(g, base + j) - dot));
}

// RMS norm of rows of `n`: y = x · rsqrt(mean(x²) + eps) · w (w f32).
template <typename T>
__device__ void rms_norm_fwd(const T *x, const float *w, T *y, unsigned int n, float eps) {
  const unsigned int base = blockIdx.x * n;
  float ss = 0.f;
  for (unsigned int j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = ld(x, base + j);
    ss += v * v;
  }
  const float r = rsqrtf(block_reduce(ss, false) / n + eps);
  for (unsigned int j = threadIdx.x; j < n; j += blockDim.x) st(y, base + j, ld(x, base + j) * r * w[j]);
}

// Its gradient with respect to x: dx = r · g ⊙ w − x · r³ · Σ(g ⊙ w ⊙ x) / n.
template <typename T>
__device__ void rms_norm_bwd(const T *x, const float *w, const T *g, T *dx, unsigned int n,
                             float eps) {
  const unsigned int base = blockIdx.x * n;
  float ss = 0.f, dot = 0.f;
  for (unsigned int j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = ld(x, base + j);
    ss += v * v;
    dot += ld(g, base + j) * w[j] * v;
  }
  ss = block_reduce(ss, false);
  dot = block_reduce(dot, false);
  const float r = rsqrtf(ss / n + eps), c = r * r * r * dot / n;
  for (unsigned int j = threadIdx.x; j < n; j += blockDim.x)
    st(dx, base + j, r * ld(g, base + j) * w[j] - ld(x, base + j) * c);
}

// The adapter's input: x widened to f32, dropout applied (kept entries scaled by 1 / (1 − p)).
template <typename T>
__device__ void dropout_fwd(const T *x, float *y, unsigned int n, unsigned long long seed, float p) {
  const float s = 1.f / (1.f - p);
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    y[i] = keep(seed, i, p) ? ld(x, i) * s : 0.f;
}

// Its gradient: the same mask on g (f32), narrowed to T.
template <typename T>
__device__ void dropout_bwd(const float *g, T *dx, unsigned int n, unsigned long long seed, float p) {
  const float s = 1.f / (1.f - p);
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    st(dx, i, keep(seed, i, p) ? g[i] * s : 0.f);
}

// out = y + s · d: the base's output plus the scaled adapter delta (f32), rounded once.
template <typename T>
__device__ void add_scaled(const T *y, const float *d, T *out, unsigned int n, float s) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    st(out, i, ld(y, i) + s * d[i]);
}

// out = s · g widened to f32 (the delta's gradient).
template <typename T>
__device__ void scale_to_f32(const T *g, float *out, unsigned int n, float s) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    out[i] = s * ld(g, i);
}

// out = silu(gate) ⊙ up.
template <typename T>
__device__ void swiglu_fwd(const T *gate, const T *up, T *out, unsigned int n) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const float a = ld(gate, i);
    st(out, i, a / (1.f + expf(-a)) * ld(up, i));
  }
}

// d[0..n] = ∂/∂gate = g ⊙ up ⊙ σ(gate)(1 + gate(1 − σ(gate))), d[n..2n] = ∂/∂up = g ⊙ silu(gate).
template <typename T>
__device__ void swiglu_bwd(const T *gate, const T *up, const T *g, T *d, unsigned int n) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const float a = ld(gate, i), gi = ld(g, i), sg = 1.f / (1.f + expf(-a));
    st(d, i, gi * ld(up, i) * sg * (1.f + a * (1.f - sg)));
    st(d, n + i, gi * a * sg);
  }
}

// RoPE fused with the head transpose. Forward: x [b, t, h, dh] → y [b, h, t, dh], each pair
// rotated by the position's angle (cos / sin [t, dh/2] f32); the pair of element k is (2k, 2k+1)
// when `interleaved`, else (k, k + dh/2). Backward (`inverse`): g [b, h, t, dh] → dx [b, t, h, dh],
// rotated back. One thread per pair; `n` = b · t · h · dh/2.
template <typename T>
__device__ void rope(const T *x, const float *cos, const float *sin, T *y, unsigned int t,
                     unsigned int h, unsigned int dh, bool interleaved, bool inverse, unsigned int n) {
  const unsigned int half = dh / 2;
  for (unsigned int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < n; idx += gridDim.x * blockDim.x) {
    const unsigned int k = idx % half, head = (idx / half) % h, pos = (idx / (half * h)) % t,
                       b = idx / (half * h * t);
    const unsigned int btd = ((b * t + pos) * h + head) * dh, bht = ((b * h + head) * t + pos) * dh;
    const unsigned int src = inverse ? bht : btd, dst = inverse ? btd : bht;
    const unsigned int p0 = interleaved ? 2 * k : k, p1 = interleaved ? 2 * k + 1 : k + half;
    const float c = cos[pos * half + k], s = inverse ? -sin[pos * half + k] : sin[pos * half + k];
    const float x0 = ld(x, src + p0), x1 = ld(x, src + p1);
    st(y, dst + p0, x0 * c - x1 * s);
    st(y, dst + p1, x0 * s + x1 * c);
  }
}

// NF4 dequantization: element i is code[nibble i] · scale[i / 64]; the first element of a byte is
// its high nibble (bitsandbytes' layout).
__constant__ float NF4_CODE[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

template <typename T>
__device__ void nf4_dequantize(const unsigned char *packed, const float *scales, T *y, unsigned int n) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const unsigned char byte = packed[i / 2];
    const unsigned int q = (i & 1) ? (byte & 15u) : (byte >> 4);
    st(y, i, NF4_CODE[q] * scales[i / 64]);
  }
}

// The weighted cross-entropy of rows of `v` logits: loss[row] = w[row] · (logsumexp − logit of
// the row's target). Max and sum in one pass (each thread keeps a running max and its sum).
template <typename T>
__device__ float row_lse(const T *l, unsigned int base, unsigned int v) {
  float m = NEG_INF, s = 0.f;
  for (unsigned int j = threadIdx.x; j < v; j += blockDim.x) {
    const float x = ld(l, base + j);
    if (x > m) {
      s = s * expf(m - x) + 1.f;
      m = x;
    } else if (x != NEG_INF) {  // -inf adds nothing (and -inf - -inf would be NaN)
      s += expf(x - m);
    }
  }
  const float bm = block_reduce(m, true);
  const float bs = block_reduce(m == NEG_INF ? 0.f : s * expf(m - bm), false);
  return bm + logf(bs);
}

template <typename T>
__device__ void cross_entropy_fwd(const T *logits, const unsigned int *target, const float *w,
                                  float *loss, unsigned int v) {
  const unsigned int row = blockIdx.x, base = row * v;
  const float lse = row_lse(logits, base, v);
  if (threadIdx.x == 0) loss[row] = w[row] * (lse - ld(logits, base + target[row]));
}

// Its gradient with respect to the logits, `wg` = w · the loss's upstream gradient:
// d = wg · (softmax − onehot(target)).
template <typename T>
__device__ void cross_entropy_bwd(const T *logits, const unsigned int *target, const float *wg,
                                  T *d, unsigned int v) {
  const unsigned int row = blockIdx.x, base = row * v, t = target[row];
  const float lse = row_lse(logits, base, v), g = wg[row];
  for (unsigned int j = threadIdx.x; j < v; j += blockDim.x)
    st(d, base + j, g * (expf(ld(logits, base + j) - lse) - (j == t ? 1.f : 0.f)));
}

#define BOTH(NAME, PARAMS, ARGS)                                  \
  extern "C" __global__ void NAME##_f32 PARAMS(float) { NAME ARGS; } \
  extern "C" __global__ void NAME##_bf16 PARAMS(bf16) { NAME ARGS; }

#define P_SOFTMAX_FWD(T) (const T *x, T *y, unsigned int t, unsigned int window, float scale)
BOTH(softmax_causal_fwd, P_SOFTMAX_FWD, (x, y, t, window, scale))
#define P_SOFTMAX_BWD(T) (const T *y, const T *g, T *dx, unsigned int t, float scale)
BOTH(softmax_bwd, P_SOFTMAX_BWD, (y, g, dx, t, scale))
#define P_RMS_FWD(T) (const T *x, const float *w, T *y, unsigned int n, float eps)
BOTH(rms_norm_fwd, P_RMS_FWD, (x, w, y, n, eps))
#define P_RMS_BWD(T) (const T *x, const float *w, const T *g, T *dx, unsigned int n, float eps)
BOTH(rms_norm_bwd, P_RMS_BWD, (x, w, g, dx, n, eps))
#define P_DROP_FWD(T) (const T *x, float *y, unsigned int n, unsigned long long seed, float p)
BOTH(dropout_fwd, P_DROP_FWD, (x, y, n, seed, p))
#define P_DROP_BWD(T) (const float *g, T *dx, unsigned int n, unsigned long long seed, float p)
BOTH(dropout_bwd, P_DROP_BWD, (g, dx, n, seed, p))
#define P_ADD_SCALED(T) (const T *y, const float *d, T *out, unsigned int n, float s)
BOTH(add_scaled, P_ADD_SCALED, (y, d, out, n, s))
#define P_SCALE_F32(T) (const T *g, float *out, unsigned int n, float s)
BOTH(scale_to_f32, P_SCALE_F32, (g, out, n, s))
#define P_SWIGLU_FWD(T) (const T *gate, const T *up, T *out, unsigned int n)
BOTH(swiglu_fwd, P_SWIGLU_FWD, (gate, up, out, n))
#define P_SWIGLU_BWD(T) (const T *gate, const T *up, const T *g, T *d, unsigned int n)
BOTH(swiglu_bwd, P_SWIGLU_BWD, (gate, up, g, d, n))
#define P_ROPE(T)                                                                          \
  (const T *x, const float *cos, const float *sin, T *y, unsigned int t, unsigned int h, \
   unsigned int dh, int interleaved, int inverse, unsigned int n)
BOTH(rope, P_ROPE, (x, cos, sin, y, t, h, dh, interleaved != 0, inverse != 0, n))
#define P_CE_FWD(T) (const T *logits, const unsigned int *target, const float *w, float *loss, unsigned int v)
BOTH(cross_entropy_fwd, P_CE_FWD, (logits, target, w, loss, v))
#define P_CE_BWD(T) (const T *logits, const unsigned int *target, const float *wg, T *d, unsigned int v)
BOTH(cross_entropy_bwd, P_CE_BWD, (logits, target, wg, d, v))
#define P_NF4(T) (const unsigned char *packed, const float *scales, T *y, unsigned int n)
BOTH(nf4_dequantize, P_NF4, (packed, scales, y, n))

// One AdamW step of one f32 tensor of `n` elements: mv holds m then v; out gets m', v', p' (3n).
// bc1 / bc2: the bias corrections 1 − β^step. As candle_nn's AdamW, in one pass.
extern "C" __global__ void adamw_f32(const float *p, const float *g, const float *mv, float *out,
                                     unsigned int n, float lr, float b1, float b2, float eps,
                                     float wd, float bc1, float bc2) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const float gi = g[i];
    const float m = b1 * mv[i] + (1.f - b1) * gi, v = b2 * mv[n + i] + (1.f - b2) * gi * gi;
    out[i] = m;
    out[n + i] = v;
    out[2 * n + i] = p[i] * (1.f - lr * wd) - lr * (m / bc1) / (sqrtf(v / bc2) + eps);
  }
}
