// CUDA runtime queries for the bindings (compiled only when nvcc is present).
#include <cuda_runtime.h>

namespace ck {
int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error: no driver/GPU is a normal state here
    return 0;
  }
  return n;
}
}  // namespace ck
