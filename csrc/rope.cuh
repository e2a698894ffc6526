// 3D RoPE family: RoPE and fused per-head RMSNorm + RoPE on (B, S, H, D) tensors.
//
// The math is written once here as CK_HD functions over "parts" (runs of rows). The CUDA kernels
// (rope.cu) give each warp one part, its 32 lanes striding over the D/2 RoPE pairs of a row and
// reducing with warp shuffles; the host build (rope_host.cpp) runs the very same functions with
// one lane, so the CPU tests of `_C` execute this source.
//
// Rows: row = (b * S + s) * H + h over a (B, S, H, D) view with element strides (sb, ss, sh) and a
// contiguous last dim. Outputs are contiguous (row * D). RoPE pairs element i with i + D/2 (non-
// interleaved): fwd [x1 c1 - x2 s1, x2 c2 + x1 s2], transposed [x1 c1 + x2 s2, x2 c2 - x1 s1], with
// (c, s) the cos/sin of the fp32 angle table row freqs[s] (S, D). All math in fp32.
#pragma once
#include <cstdint>

#include "common.h"

namespace ck {
namespace rope {

#ifdef __CUDA_ARCH__
constexpr int kLanes = 32;  // one warp per part on the device
#else
constexpr int kLanes = 1;   // one "lane" on the host
#endif
constexpr int kMaxHalf = 128;               // D <= 256
constexpr int kHostPairs = kMaxHalf;        // pairs per lane on the host (one lane does all)

enum Mode : int { kForward = 0, kBackward = 1, kJvp = 2 };

// Sum over the lanes of a part (all lanes get the total).
CK_HD float lane_sum(float v) {
#ifdef __CUDA_ARCH__
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
#endif
  return v;
}

CK_HD float rsqrt_(float v) {
#ifdef __CUDA_ARCH__
  return rsqrtf(v);
#else
  return 1.0f / sqrtf(v);
#endif
}

// sin/cos of an angle up to ~1e4 rad (positions x frequencies): reduce to [-pi, pi] first with a
// two-constant Cody-Waite step, because the device build uses --use_fast_math, whose __sinf/__cosf
// are accurate only near zero.
CK_HD void sincos_reduced(float a, float* s, float* c) {
  const float k = rintf(a * 0.15915494309189535f);        // a / (2 pi)
  float r = fmaf(-k, 6.2831854820251465f, a);             // 2 pi rounded to fp32
  r = fmaf(-k, -1.7484555314695172e-7f, r);               // 2 pi - fp32(2 pi)
  *s = sinf(r);
  *c = cosf(r);
}

CK_HD void rotate(float& v1, float& v2, float a1, float a2, bool transposed) {
  float s1, c1, s2, c2;
  sincos_reduced(a1, &s1, &c1);
  sincos_reduced(a2, &s2, &c2);
  const float x1 = v1, x2 = v2;
  if (transposed) {
    v1 = x1 * c1 + x2 * s2;
    v2 = x2 * c2 - x1 * s1;
  } else {
    v1 = x1 * c1 - x2 * s1;
    v2 = x2 * c2 + x1 * s2;
  }
}

// A (B, S, H, D) input view.
struct View {
  const void* ptr;
  int64_t sb, ss, sh;
  CK_HD int64_t offset(int64_t row, int64_t S, int64_t H) const {
    const int64_t tok = row / H, h = row - tok * H;
    const int64_t b = tok / S, s = tok - b * S;
    return b * sb + s * ss + h * sh;
  }
};

// One tensor (q or k, or x for apply_rope3d) of a launch. `aux` is the gradient (backward) or the
// tangent (JVP) of x, with x's dtype; `w`/`tw` the norm weight (D,) and its tangent (may be null).
struct Tensor {
  View x, aux;
  int dtype;            // of x, aux and out
  int64_t S, H, rows;   // rows = B * S * H
  const void* w;
  const void* tw;
  int w_dtype;
  void* out;            // contiguous (B, S, H, D)
  float* dw_parts;      // backward: (parts, D) fp32 partial weight gradients
  int64_t parts;
};

struct Args {
  Tensor t[2];          // q, k (apply_rope3d: t[0] only, t[1].parts == 0)
  const float* freqs;   // (S, D) fp32 angles, row stride sf; null: no RoPE (norm only)
  int64_t sf;
  int half;             // D / 2
  float eps;
  int64_t rows_per_part;
  int mode;
  bool transposed;      // apply_rope3d only: the backward rotation
};

CK_HD const float* angle_row(const Args& a, const Tensor& t, int64_t row) {
  if (a.freqs == nullptr) return nullptr;
  const int64_t s = (row / t.H) % t.S;
  return a.freqs + s * a.sf;
}

// apply_rope3d on one row: out = rope(x) (or its transpose).
CK_HD void rope_row(const Args& a, const Tensor& t, int64_t row, int lane) {
  const int half = a.half;
  const int64_t xo = t.x.offset(row, t.S, t.H), oo = row * 2 * half;
  const float* ang = angle_row(a, t, row);
  for (int i = lane; i < half; i += kLanes) {
    float v1 = load_as_float(t.x.ptr, xo + i, t.dtype), v2 = load_as_float(t.x.ptr, xo + half + i, t.dtype);
    rotate(v1, v2, ang[i], ang[half + i], a.transposed);
    store_from_float(t.out, oo + i, v1, t.dtype);
    store_from_float(t.out, oo + half + i, v2, t.dtype);
  }
}

// RMSNorm (+ RoPE) forward of one row: out = rope(x * rsqrt(mean(x^2) + eps) * w).
template <int PAIRS>
CK_HD void norm_rope_row(const Args& a, const Tensor& t, int64_t row, int lane) {
  const int half = a.half;
  const int64_t xo = t.x.offset(row, t.S, t.H), oo = row * 2 * half;
  float x1[PAIRS], x2[PAIRS], ss = 0.f;
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    const int i = lane + j * kLanes;
    x1[j] = i < half ? load_as_float(t.x.ptr, xo + i, t.dtype) : 0.f;
    x2[j] = i < half ? load_as_float(t.x.ptr, xo + half + i, t.dtype) : 0.f;
    ss += x1[j] * x1[j] + x2[j] * x2[j];
  }
  const float r = rsqrt_(lane_sum(ss) / float(2 * half) + a.eps);
  const float* ang = angle_row(a, t, row);
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    const int i = lane + j * kLanes;
    if (i >= half) break;
    float v1 = x1[j] * r * load_as_float(t.w, i, t.w_dtype);
    float v2 = x2[j] * r * load_as_float(t.w, half + i, t.w_dtype);
    if (ang) rotate(v1, v2, ang[i], ang[half + i], false);
    store_from_float(t.out, oo + i, v1, t.dtype);
    store_from_float(t.out, oo + half + i, v2, t.dtype);
  }
}

// Backward of one row. With n = x r, dy = rope^T(grad), dn = dy w:
//   dx = r (dn - n mean(dn n)),   dw += dy n  (accumulated in dw1/dw2 over the part's rows).
template <int PAIRS>
CK_HD void norm_rope_bwd_row(const Args& a, const Tensor& t, int64_t row, int lane, float* dw1, float* dw2) {
  const int half = a.half;
  const int64_t xo = t.x.offset(row, t.S, t.H), go = t.aux.offset(row, t.S, t.H), oo = row * 2 * half;
  const float* ang = angle_row(a, t, row);
  float n1[PAIRS], n2[PAIRS], dn1[PAIRS], dn2[PAIRS], ss = 0.f;
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    const int i = lane + j * kLanes;
    n1[j] = i < half ? load_as_float(t.x.ptr, xo + i, t.dtype) : 0.f;
    n2[j] = i < half ? load_as_float(t.x.ptr, xo + half + i, t.dtype) : 0.f;
    ss += n1[j] * n1[j] + n2[j] * n2[j];
  }
  const float r = rsqrt_(lane_sum(ss) / float(2 * half) + a.eps);
  float dot = 0.f;
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    const int i = lane + j * kLanes;
    n1[j] *= r;
    n2[j] *= r;
    if (i >= half) {
      dn1[j] = dn2[j] = 0.f;
      continue;
    }
    float g1 = load_as_float(t.aux.ptr, go + i, t.dtype), g2 = load_as_float(t.aux.ptr, go + half + i, t.dtype);
    if (ang) rotate(g1, g2, ang[i], ang[half + i], true);
    dw1[j] += g1 * n1[j];
    dw2[j] += g2 * n2[j];
    dn1[j] = g1 * load_as_float(t.w, i, t.w_dtype);
    dn2[j] = g2 * load_as_float(t.w, half + i, t.w_dtype);
    dot += dn1[j] * n1[j] + dn2[j] * n2[j];
  }
  const float m = lane_sum(dot) / float(2 * half);
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    const int i = lane + j * kLanes;
    if (i >= half) break;
    store_from_float(t.out, oo + i, r * (dn1[j] - n1[j] * m), t.dtype);
    store_from_float(t.out, oo + half + i, r * (dn2[j] - n2[j] * m), t.dtype);
  }
}

// Forward-mode tangent of one row: rope(w r (tx - n mean(n tx)) + tw n).
template <int PAIRS>
CK_HD void norm_rope_jvp_row(const Args& a, const Tensor& t, int64_t row, int lane) {
  const int half = a.half;
  const int64_t xo = t.x.offset(row, t.S, t.H), to = t.aux.offset(row, t.S, t.H), oo = row * 2 * half;
  float n1[PAIRS], n2[PAIRS], t1[PAIRS], t2[PAIRS], ss = 0.f;
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    const int i = lane + j * kLanes;
    const bool ok = i < half;
    n1[j] = ok ? load_as_float(t.x.ptr, xo + i, t.dtype) : 0.f;
    n2[j] = ok ? load_as_float(t.x.ptr, xo + half + i, t.dtype) : 0.f;
    t1[j] = ok ? load_as_float(t.aux.ptr, to + i, t.dtype) : 0.f;
    t2[j] = ok ? load_as_float(t.aux.ptr, to + half + i, t.dtype) : 0.f;
    ss += n1[j] * n1[j] + n2[j] * n2[j];
  }
  const float r = rsqrt_(lane_sum(ss) / float(2 * half) + a.eps);
  float dot = 0.f;
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    n1[j] *= r;
    n2[j] *= r;
    dot += n1[j] * t1[j] + n2[j] * t2[j];
  }
  const float m = lane_sum(dot) / float(2 * half);
  const float* ang = angle_row(a, t, row);
#pragma unroll
  for (int j = 0; j < PAIRS; ++j) {
    const int i = lane + j * kLanes;
    if (i >= half) break;
    const float tw1 = t.tw ? load_as_float(t.tw, i, t.w_dtype) : 0.f;
    const float tw2 = t.tw ? load_as_float(t.tw, half + i, t.w_dtype) : 0.f;
    float v1 = load_as_float(t.w, i, t.w_dtype) * r * (t1[j] - n1[j] * m) + tw1 * n1[j];
    float v2 = load_as_float(t.w, half + i, t.w_dtype) * r * (t2[j] - n2[j] * m) + tw2 * n2[j];
    if (ang) rotate(v1, v2, ang[i], ang[half + i], false);
    store_from_float(t.out, oo + i, v1, t.dtype);
    store_from_float(t.out, oo + half + i, v2, t.dtype);
  }
}

// One part: rows [p * rows_per_part, (p + 1) * rows_per_part) of q (parts [0, q.parts)) or of k.
// `rope_only` selects apply_rope3d (no norm).
template <int PAIRS>
CK_HD void run_part(const Args& a, int64_t part, int lane, bool rope_only) {
  const bool is_q = part < a.t[0].parts;
  const Tensor& t = is_q ? a.t[0] : a.t[1];
  const int64_t p = is_q ? part : part - a.t[0].parts;
  const int64_t begin = p * a.rows_per_part;
  const int64_t end = begin + a.rows_per_part < t.rows ? begin + a.rows_per_part : t.rows;
  if (rope_only) {
    for (int64_t row = begin; row < end; ++row) rope_row(a, t, row, lane);
  } else if (a.mode == kForward) {
    for (int64_t row = begin; row < end; ++row) norm_rope_row<PAIRS>(a, t, row, lane);
  } else if (a.mode == kJvp) {
    for (int64_t row = begin; row < end; ++row) norm_rope_jvp_row<PAIRS>(a, t, row, lane);
  } else {
    float dw1[PAIRS], dw2[PAIRS];
#pragma unroll
    for (int j = 0; j < PAIRS; ++j) dw1[j] = dw2[j] = 0.f;
    for (int64_t row = begin; row < end; ++row) norm_rope_bwd_row<PAIRS>(a, t, row, lane, dw1, dw2);
    float* dst = t.dw_parts + p * 2 * a.half;
#pragma unroll
    for (int j = 0; j < PAIRS; ++j) {
      const int i = lane + j * kLanes;
      if (i >= a.half) break;
      dst[i] = dw1[j];
      dst[a.half + i] = dw2[j];
    }
  }
}

#ifdef COSMOS_KERNELS_WITH_CUDA
// rope.cu: launch run_part over all parts of `a` on the device (one warp per part).
void launch_cuda(const Args& a, bool rope_only, std::uintptr_t stream);
#endif

}  // namespace rope
}  // namespace ck
