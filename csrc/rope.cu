// CUDA kernels of the 3D RoPE family: one warp per part (a run of rows), the math of rope.cuh.
#include <cuda_runtime.h>

#include "rope.cuh"

namespace ck {
namespace rope {

constexpr int kWarpsPerBlock = 4;

template <int PAIRS>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) parts_kernel(Args a, bool rope_only) {
  const int64_t part = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (part >= a.t[0].parts + a.t[1].parts) return;  // the whole warp leaves together
  run_part<PAIRS>(a, part, threadIdx.x % 32, rope_only);
}

void launch_cuda(const Args& a, bool rope_only, std::uintptr_t stream) {
  const int64_t parts = a.t[0].parts + a.t[1].parts;
  if (parts == 0) return;
  const dim3 block(kWarpsPerBlock * 32);
  const dim3 grid(unsigned((parts + kWarpsPerBlock - 1) / kWarpsPerBlock));
  auto s = reinterpret_cast<cudaStream_t>(stream);
  // pairs per lane: D/2 pairs over 32 lanes (D <= 64: 1, D <= 128: 2, D <= 256: 4)
  const int pairs = (a.half + 31) / 32;
  if (rope_only || pairs <= 1) {
    parts_kernel<1><<<grid, block, 0, s>>>(a, rope_only);
  } else if (pairs <= 2) {
    parts_kernel<2><<<grid, block, 0, s>>>(a, rope_only);
  } else {
    parts_kernel<4><<<grid, block, 0, s>>>(a, rope_only);
  }
  CK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace rope
}  // namespace ck
