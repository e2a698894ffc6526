// Python bindings of the 3D RoPE family, and its host path: the rope.cuh math run on the CPU
// with one lane (how CI tests the CUDA source without a GPU).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <vector>

#include "registry.h"
#include "rope.cuh"

namespace py = pybind11;

namespace ck {
namespace rope {
namespace {

template <typename T>
T* ptr(int64_t p) {
  return reinterpret_cast<T*>(static_cast<std::uintptr_t>(p));
}

// A tensor descriptor from Python (cosmos_kernels/rope.py `_c_tensor`), in this order:
// x, sxb, sxs, sxh, aux, sab, sas, sah, dtype, S, H, rows, w, tw, w_dtype, out, dw_parts, parts
Tensor to_tensor(const std::vector<int64_t>& v) {
  if (v.size() != 18) throw std::invalid_argument("rope: tensor descriptor must have 18 fields");
  Tensor t;
  t.x = View{ptr<const void>(v[0]), v[1], v[2], v[3]};
  t.aux = View{ptr<const void>(v[4]), v[5], v[6], v[7]};
  t.dtype = int(v[8]);
  t.S = v[9];
  t.H = v[10];
  t.rows = v[11];
  t.w = ptr<const void>(v[12]);
  t.tw = ptr<const void>(v[13]);
  t.w_dtype = int(v[14]);
  t.out = ptr<void>(v[15]);
  t.dw_parts = ptr<float>(v[16]);
  t.parts = v[17];
  return t;
}

void run(const Args& a, bool rope_only, int device, std::uintptr_t stream) {
  if (a.half < 1 || a.half > kMaxHalf) throw std::invalid_argument("rope: head dim must be in [2, 256]");
  if (device >= 0) {
#ifdef COSMOS_KERNELS_WITH_CUDA
    launch_cuda(a, rope_only, stream);
    return;
#else
    throw std::runtime_error("rope: cosmos_kernels._C was built without CUDA");
#endif
  }
  const int64_t parts = a.t[0].parts + a.t[1].parts;
  for (int64_t p = 0; p < parts; ++p) run_part<kHostPairs>(a, p, 0, rope_only);
}

void apply(const std::vector<int64_t>& x, int64_t freqs, int64_t sf, int half, int64_t rows_per_part,
           bool transposed, int device, std::uintptr_t stream) {
  Args a{};
  a.t[0] = to_tensor(x);
  a.t[1].parts = 0;
  a.freqs = ptr<const float>(freqs);
  a.sf = sf;
  a.half = half;
  a.rows_per_part = rows_per_part;
  a.mode = kForward;
  a.transposed = transposed;
  if (a.freqs == nullptr) throw std::invalid_argument("rope_apply: freqs is required");
  run(a, true, device, stream);
}

void qk(int mode, const std::vector<int64_t>& q, const std::vector<int64_t>& k, int64_t freqs, int64_t sf,
        int half, double eps, int64_t rows_per_part, int device, std::uintptr_t stream) {
  if (mode != kForward && mode != kBackward && mode != kJvp) throw std::invalid_argument("qk_norm_rope: bad mode");
  Args a{};
  a.t[0] = to_tensor(q);
  a.t[1] = to_tensor(k);
  a.freqs = ptr<const float>(freqs);
  a.sf = sf;
  a.half = half;
  a.eps = float(eps);
  a.rows_per_part = rows_per_part;
  a.mode = mode;
  a.transposed = false;
  run(a, false, device, stream);
}

void register_rope(py::module_& m) {
  m.def("rope_apply", &apply, "apply_rope3d (or its transpose) on a (B, S, H, D) view",
        py::arg("x"), py::arg("freqs"), py::arg("sf"), py::arg("half"), py::arg("rows_per_part"),
        py::arg("transposed"), py::arg("device"), py::arg("stream"));
  m.def("rope_qk_norm", &qk, "qk_norm_rope forward (mode 0), backward (1) or JVP (2) for q and k",
        py::arg("mode"), py::arg("q"), py::arg("k"), py::arg("freqs"), py::arg("sf"), py::arg("half"),
        py::arg("eps"), py::arg("rows_per_part"), py::arg("device"), py::arg("stream"));
}

}  // namespace

CK_REGISTER(register_rope);

}  // namespace rope
}  // namespace ck
