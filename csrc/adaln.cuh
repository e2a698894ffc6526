// AdaLN family: the per-element and per-row math, written once (CK_HD) for the CUDA kernels
// (adaln.cu) and the host build (adaln_host.cpp), so CI runs this source on the CPU.
//
//   gated residual   x_new = x + gate * y
//   LayerNorm        xhat = (x - mean) * rstd,  rstd = 1 / sqrt(mean((x - mean)^2) + eps)
//   modulation       h = xhat * (1 + scale) + shift
//   LN Jacobian      P(v) = rstd * (v - mean(v) - xhat * mean(v * xhat)); it is symmetric, so the
//                    backward (v = dh * (1 + scale)) and the JVP (v = tangent of x) share it.
//
// Tokens are (B, L, D) contiguous with L = T * N (t-major); the modulation rows shift/scale/gate
// arrive as contiguous fp32 (B, T, D) (the Python side casts them: they are small). Statistics
// and all arithmetic are fp32; tokens are stored as fp32, fp16 or bf16 (the Elem types below).
#pragma once
#include "common.h"

namespace ck {
namespace adaln {

// Element types of the token tensors: storage type and conversions to/from fp32.
struct F32 {
  using Storage = float;
  static constexpr int kCode = kFloat32;
  static CK_HD float to_float(float v) { return v; }
  static CK_HD float from_float(float v) { return v; }
};
struct F16 {
  using Storage = uint16_t;
  static constexpr int kCode = kFloat16;
  static CK_HD float to_float(uint16_t v) { return half_to_float(v); }
  static CK_HD uint16_t from_float(float v) { return float_to_half(v); }
};
struct BF16 {
  using Storage = uint16_t;
  static constexpr int kCode = kBFloat16;
  static CK_HD float to_float(uint16_t v) { return bf16_to_float(v); }
  static CK_HD uint16_t from_float(float v) { return float_to_bf16(v); }
};

// The value a storage type actually holds: the fused kernel normalizes x_new as stored, exactly
// as the unfused gated_residual -> adaln_modulate pair would.
template <class E>
CK_HD float round_to(float v) {
  return E::to_float(E::from_float(v));
}

CK_HD float residual(float x, float gate, float y) { return x + gate * y; }
CK_HD float residual_tangent(float tx, float gate, float ty, float tgate, float y) {
  return tx + gate * ty + tgate * y;
}

CK_HD float rstd_of(float sum_sq_dev, int D, float eps) {
#ifdef __CUDA_ARCH__
  return rsqrtf(sum_sq_dev / D + eps);
#else
  return 1.0f / std::sqrt(sum_sq_dev / D + eps);
#endif
}

CK_HD float modulate(float xhat, float scale, float shift) { return xhat * (1.0f + scale) + shift; }

// P(v) for one element, given the row means mean(v) and mean(v * xhat).
CK_HD float ln_project(float v, float xhat, float rstd, float mean_v, float mean_vx) {
  return rstd * (v - mean_v - xhat * mean_vx);
}

// Tangent of h = xhat * (1 + scale) + shift, given the tangent of xhat (= P(tx)).
CK_HD float modulate_tangent(float txhat, float xhat, float scale, float tscale, float tshift) {
  return txhat * (1.0f + scale) + xhat * tscale + tshift;
}

// Chunking of a frame's N rows: chunk c covers rows [c * rows, min((c + 1) * rows, N)).
struct RowRange {
  int begin, end;
};
CK_HD RowRange chunk_rows(int chunk, int rows_per_chunk, int N) {
  int b = chunk * rows_per_chunk;
  int e = b + rows_per_chunk;
  return {b, e < N ? e : N};
}

// The deterministic second stage of every per-frame reduction: element i of the sum over chunks
// of part[(frame, chunk, i)], chunk by chunk in order. part is (frames, chunks, width) fp32.
CK_HD float sum_partials(const float* part, int64_t frame, int chunks, int64_t width, int64_t i) {
  const float* p = part + frame * chunks * width + i;
  float s = 0.0f;
  for (int c = 0; c < chunks; ++c) s += p[int64_t(c) * width];
  return s;
}

// Everything one launch needs. Token pointers are (B, L, D) contiguous in the token dtype,
// modulation pointers (B, T, D) contiguous fp32; a pointer an op does not use is null.
struct RowParams {
  const void* x = nullptr;    // tokens (x, or x_new in the backward)
  const void* y = nullptr;    // residual branch output
  const void* dxn = nullptr;  // gradient of x_new (the residual output), or of gated_residual's output
  const void* dh = nullptr;   // gradient of h
  const void* tx = nullptr;   // tangents of x and y
  const void* ty = nullptr;
  const float* gate = nullptr;
  const float* shift = nullptr;
  const float* scale = nullptr;
  const float* tgate = nullptr;
  const float* tshift = nullptr;
  const float* tscale = nullptr;
  const float* mean_in = nullptr;  // saved statistics, (B, L) fp32
  const float* rstd_in = nullptr;
  void* x_new = nullptr;  // outputs in the token dtype (x_new: also gated_residual's output)
  void* h = nullptr;
  void* dx = nullptr;
  void* dy = nullptr;
  void* txn = nullptr;
  void* th = nullptr;
  float* mean = nullptr;  // statistics out, (B, L) fp32
  float* rstd = nullptr;
  float* part = nullptr;  // per-chunk partial sums, (B*T, chunks, width) fp32
  float* sums = nullptr;  // their sum over chunks, (B*T, width) fp32
  int B = 0, T = 0, N = 0, D = 0;
  int chunks = 1;  // row chunks per frame (grid axis; the backward's partial sums)
  float eps = 1e-6f;
  bool residual = false;  // gated_residual_adaln (true) or adaln_modulate (false)
};

// The largest D the row kernels take (the whole row lives in registers on the GPU): with
// 16-byte aligned rows (D a multiple of 8 for 16-bit tokens, of 4 for fp32), and otherwise.
constexpr int kMaxRowD = 8192;
constexpr int kMaxScalarRowD = 4096;

// CUDA launchers (adaln.cu), on `stream` (a cudaStream_t as an integer). `dtype` is the token
// dtype code. Each raises std::invalid_argument on arguments the kernels cannot take.
void gated_residual_fwd_cuda(const RowParams& p, int dtype, uintptr_t stream);
void gated_residual_bwd_cuda(const RowParams& p, int dtype, uintptr_t stream);  // dy; sums = dgate
void adaln_fwd_cuda(const RowParams& p, int dtype, uintptr_t stream);
void adaln_bwd_cuda(const RowParams& p, int dtype, uintptr_t stream);  // sums = (dshift, dscale, dgate)
void adaln_jvp_cuda(const RowParams& p, int dtype, uintptr_t stream);

}  // namespace adaln
}  // namespace ck
