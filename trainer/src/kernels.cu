// CUDA kernels for `fused`'s ops and the optimiser, compiled to PTX by build.rs (feature `cuda`);
// matrix products stay cuBLAS's, called through candle.
//
// Through candle's plain ops each of these layers is 5–25 kernel launches each way, every one a
// full pass over the activation plus a fresh buffer; here each is one launch (two for LayerNorm's
// backward, whose gain and bias gradients are column sums). Arithmetic runs in f32 whatever the
// storage type (PyTorch's bf16 autocast likewise runs LayerNorm and softmax in f32).

#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store(float *p, float x) { *p = x; }
__device__ __forceinline__ void store(__nv_bfloat16 *p, float x) { *p = __float2bfloat16(x); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One warp per row: the row index of this thread's warp, or -1 past the last row.
__device__ __forceinline__ long warp_row(long rows) {
  long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  return row < rows ? row : -1;
}

#define GRID_STRIDE(i, n) \
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)blockDim.x * gridDim.x)

// Exact GELU: y = x·Φ(x); dy/dx = Φ(x) + x·φ(x).
template <typename T> __device__ void gelu_fwd(const T *x, T *y, size_t n) {
  GRID_STRIDE(i, n) {
    float v = load(x[i]);
    store(&y[i], v * normcdff(v));
  }
}

template <typename T> __device__ void gelu_bwd(const T *x, const T *dy, T *dx, size_t n) {
  GRID_STRIDE(i, n) {
    float v = load(x[i]);
    float pdf = 0.3989422804014327f * __expf(-0.5f * v * v);
    store(&dx[i], load(dy[i]) * (normcdff(v) + v * pdf));
  }
}

// Mean and 1/σ of a row of `w`, the warp's lanes striding over it.
template <typename T> __device__ void row_stats(const T *x, int w, float eps, float *mean, float *rstd) {
  int lane = threadIdx.x % 32;
  float s = 0.f;
  for (int i = lane; i < w; i += 32) s += load(x[i]);
  float m = warp_sum(s) / w;
  float q = 0.f;
  for (int i = lane; i < w; i += 32) {
    float d = load(x[i]) - m;
    q += d * d;
  }
  *mean = m;
  *rstd = rsqrtf(warp_sum(q) / w + eps);
}

template <typename T>
__device__ void ln_fwd(const T *x, const T *g, const T *b, T *y, long rows, int w, float eps) {
  long row = warp_row(rows);
  if (row < 0) return;
  const T *xr = x + row * w;
  T *yr = y + row * w;
  float mean, rstd;
  row_stats(xr, w, eps, &mean, &rstd);
  for (int i = threadIdx.x % 32; i < w; i += 32)
    store(&yr[i], (load(xr[i]) - mean) * rstd * load(g[i]) + load(b[i]));
}

// dx for rows [blockIdx.x·per_block, …) and this block's partial column sums of dy·x̂ and dy
// (2·w floats in `partial`, summed over blocks by ln_bwd_columns). With ĝ = dy·g:
// dx = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) / σ.
template <typename T>
__device__ void ln_bwd_rows(const T *x, const T *g, const T *dy, T *dx, float *partial, long rows, int w,
                            float eps, int per_block) {
  extern __shared__ float sums[];
  for (int i = threadIdx.x; i < 2 * w; i += blockDim.x) sums[i] = 0.f;
  __syncthreads();
  int warps = blockDim.x / 32, lane = threadIdx.x % 32;
  long start = (long)blockIdx.x * per_block;
  long end = min(rows, start + per_block);
  for (long row = start + threadIdx.x / 32; row < end; row += warps) {
    const T *xr = x + row * w, *dyr = dy + row * w;
    T *dxr = dx + row * w;
    float mean, rstd;
    row_stats(xr, w, eps, &mean, &rstd);
    float a = 0.f, c = 0.f;
    for (int i = lane; i < w; i += 32) {
      float xh = (load(xr[i]) - mean) * rstd, d = load(dyr[i]), gh = d * load(g[i]);
      a += gh;
      c += gh * xh;
      atomicAdd(&sums[i], d * xh);
      atomicAdd(&sums[w + i], d);
    }
    a = warp_sum(a) / w;
    c = warp_sum(c) / w;
    for (int i = lane; i < w; i += 32) {
      float xh = (load(xr[i]) - mean) * rstd, gh = load(dyr[i]) * load(g[i]);
      store(&dxr[i], (gh - a - xh * c) * rstd);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 2 * w; i += blockDim.x) partial[(size_t)blockIdx.x * 2 * w + i] = sums[i];
}

// Sums the blocks' partial rows: out[0..w) = dg, out[w..2w) = db.
template <typename T> __device__ void ln_bwd_columns(const float *partial, T *out, int blocks, int w) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= 2 * w) return;
  float s = 0.f;
  for (int b = 0; b < blocks; ++b) s += partial[(size_t)b * 2 * w + i];
  store(&out[i], s);
}

// Softmax of scale·x over rows of `t`; with `causal`, row r (query r mod t) sees columns ≤ r mod t.
template <typename T> __device__ void softmax_fwd(const T *x, T *y, long rows, int t, float scale, int causal) {
  long row = warp_row(rows);
  if (row < 0) return;
  int lane = threadIdx.x % 32;
  int seen = causal ? (int)(row % t) + 1 : t;
  const T *xr = x + row * t;
  T *yr = y + row * t;
  float m = -INFINITY;
  for (int j = lane; j < seen; j += 32) m = fmaxf(m, scale * load(xr[j]));
  m = warp_max(m);
  float s = 0.f;
  for (int j = lane; j < seen; j += 32) s += __expf(scale * load(xr[j]) - m);
  float inv = 1.f / warp_sum(s);
  for (int j = lane; j < t; j += 32) store(&yr[j], j < seen ? __expf(scale * load(xr[j]) - m) * inv : 0.f);
}

// dx = scale·y∘(dy − Σ y∘dy); masked entries have y = 0 and get 0.
template <typename T> __device__ void softmax_bwd(const T *y, const T *dy, T *dx, long rows, int t, float scale) {
  long row = warp_row(rows);
  if (row < 0) return;
  int lane = threadIdx.x % 32;
  const T *yr = y + row * t, *dyr = dy + row * t;
  T *dxr = dx + row * t;
  float d = 0.f;
  for (int j = lane; j < t; j += 32) d += load(yr[j]) * load(dyr[j]);
  d = warp_sum(d);
  for (int j = lane; j < t; j += 32) store(&dxr[j], scale * load(yr[j]) * (load(dyr[j]) - d));
}

// y[r][j] += b[j] over `rows` rows of `width`: a linear layer's bias, added in place after the
// product. Blocks stride over rows and threads over a row, so no element pays a 64-bit modulo.
template <typename T> __device__ void add_rows(T *y, const T *b, long rows, int width) {
  for (long r = blockIdx.x; r < rows; r += gridDim.x) {
    T *yr = y + r * width;
    for (int j = threadIdx.x; j < width; j += blockDim.x) store(&yr[j], load(yr[j]) + load(b[j]));
  }
}

// Attention's heads between a linear layer's layout and the one the per-head products read: `x`
// is (B, T, P, H, D) (P = 3 for q, k, v side by side, 1 for one tensor), `y` is (P, B, H, T, D).
// Pure copies, so they move `U`-sized units (16 bytes where the rows and addresses allow: 2-byte
// loads ran at about 1 TB/s on an H200), `units` to a head's row; one thread per unit of `y`.
template <typename U>
__device__ void split_heads(const U *x, U *y, unsigned batch, unsigned t, unsigned parts, unsigned heads,
                            unsigned units) {
  unsigned n = parts * batch * heads * t * units;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    unsigned row = i / units, tt = row % t, rest = row / t, hh = rest % heads;
    rest /= heads;
    unsigned bb = rest % batch, pp = rest / batch;
    y[i] = x[(((bb * t + tt) * parts + pp) * heads + hh) * units + i % units];
  }
}

// The inverse for one part: `x` is (B, H, T, D), written into part `part` of `y`, (B, T, P, H, D).
template <typename U>
__device__ void merge_heads(const U *x, U *y, unsigned batch, unsigned t, unsigned parts, unsigned part,
                            unsigned heads, unsigned units) {
  unsigned n = batch * heads * t * units;
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    unsigned row = i / units, tt = row % t, rest = row / t, hh = rest % heads, bb = rest / heads;
    y[(((bb * t + tt) * parts + part) * heads + hh) * units + i % units] = x[i];
  }
}

#define HEAD_KERNELS(U, S)                                                                                \
  extern "C" __global__ void wit_split_heads_##S(const U *x, U *y, unsigned batch, unsigned t,          \
                                                 unsigned parts, unsigned heads, unsigned units) {        \
    split_heads(x, y, batch, t, parts, heads, units);                                                     \
  }                                                                                                       \
  extern "C" __global__ void wit_merge_heads_##S(const U *x, U *y, unsigned batch, unsigned t,          \
                                                 unsigned parts, unsigned part, unsigned heads,          \
                                                 unsigned units) {                                        \
    merge_heads(x, y, batch, t, parts, part, heads, units);                                               \
  }

HEAD_KERNELS(uint4, 16)
HEAD_KERNELS(uint2, 8)
HEAD_KERNELS(unsigned, 4)
HEAD_KERNELS(unsigned short, 2)

// gather_rows' gradient: row j of `dy` (`n` rows of `width`) added to row ids[j] of `acc` (f32,
// `rows` rows, zeroed by the caller) with atomics, since ids repeat; ids ≥ rows are skipped. One
// warp per row of `dy`. Candle's index_add, which this replaces, runs one block over all ids in turn.
template <typename T>
__device__ void gather_rows_bwd(const uint32_t *ids, const T *dy, float *acc, long n, int width, long rows) {
  long row = warp_row(n);
  if (row < 0 || ids[row] >= rows) return;
  const T *src = dy + row * width;
  float *dst = acc + (long)ids[row] * width;
  for (int i = threadIdx.x % 32; i < width; i += 32) atomicAdd(&dst[i], load(src[i]));
}

#define FLOAT_KERNELS(T, S)                                                                               \
  extern "C" __global__ void wit_gelu_fwd_##S(const T *x, T *y, size_t n) { gelu_fwd(x, y, n); }         \
  extern "C" __global__ void wit_add_rows_##S(T *y, const T *b, long rows, int width) {                   \
    add_rows(y, b, rows, width);                                                                          \
  }                                                                                                       \
  extern "C" __global__ void wit_gather_rows_bwd_##S(const uint32_t *ids, const T *dy, float *acc, long n, \
                                                     int width, long rows) {                              \
    gather_rows_bwd(ids, dy, acc, n, width, rows);                                                        \
  }                                                                                                       \
  extern "C" __global__ void wit_gelu_bwd_##S(const T *x, const T *dy, T *dx, size_t n) {                \
    gelu_bwd(x, dy, dx, n);                                                                               \
  }                                                                                                       \
  extern "C" __global__ void wit_ln_fwd_##S(const T *x, const T *g, const T *b, T *y, long rows, int w,   \
                                            float eps) {                                                  \
    ln_fwd(x, g, b, y, rows, w, eps);                                                                     \
  }                                                                                                       \
  extern "C" __global__ void wit_ln_bwd_rows_##S(const T *x, const T *g, const T *dy, T *dx, float *partial, \
                                                 long rows, int w, float eps, int per_block) {           \
    ln_bwd_rows(x, g, dy, dx, partial, rows, w, eps, per_block);                                          \
  }                                                                                                       \
  extern "C" __global__ void wit_ln_bwd_columns_##S(const float *partial, T *out, int blocks, int w) {    \
    ln_bwd_columns(partial, out, blocks, w);                                                              \
  }                                                                                                       \
  extern "C" __global__ void wit_softmax_fwd_##S(const T *x, T *y, long rows, int t, float scale,         \
                                                 int causal) {                                            \
    softmax_fwd(x, y, rows, t, scale, causal);                                                            \
  }                                                                                                       \
  extern "C" __global__ void wit_softmax_bwd_##S(const T *y, const T *dy, T *dx, long rows, int t,        \
                                                 float scale) {                                           \
    softmax_bwd(y, dy, dx, rows, t, scale);                                                               \
  }

FLOAT_KERNELS(float, f32)
FLOAT_KERNELS(__nv_bfloat16, bf16)

// y = x rounded to bf16: gather_rows_bwd's f32 accumulator into a bf16 table's gradient.
extern "C" __global__ void wit_f32_to_bf16(const float *x, __nv_bfloat16 *y, size_t n) {
  GRID_STRIDE(i, n) y[i] = __float2bfloat16(x[i]);
}

// PyTorch's AdamW on f32 master weights, in place: m, v, then p ← p·decay − lr·m̂/(√v̂ + eps), with
// the gradient first multiplied by `grad_scale` (global-norm clipping folded in). Unless `mirror`
// is null, the new p is also written there in bf16: the copy the forward pass reads.
extern "C" __global__ void wit_adamw_f32(float *p, float *m, float *v, const float *g, __nv_bfloat16 *mirror,
                                         size_t n, float lr, float beta1, float beta2, float eps, float bc1,
                                         float bc2, float decay, float grad_scale) {
  GRID_STRIDE(i, n) {
    float gi = g[i] * grad_scale;
    float mi = beta1 * m[i] + (1.f - beta1) * gi;
    float vi = beta2 * v[i] + (1.f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float pi = p[i] * decay - lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps));
    p[i] = pi;
    if (mirror) mirror[i] = __float2bfloat16(pi);
  }
}

// Adds Σ g² to *acc: each warp sums its share, the block sums its warps in shared memory, and one
// thread per block adds that to *acc. An atomic per warp (8,448 per launch on 1,056 blocks) all on
// one address was 5% of a ViT-B/32 step on an H200 (Nsight Compute, 2026-11-28).
extern "C" __global__ void wit_sum_squares_f32(const float *g, size_t n, float *acc) {
  __shared__ float warps[32];
  float s = 0.f;
  GRID_STRIDE(i, n) s += g[i] * g[i];
  s = warp_sum(s);
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warps[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < blockDim.x / 32 ? warps[lane] : 0.f;
    s = warp_sum(s);
    if (lane == 0) atomicAdd(acc, s);
  }
}
