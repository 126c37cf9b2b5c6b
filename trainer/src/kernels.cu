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

// y[r][j] += b[j] over rows of `width`: a linear layer's bias, added in place after the product.
template <typename T> __device__ void add_rows(T *y, const T *b, size_t n, int width) {
  GRID_STRIDE(i, n) store(&y[i], load(y[i]) + load(b[i % width]));
}

#define FLOAT_KERNELS(T, S)                                                                               \
  extern "C" __global__ void wit_gelu_fwd_##S(const T *x, T *y, size_t n) { gelu_fwd(x, y, n); }         \
  extern "C" __global__ void wit_add_rows_##S(T *y, const T *b, size_t n, int width) {                    \
    add_rows(y, b, n, width);                                                                             \
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

// Adds Σ g² to *acc (one float per call site; a warp-level reduction, then one atomic per warp).
extern "C" __global__ void wit_sum_squares_f32(const float *g, size_t n, float *acc) {
  float s = 0.f;
  GRID_STRIDE(i, n) s += g[i] * g[i];
  s = warp_sum(s);
  if (threadIdx.x % 32 == 0) atomicAdd(acc, s);
}
