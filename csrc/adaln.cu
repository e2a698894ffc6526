// AdaLN family, CUDA kernels (sm_90a) over the per-row math of adaln.cuh.
//
// Row kernels (adaln_fwd/bwd/jvp): grid (B*T, chunks); a block walks a chunk of one frame's rows
// one row at a time, each thread holding up to 16 elements of the row in registers (kVecs
// vectors of V elements: 16-byte loads when the row is aligned, else scalars), with warp-shuffle
// + shared-memory block reductions for the row statistics. The backward keeps each thread's
// columns' dshift/dscale/dgate partial sums in registers across the chunk and writes them once
// per chunk; a second small kernel sums the chunks in order (deterministic, no atomics).
// gated_residual kernels: grid (B*T, chunks, column blocks), one vector of columns per thread.
// (B*T on x, whose limit is 2^31 - 1; chunks <= TARGET_PROGRAMS of cosmos_kernels/adaln.py on y.)
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "adaln.cuh"

namespace ck {
namespace adaln {
// A named namespace (not an anonymous one): the compile report reads kernel names from ptxas.
namespace kernels {

constexpr int kWarp = 32;
// Elements of a row per thread in the row kernels: 16 with 16-byte accesses; 8 on the scalar
// path (D not a multiple of the vector width, or unaligned rows), whose per-element accesses
// need more registers. A block has D / elements threads rounded up to warps, at most 512:
// D <= kMaxRowD on the vector path, D <= kMaxScalarRowD (adaln.cuh) on the scalar one.
__host__ __device__ constexpr int row_elems(int V) { return V == 1 ? 8 : 16; }
__host__ __device__ constexpr int max_row_threads(int V) { return V == 1 ? kMaxScalarRowD / 8 : kMaxRowD / 16; }

// V consecutive elements to/from fp32; 16-byte accesses when V elements fill whole 16-byte words
// (the launcher picks V > 1 only when every row start is 16-byte aligned). A word is four 32-bit
// lanes: one fp32 each, or two 16-bit elements (low half first: little-endian memory order).
template <class E, int V>
struct Io {
  using S = typename E::Storage;
  static constexpr int kPerLane = 4 / sizeof(S);
  static constexpr bool kWide = (V * sizeof(S)) % 16 == 0;

  static __device__ __forceinline__ void unpack(uint32_t lane, float* out) {
    if constexpr (kPerLane == 1) {
      out[0] = E::to_float(__uint_as_float(lane));
    } else {
      out[0] = E::to_float(static_cast<S>(lane & 0xffffu));
      out[1] = E::to_float(static_cast<S>(lane >> 16));
    }
  }
  static __device__ __forceinline__ uint32_t pack(const float* in) {
    if constexpr (kPerLane == 1) {
      return __float_as_uint(E::from_float(in[0]));
    } else {
      return uint32_t(E::from_float(in[0])) | (uint32_t(E::from_float(in[1])) << 16);
    }
  }

  static __device__ __forceinline__ void load(const void* base, int64_t off, float (&out)[V]) {
    const S* p = static_cast<const S*>(base) + off;
    if constexpr (kWide) {
#pragma unroll
      for (int w = 0; w < V / (4 * kPerLane); ++w) {
        const uint4 r = __ldg(reinterpret_cast<const uint4*>(p) + w);
        float* o = out + w * 4 * kPerLane;
        unpack(r.x, o);
        unpack(r.y, o + kPerLane);
        unpack(r.z, o + 2 * kPerLane);
        unpack(r.w, o + 3 * kPerLane);
      }
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) out[i] = E::to_float(p[i]);
    }
  }

  static __device__ __forceinline__ void store(void* base, int64_t off, const float (&in)[V]) {
    S* p = static_cast<S*>(base) + off;
    if constexpr (kWide) {
#pragma unroll
      for (int w = 0; w < V / (4 * kPerLane); ++w) {
        const float* q = in + w * 4 * kPerLane;
        reinterpret_cast<uint4*>(p)[w] =
            make_uint4(pack(q), pack(q + kPerLane), pack(q + 2 * kPerLane), pack(q + 3 * kPerLane));
      }
    } else {
#pragma unroll
      for (int i = 0; i < V; ++i) p[i] = E::from_float(in[i]);
    }
  }
};

// Sums of K values over the block, returned to every thread. `red` holds 32 * K floats.
template <int K>
__device__ __forceinline__ void block_sum(float (&v)[K], float* red) {
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int o = kWarp / 2; o > 0; o /= 2) v[k] += __shfl_xor_sync(0xffffffffu, v[k], o);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) red[warp * K + k] = v[k];
  __syncthreads();
  const int warps = blockDim.x / kWarp;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float s = 0.0f;
    for (int w = 0; w < warps; ++w) s += red[w * K + k];
    v[k] = s;
  }
  __syncthreads();  // `red` is reused by the next reduction
}

// Row statistics of the cached row x (kVecs vectors per thread; vector j = tid + k * blockDim).
template <int V, int kVecs>
__device__ __forceinline__ void row_stats(const float (&x)[kVecs][V], int nvec, int D, float eps,
                                          float* red, float& mean, float& rstd) {
  float s[1] = {0.0f};
#pragma unroll
  for (int k = 0; k < kVecs; ++k)
    if (threadIdx.x + k * blockDim.x < nvec)
#pragma unroll
      for (int i = 0; i < V; ++i) s[0] += x[k][i];
  block_sum<1>(s, red);
  mean = s[0] / D;
  float q[1] = {0.0f};
#pragma unroll
  for (int k = 0; k < kVecs; ++k)
    if (threadIdx.x + k * blockDim.x < nvec)
#pragma unroll
      for (int i = 0; i < V; ++i) q[0] += (x[k][i] - mean) * (x[k][i] - mean);
  block_sum<1>(q, red);
  rstd = rstd_of(q[0], D, eps);
}

template <class E, int V, bool kResidual>
__global__ void __launch_bounds__(max_row_threads(V), 1) adaln_fwd_kernel(RowParams p) {
  constexpr int kVecs = row_elems(V) / V;
  __shared__ float red[kWarp];
  const int64_t bt = blockIdx.x, mod = bt * p.D;
  const int nvec = p.D / V;
  const RowRange rr = chunk_rows(blockIdx.y, (p.N + p.chunks - 1) / p.chunks, p.N);
  for (int n = rr.begin; n < rr.end; ++n) {
    const int64_t row = bt * p.N + n, base = row * p.D;
    float x[kVecs][V];
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j >= nvec) continue;
      Io<E, V>::load(p.x, base + j * V, x[k]);
      if constexpr (kResidual) {
        float y[V], g[V];
        Io<E, V>::load(p.y, base + j * V, y);
        Io<F32, V>::load(p.gate, mod + j * V, g);
#pragma unroll
        for (int i = 0; i < V; ++i) x[k][i] = round_to<E>(residual(x[k][i], g[i], y[i]));
        Io<E, V>::store(p.x_new, base + j * V, x[k]);
      }
    }
    float mean, rstd;
    row_stats<V, kVecs>(x, nvec, p.D, p.eps, red, mean, rstd);
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j >= nvec) continue;
      float sc[V], sh[V], h[V];
      Io<F32, V>::load(p.scale, mod + j * V, sc);
      Io<F32, V>::load(p.shift, mod + j * V, sh);
#pragma unroll
      for (int i = 0; i < V; ++i) h[i] = modulate((x[k][i] - mean) * rstd, sc[i], sh[i]);
      Io<E, V>::store(p.h, base + j * V, h);
    }
    if (threadIdx.x == 0) {
      p.mean[row] = mean;
      p.rstd[row] = rstd;
    }
  }
}

// Partial sums per chunk: part[(bt * chunks + chunk), k * D + col], k = 0 shift, 1 scale, 2 gate.
template <class E, int V, bool kResidual>
__global__ void __launch_bounds__(max_row_threads(V), 1) adaln_bwd_kernel(RowParams p) {
  constexpr int kVecs = row_elems(V) / V;
  constexpr int kAcc = kResidual ? 3 : 2;
  __shared__ float red[2 * kWarp];
  const int64_t bt = blockIdx.x, mod = bt * p.D;
  const int nvec = p.D / V;
  const RowRange rr = chunk_rows(blockIdx.y, (p.N + p.chunks - 1) / p.chunks, p.N);
  float acc[kAcc][kVecs][V];
#pragma unroll
  for (int a = 0; a < kAcc; ++a)
#pragma unroll
    for (int k = 0; k < kVecs; ++k)
#pragma unroll
      for (int i = 0; i < V; ++i) acc[a][k][i] = 0.0f;
  for (int n = rr.begin; n < rr.end; ++n) {
    const int64_t row = bt * p.N + n, base = row * p.D;
    const float mean = p.mean_in[row], rstd = p.rstd_in[row];
    float xhat[kVecs][V], v[kVecs][V];
    float s[2] = {0.0f, 0.0f};  // sum(v), sum(v * xhat)
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j >= nvec) continue;
      float sc[V];
      Io<E, V>::load(p.x, base + j * V, xhat[k]);
      Io<E, V>::load(p.dh, base + j * V, v[k]);
      Io<F32, V>::load(p.scale, mod + j * V, sc);
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const float dh = v[k][i];
        xhat[k][i] = (xhat[k][i] - mean) * rstd;
        acc[0][k][i] += dh;
        acc[1][k][i] += dh * xhat[k][i];
        v[k][i] = dh * (1.0f + sc[i]);
        s[0] += v[k][i];
        s[1] += v[k][i] * xhat[k][i];
      }
    }
    block_sum<2>(s, red);
    const float mean_v = s[0] / p.D, mean_vx = s[1] / p.D;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j >= nvec) continue;
      float dx[V];
#pragma unroll
      for (int i = 0; i < V; ++i) dx[i] = ln_project(v[k][i], xhat[k][i], rstd, mean_v, mean_vx);
      if constexpr (kResidual) {
        float dxn[V], y[V], g[V], dy[V];
        Io<E, V>::load(p.dxn, base + j * V, dxn);
        Io<E, V>::load(p.y, base + j * V, y);
        Io<F32, V>::load(p.gate, mod + j * V, g);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          dx[i] += dxn[i];
          dy[i] = dx[i] * g[i];
          acc[2][k][i] += dx[i] * y[i];
        }
        Io<E, V>::store(p.dy, base + j * V, dy);
      }
      Io<E, V>::store(p.dx, base + j * V, dx);
    }
  }
  float* part = p.part + (bt * p.chunks + blockIdx.y) * 3 * int64_t(p.D);
#pragma unroll
  for (int k = 0; k < kVecs; ++k) {
    const int j = threadIdx.x + k * blockDim.x;
    if (j >= nvec) continue;
#pragma unroll
    for (int a = 0; a < kAcc; ++a) Io<F32, V>::store(part, a * int64_t(p.D) + j * V, acc[a][k]);
  }
}

template <class E, int V, bool kResidual>
__global__ void __launch_bounds__(max_row_threads(V), 1) adaln_jvp_kernel(RowParams p) {
  constexpr int kVecs = row_elems(V) / V;
  __shared__ float red[2 * kWarp];
  const int64_t bt = blockIdx.x, mod = bt * p.D;
  const int nvec = p.D / V;
  const RowRange rr = chunk_rows(blockIdx.y, (p.N + p.chunks - 1) / p.chunks, p.N);
  for (int n = rr.begin; n < rr.end; ++n) {
    const int64_t base = (bt * p.N + n) * p.D;
    float x[kVecs][V], tx[kVecs][V];
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j >= nvec) continue;
      Io<E, V>::load(p.x, base + j * V, x[k]);
      Io<E, V>::load(p.tx, base + j * V, tx[k]);
      if constexpr (kResidual) {
        float y[V], ty[V], g[V], tg[V];
        Io<E, V>::load(p.y, base + j * V, y);
        Io<E, V>::load(p.ty, base + j * V, ty);
        Io<F32, V>::load(p.gate, mod + j * V, g);
        Io<F32, V>::load(p.tgate, mod + j * V, tg);
#pragma unroll
        for (int i = 0; i < V; ++i) {
          tx[k][i] = residual_tangent(tx[k][i], g[i], ty[i], tg[i], y[i]);
          x[k][i] = round_to<E>(residual(x[k][i], g[i], y[i]));
        }
        Io<E, V>::store(p.txn, base + j * V, tx[k]);
      }
    }
    float mean, rstd;
    row_stats<V, kVecs>(x, nvec, p.D, p.eps, red, mean, rstd);
    float s[2] = {0.0f, 0.0f};  // sum(tx), sum(tx * xhat)
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      if (threadIdx.x + k * blockDim.x >= nvec) continue;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        x[k][i] = (x[k][i] - mean) * rstd;  // now xhat
        s[0] += tx[k][i];
        s[1] += tx[k][i] * x[k][i];
      }
    }
    block_sum<2>(s, red);
    const float mean_t = s[0] / p.D, mean_tx = s[1] / p.D;
#pragma unroll
    for (int k = 0; k < kVecs; ++k) {
      const int j = threadIdx.x + k * blockDim.x;
      if (j >= nvec) continue;
      float sc[V], tsc[V], tsh[V], th[V];
      Io<F32, V>::load(p.scale, mod + j * V, sc);
      Io<F32, V>::load(p.tscale, mod + j * V, tsc);
      Io<F32, V>::load(p.tshift, mod + j * V, tsh);
#pragma unroll
      for (int i = 0; i < V; ++i)
        th[i] = modulate_tangent(ln_project(tx[k][i], x[k][i], rstd, mean_t, mean_tx), x[k][i], sc[i],
                                 tsc[i], tsh[i]);
      Io<E, V>::store(p.th, base + j * V, th);
    }
  }
}

template <class E, int V>
__global__ void __launch_bounds__(256) gated_residual_fwd_kernel(RowParams p) {
  const int j = blockIdx.z * blockDim.x + threadIdx.x;
  if (j >= p.D / V) return;
  const int64_t bt = blockIdx.x;
  const RowRange rr = chunk_rows(blockIdx.y, (p.N + p.chunks - 1) / p.chunks, p.N);
  float g[V];
  Io<F32, V>::load(p.gate, bt * p.D + j * V, g);
#pragma unroll 4
  for (int n = rr.begin; n < rr.end; ++n) {
    const int64_t off = (bt * p.N + n) * p.D + j * V;
    float x[V], y[V];
    Io<E, V>::load(p.x, off, x);
    Io<E, V>::load(p.y, off, y);
#pragma unroll
    for (int i = 0; i < V; ++i) x[i] = residual(x[i], g[i], y[i]);
    Io<E, V>::store(p.x_new, off, x);
  }
}

// dy = grad * gate; part[(bt * chunks + chunk), col] = the chunk's sum of grad * y.
template <class E, int V>
__global__ void __launch_bounds__(256) gated_residual_bwd_kernel(RowParams p) {
  const int j = blockIdx.z * blockDim.x + threadIdx.x;
  if (j >= p.D / V) return;
  const int64_t bt = blockIdx.x;
  const RowRange rr = chunk_rows(blockIdx.y, (p.N + p.chunks - 1) / p.chunks, p.N);
  float g[V], acc[V];
  Io<F32, V>::load(p.gate, bt * p.D + j * V, g);
#pragma unroll
  for (int i = 0; i < V; ++i) acc[i] = 0.0f;
#pragma unroll 4
  for (int n = rr.begin; n < rr.end; ++n) {
    const int64_t off = (bt * p.N + n) * p.D + j * V;
    float grad[V], y[V], dy[V];
    Io<E, V>::load(p.dxn, off, grad);
    Io<E, V>::load(p.y, off, y);
#pragma unroll
    for (int i = 0; i < V; ++i) {
      dy[i] = grad[i] * g[i];
      acc[i] += grad[i] * y[i];
    }
    Io<E, V>::store(p.dy, off, dy);
  }
  Io<F32, V>::store(p.part, (bt * p.chunks + blockIdx.y) * int64_t(p.D) + j * V, acc);
}

__global__ void __launch_bounds__(256) sum_partials_kernel(const float* part, float* sums, int64_t frames,
                                                           int chunks, int64_t width) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= frames * width) return;
  sums[idx] = sum_partials(part, idx / width, chunks, width, idx % width);
}

// ---- launchers -----------------------------------------------------------------------------

bool aligned16(const void* ptr) { return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Wide (16-byte) accesses need every row start aligned: D a multiple of V and aligned bases.
template <class E>
bool can_vectorize(const RowParams& p) {
  constexpr int V = 16 / sizeof(typename E::Storage);
  if (p.D % V != 0) return false;
  const void* ptrs[] = {p.x, p.y, p.dxn, p.dh, p.tx, p.ty, p.gate, p.shift, p.scale, p.tgate, p.tshift,
                        p.tscale, p.x_new, p.h, p.dx, p.dy, p.txn, p.th, p.part};
  for (const void* q : ptrs)
    if (!aligned16(q)) return false;
  return true;
}

int round_up(int v, int m) { return (v + m - 1) / m * m; }

dim3 row_block(int D, int V) {
  const int nvec = D / V, per_thread = row_elems(V) / V;
  return dim3(std::min(max_row_threads(V), std::max(kWarp, round_up((nvec + per_thread - 1) / per_thread, kWarp))));
}

void check_row(const RowParams& p, int dtype) {
  if (p.D > kMaxRowD)
    throw std::invalid_argument("adaln: D=" + std::to_string(p.D) + " > " + std::to_string(kMaxRowD) +
                                " is not supported by the row kernels");
  const bool vector = dtype == kFloat32 ? can_vectorize<F32>(p) : can_vectorize<BF16>(p);
  if (!vector && p.D > kMaxScalarRowD)
    throw std::invalid_argument("adaln: D=" + std::to_string(p.D) + " > " + std::to_string(kMaxScalarRowD) +
                                " needs 16-byte aligned rows (D a multiple of " +
                                std::to_string(dtype == kFloat32 ? 4 : 8) + ")");
}

void sum_chunks(const RowParams& p, int64_t width, cudaStream_t s) {
  const int64_t total = int64_t(p.B) * p.T * width;
  sum_partials_kernel<<<unsigned((total + 255) / 256), 256, 0, s>>>(p.part, p.sums, int64_t(p.B) * p.T, p.chunks, width);
  CK_CUDA_CHECK(cudaGetLastError());
}

// Calls f(E{}, std::integral_constant<int, V>{}) for the token dtype E and the widest safe V.
template <class F>
void dispatch(const RowParams& p, int dtype, F&& f) {
  using W4 = std::integral_constant<int, 4>;
  using W8 = std::integral_constant<int, 8>;
  using W1 = std::integral_constant<int, 1>;
  switch (dtype) {
    case kFloat32:
      return can_vectorize<F32>(p) ? f(F32{}, W4{}) : f(F32{}, W1{});
    case kFloat16:
      return can_vectorize<F16>(p) ? f(F16{}, W8{}) : f(F16{}, W1{});
    case kBFloat16:
      return can_vectorize<BF16>(p) ? f(BF16{}, W8{}) : f(BF16{}, W1{});
    default:
      throw std::invalid_argument("adaln: unsupported dtype code " + std::to_string(dtype));
  }
}

}  // namespace kernels

using namespace kernels;

void adaln_fwd_cuda(const RowParams& p, int dtype, uintptr_t stream) {
  check_row(p, dtype);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch(p, dtype, [&](auto e, auto v) {
    using E = decltype(e);
    constexpr int V = decltype(v)::value;
    dim3 grid(p.B * p.T, p.chunks);
    if (p.residual)
      adaln_fwd_kernel<E, V, true><<<grid, row_block(p.D, V), 0, s>>>(p);
    else
      adaln_fwd_kernel<E, V, false><<<grid, row_block(p.D, V), 0, s>>>(p);
  });
  CK_CUDA_CHECK(cudaGetLastError());
}

void adaln_bwd_cuda(const RowParams& p, int dtype, uintptr_t stream) {
  check_row(p, dtype);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch(p, dtype, [&](auto e, auto v) {
    using E = decltype(e);
    constexpr int V = decltype(v)::value;
    dim3 grid(p.B * p.T, p.chunks);
    if (p.residual)
      adaln_bwd_kernel<E, V, true><<<grid, row_block(p.D, V), 0, s>>>(p);
    else
      adaln_bwd_kernel<E, V, false><<<grid, row_block(p.D, V), 0, s>>>(p);
  });
  CK_CUDA_CHECK(cudaGetLastError());
  sum_chunks(p, 3 * int64_t(p.D), s);
}

void adaln_jvp_cuda(const RowParams& p, int dtype, uintptr_t stream) {
  check_row(p, dtype);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch(p, dtype, [&](auto e, auto v) {
    using E = decltype(e);
    constexpr int V = decltype(v)::value;
    dim3 grid(p.B * p.T, p.chunks);
    if (p.residual)
      adaln_jvp_kernel<E, V, true><<<grid, row_block(p.D, V), 0, s>>>(p);
    else
      adaln_jvp_kernel<E, V, false><<<grid, row_block(p.D, V), 0, s>>>(p);
  });
  CK_CUDA_CHECK(cudaGetLastError());
}

constexpr int kGrThreads = 128;

void gated_residual_fwd_cuda(const RowParams& p, int dtype, uintptr_t stream) {
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch(p, dtype, [&](auto e, auto v) {
    using E = decltype(e);
    constexpr int V = decltype(v)::value;
    dim3 grid(p.B * p.T, p.chunks, (p.D / V + kGrThreads - 1) / kGrThreads);
    gated_residual_fwd_kernel<E, V><<<grid, kGrThreads, 0, s>>>(p);
  });
  CK_CUDA_CHECK(cudaGetLastError());
}

void gated_residual_bwd_cuda(const RowParams& p, int dtype, uintptr_t stream) {
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch(p, dtype, [&](auto e, auto v) {
    using E = decltype(e);
    constexpr int V = decltype(v)::value;
    dim3 grid(p.B * p.T, p.chunks, (p.D / V + kGrThreads - 1) / kGrThreads);
    gated_residual_bwd_kernel<E, V><<<grid, kGrThreads, 0, s>>>(p);
  });
  CK_CUDA_CHECK(cudaGetLastError());
  sum_chunks(p, p.D, s);
}

}  // namespace adaln
}  // namespace ck
