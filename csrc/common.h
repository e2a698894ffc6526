// Shared by every kernel family: host/device qualifiers, dtype codes and the 16-bit float
// conversions that compile both for the host build (g++) and for nvcc. The per-row math of each
// kernel family is written once with CK_HD so the CPU build of _C runs (and tests) the same source.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define CK_HD __host__ __device__ __forceinline__
#else
#define CK_HD inline
#endif

namespace ck {

// Matches cosmos_kernels/_ext.py DTYPE_CODES.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

CK_HD float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
CK_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

// bfloat16 stored as uint16_t; round to nearest even, NaN kept NaN.
CK_HD float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }
CK_HD uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// IEEE half stored as uint16_t (software path for the host; nvcc uses the intrinsics).
CK_HD float half_to_float(uint16_t h) {
#ifdef __CUDA_ARCH__
  __half_raw r;
  r.x = h;
  return __half2float(__half(r));
#else
  uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return bits_to_float(sign);
    float f = float(man) * 5.9604644775390625e-08f;  // 2^-24
    return sign ? -f : f;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
#endif
}
CK_HD uint16_t float_to_half(float f) {
#ifdef __CUDA_ARCH__
  __half_raw r = __half_raw(__float2half_rn(f));
  return r.x;
#else
  uint32_t u = float_to_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u);       // NaN
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);      // overflow -> inf (rounding incl.)
  if (a < 0x38800000u) {                                        // subnormal or zero in half
    float m = bits_to_float(a) * 16777216.0f;                   // scale by 2^24
    uint32_t q = uint32_t(m);
    float rem = m - float(q);
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) q++;
    return uint16_t(sign | q);
  }
  uint32_t exp = (a >> 23) - 112u, man = a & 0x7fffffu;
  uint32_t h = (exp << 10) | (man >> 13);
  uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
  return uint16_t(sign | h);
#endif
}

// Loads/stores of one element of a tensor whose dtype is known at run time.
CK_HD float load_as_float(const void* p, int64_t i, int dtype) {
  if (dtype == kFloat32) return static_cast<const float*>(p)[i];
  uint16_t b = static_cast<const uint16_t*>(p)[i];
  return dtype == kBFloat16 ? bf16_to_float(b) : half_to_float(b);
}
CK_HD void store_from_float(void* p, int64_t i, float v, int dtype) {
  if (dtype == kFloat32) {
    static_cast<float*>(p)[i] = v;
  } else {
    static_cast<uint16_t*>(p)[i] = dtype == kBFloat16 ? float_to_bf16(v) : float_to_half(v);
  }
}

}  // namespace ck

#ifdef __CUDACC__
#include <stdexcept>
#include <string>
// Launch-error check used by every .cu launcher: a bad launch becomes a Python RuntimeError.
#define CK_CUDA_CHECK(expr)                                                              \
  do {                                                                                   \
    cudaError_t ck_err_ = (expr);                                                        \
    if (ck_err_ != cudaSuccess)                                                          \
      throw std::runtime_error(std::string("cosmos_kernels CUDA error: ") +              \
                               cudaGetErrorString(ck_err_) + " at " + __FILE__ + ":" +   \
                               std::to_string(__LINE__));                                \
  } while (0)
#endif
