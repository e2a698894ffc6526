// Module entry of cosmos_kernels._C. Kernel families register themselves (registry.h).
#include <vector>

#include "registry.h"

namespace ck {
static std::vector<RegisterFn>& registrations() {
  static std::vector<RegisterFn> fns;
  return fns;
}
int add_registration(RegisterFn fn) {
  registrations().push_back(fn);
  return 0;
}
#ifdef COSMOS_KERNELS_WITH_CUDA
int cuda_device_count();  // cuda_runtime_info.cu
#endif
}  // namespace ck

PYBIND11_MODULE(_C, m) {
  m.doc() = "cosmos-kernels C++/CUDA kernels (raw-pointer interface; see cosmos_kernels/_ext.py)";
#ifdef COSMOS_KERNELS_WITH_CUDA
  m.def("has_cuda", [] { return true; }, "whether the CUDA kernels were compiled in");
  m.def("cuda_device_count", &ck::cuda_device_count);
#else
  m.def("has_cuda", [] { return false; }, "whether the CUDA kernels were compiled in");
  m.def("cuda_device_count", [] { return 0; });
#endif
  for (auto fn : ck::registrations()) fn(m);
}
