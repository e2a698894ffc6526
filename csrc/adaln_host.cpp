// AdaLN family, host build: CPU loops over the same per-row math as the CUDA kernels
// (adaln.cuh), so the `cuda` backend on CPU tensors tests that source; and the Python bindings
// of both (the CUDA launchers only when built with nvcc).
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "adaln.cuh"
#include "registry.h"

namespace py = pybind11;

namespace ck {
namespace adaln {
namespace {

template <class E>
float ld(const void* p, int64_t i) {
  return E::to_float(static_cast<const typename E::Storage*>(p)[i]);
}
template <class E>
void st(void* p, int64_t i, float v) {
  static_cast<typename E::Storage*>(p)[i] = E::from_float(v);
}

template <class E>
void gated_residual_fwd_host(const RowParams& p) {
  const int64_t D = p.D;
  for (int64_t bt = 0; bt < int64_t(p.B) * p.T; ++bt) {
    const float* g = p.gate + bt * D;
    for (int64_t n = 0; n < p.N; ++n) {
      const int64_t base = (bt * p.N + n) * D;
      for (int64_t i = 0; i < D; ++i)
        st<E>(p.x_new, base + i, residual(ld<E>(p.x, base + i), g[i], ld<E>(p.y, base + i)));
    }
  }
}

// dy = grad * gate; per-chunk partials of grad * y, then their sum in chunk order.
template <class E>
void gated_residual_bwd_host(const RowParams& p) {
  const int64_t D = p.D, frames = int64_t(p.B) * p.T;
  const int rows = (p.N + p.chunks - 1) / p.chunks;
  for (int64_t bt = 0; bt < frames; ++bt) {
    const float* g = p.gate + bt * D;
    for (int c = 0; c < p.chunks; ++c) {
      float* acc = p.part + (bt * p.chunks + c) * D;
      for (int64_t i = 0; i < D; ++i) acc[i] = 0.0f;
      const RowRange rr = chunk_rows(c, rows, p.N);
      for (int n = rr.begin; n < rr.end; ++n) {
        const int64_t base = (bt * p.N + n) * D;
        for (int64_t i = 0; i < D; ++i) {
          const float grad = ld<E>(p.dxn, base + i);
          st<E>(p.dy, base + i, grad * g[i]);
          acc[i] += grad * ld<E>(p.y, base + i);
        }
      }
    }
    for (int64_t i = 0; i < D; ++i) p.sums[bt * D + i] = sum_partials(p.part, bt, p.chunks, D, i);
  }
}

template <class E>
void adaln_fwd_host(const RowParams& p) {
  const int64_t D = p.D;
  std::vector<float> x(D);
  for (int64_t bt = 0; bt < int64_t(p.B) * p.T; ++bt) {
    const int64_t mod = bt * D;
    for (int64_t n = 0; n < p.N; ++n) {
      const int64_t row = bt * p.N + n, base = row * D;
      float sum = 0.0f;
      for (int64_t i = 0; i < D; ++i) {
        float v = ld<E>(p.x, base + i);
        if (p.residual) {
          v = round_to<E>(residual(v, p.gate[mod + i], ld<E>(p.y, base + i)));
          st<E>(p.x_new, base + i, v);
        }
        x[i] = v;
        sum += v;
      }
      const float mean = sum / D;
      float sq = 0.0f;
      for (int64_t i = 0; i < D; ++i) sq += (x[i] - mean) * (x[i] - mean);
      const float rstd = rstd_of(sq, p.D, p.eps);
      for (int64_t i = 0; i < D; ++i)
        st<E>(p.h, base + i, modulate((x[i] - mean) * rstd, p.scale[mod + i], p.shift[mod + i]));
      p.mean[row] = mean;
      p.rstd[row] = rstd;
    }
  }
}

// dx (and dy) per row; partials (shift, scale, gate) per chunk, width 3 * D; sums over chunks.
template <class E>
void adaln_bwd_host(const RowParams& p) {
  const int64_t D = p.D, W = 3 * D, frames = int64_t(p.B) * p.T;
  const int rows = (p.N + p.chunks - 1) / p.chunks;
  std::vector<float> xhat(D), v(D);
  for (int64_t bt = 0; bt < frames; ++bt) {
    const int64_t mod = bt * D;
    for (int c = 0; c < p.chunks; ++c) {
      float* acc = p.part + (bt * p.chunks + c) * W;
      for (int64_t i = 0; i < W; ++i) acc[i] = 0.0f;
      const RowRange rr = chunk_rows(c, rows, p.N);
      for (int n = rr.begin; n < rr.end; ++n) {
        const int64_t row = bt * p.N + n, base = row * D;
        const float mean = p.mean_in[row], rstd = p.rstd_in[row];
        float sum_v = 0.0f, sum_vx = 0.0f;
        for (int64_t i = 0; i < D; ++i) {
          const float dh = ld<E>(p.dh, base + i);
          xhat[i] = (ld<E>(p.x, base + i) - mean) * rstd;
          v[i] = dh * (1.0f + p.scale[mod + i]);
          sum_v += v[i];
          sum_vx += v[i] * xhat[i];
          acc[i] += dh;
          acc[D + i] += dh * xhat[i];
        }
        const float mean_v = sum_v / D, mean_vx = sum_vx / D;
        for (int64_t i = 0; i < D; ++i) {
          float dx = ln_project(v[i], xhat[i], rstd, mean_v, mean_vx);
          if (p.residual) {
            dx += ld<E>(p.dxn, base + i);
            st<E>(p.dy, base + i, dx * p.gate[mod + i]);
            acc[2 * D + i] += dx * ld<E>(p.y, base + i);
          }
          st<E>(p.dx, base + i, dx);
        }
      }
    }
    for (int64_t i = 0; i < W; ++i) p.sums[bt * W + i] = sum_partials(p.part, bt, p.chunks, W, i);
  }
}

template <class E>
void adaln_jvp_host(const RowParams& p) {
  const int64_t D = p.D;
  std::vector<float> x(D), tx(D);
  for (int64_t bt = 0; bt < int64_t(p.B) * p.T; ++bt) {
    const int64_t mod = bt * D;
    for (int64_t n = 0; n < p.N; ++n) {
      const int64_t base = (bt * p.N + n) * D;
      float sum = 0.0f;
      for (int64_t i = 0; i < D; ++i) {
        x[i] = ld<E>(p.x, base + i);
        tx[i] = ld<E>(p.tx, base + i);
        if (p.residual) {
          const float y = ld<E>(p.y, base + i), g = p.gate[mod + i];
          tx[i] = residual_tangent(tx[i], g, ld<E>(p.ty, base + i), p.tgate[mod + i], y);
          x[i] = round_to<E>(residual(x[i], g, y));
          st<E>(p.txn, base + i, tx[i]);
        }
        sum += x[i];
      }
      const float mean = sum / D;
      float sq = 0.0f;
      for (int64_t i = 0; i < D; ++i) sq += (x[i] - mean) * (x[i] - mean);
      const float rstd = rstd_of(sq, p.D, p.eps);
      float sum_t = 0.0f, sum_tx = 0.0f;
      for (int64_t i = 0; i < D; ++i) {
        x[i] = (x[i] - mean) * rstd;  // now xhat
        sum_t += tx[i];
        sum_tx += tx[i] * x[i];
      }
      const float mean_t = sum_t / D, mean_tx = sum_tx / D;
      for (int64_t i = 0; i < D; ++i) {
        const float txhat = ln_project(tx[i], x[i], rstd, mean_t, mean_tx);
        st<E>(p.th, base + i,
              modulate_tangent(txhat, x[i], p.scale[mod + i], p.tscale[mod + i], p.tshift[mod + i]));
      }
    }
  }
}

// ---- bindings ------------------------------------------------------------------------------

RowParams parse(const py::dict& d) {
  RowParams p;
  auto ptr = [&](const char* key) -> void* {
    return d.contains(key) ? reinterpret_cast<void*>(d[key].cast<uintptr_t>()) : nullptr;
  };
  auto fptr = [&](const char* key) { return static_cast<float*>(ptr(key)); };
  auto num = [&](const char* key, int fallback) { return d.contains(key) ? d[key].cast<int>() : fallback; };
  p.x = ptr("x"), p.y = ptr("y"), p.dxn = ptr("dxn"), p.dh = ptr("dh"), p.tx = ptr("tx"), p.ty = ptr("ty");
  p.gate = fptr("gate"), p.shift = fptr("shift"), p.scale = fptr("scale");
  p.tgate = fptr("tgate"), p.tshift = fptr("tshift"), p.tscale = fptr("tscale");
  p.mean_in = fptr("mean_in"), p.rstd_in = fptr("rstd_in");
  p.x_new = ptr("x_new"), p.h = ptr("h"), p.dx = ptr("dx"), p.dy = ptr("dy"), p.txn = ptr("txn"), p.th = ptr("th");
  p.mean = fptr("mean"), p.rstd = fptr("rstd"), p.part = fptr("part"), p.sums = fptr("sums");
  p.B = num("B", 0), p.T = num("T", 0), p.N = num("N", 0), p.D = num("D", 0), p.chunks = num("chunks", 1);
  p.eps = d.contains("eps") ? d["eps"].cast<float>() : 1e-6f;
  p.residual = d.contains("residual") && d["residual"].cast<bool>();
  if (p.B < 1 || p.T < 1 || p.N < 1 || p.D < 1 || p.chunks < 1)
    throw std::invalid_argument("adaln: B, T, N, D and chunks must be >= 1");
  return p;
}

template <template <class> class Fn>
void by_dtype(const RowParams& p, int dtype) {
  switch (dtype) {
    case kFloat32: return Fn<F32>::run(p);
    case kFloat16: return Fn<F16>::run(p);
    case kBFloat16: return Fn<BF16>::run(p);
    default: throw std::invalid_argument("adaln: unsupported dtype code " + std::to_string(dtype));
  }
}

// Function templates wrapped as class templates so by_dtype can pick the element type.
#define CK_ADALN_HOST(name)                                 \
  template <class E>                                         \
  struct name##_t {                                          \
    static void run(const RowParams& p) { name<E>(p); }      \
  };
CK_ADALN_HOST(gated_residual_fwd_host)
CK_ADALN_HOST(gated_residual_bwd_host)
CK_ADALN_HOST(adaln_fwd_host)
CK_ADALN_HOST(adaln_bwd_host)
CK_ADALN_HOST(adaln_jvp_host)
#undef CK_ADALN_HOST

void check_row_d(const RowParams& p) {
  if (p.D > kMaxRowD)
    throw std::invalid_argument("adaln: D=" + std::to_string(p.D) + " > " + std::to_string(kMaxRowD) +
                                " is not supported by the row kernels");
}

void register_adaln(py::module_& m) {
  const char* doc = "AdaLN family kernels; args: dict of raw pointers and sizes (see csrc/adaln.cuh RowParams), dtype code";
  m.def("adaln_gated_residual_fwd_host", [](py::dict d, int dtype) { by_dtype<gated_residual_fwd_host_t>(parse(d), dtype); }, doc);
  m.def("adaln_gated_residual_bwd_host", [](py::dict d, int dtype) { by_dtype<gated_residual_bwd_host_t>(parse(d), dtype); }, doc);
  m.def("adaln_fwd_host", [](py::dict d, int dtype) { auto p = parse(d); check_row_d(p); by_dtype<adaln_fwd_host_t>(p, dtype); }, doc);
  m.def("adaln_bwd_host", [](py::dict d, int dtype) { auto p = parse(d); check_row_d(p); by_dtype<adaln_bwd_host_t>(p, dtype); }, doc);
  m.def("adaln_jvp_host", [](py::dict d, int dtype) { auto p = parse(d); check_row_d(p); by_dtype<adaln_jvp_host_t>(p, dtype); }, doc);
#ifdef COSMOS_KERNELS_WITH_CUDA
  // The GIL is released: the launchers only enqueue work on the given stream.
  auto cuda = [](void (*fn)(const RowParams&, int, uintptr_t)) {
    return [fn](py::dict d, int dtype, uintptr_t stream) {
      RowParams p = parse(d);
      py::gil_scoped_release release;
      fn(p, dtype, stream);
    };
  };
  m.def("adaln_gated_residual_fwd_cuda", cuda(&gated_residual_fwd_cuda), doc);
  m.def("adaln_gated_residual_bwd_cuda", cuda(&gated_residual_bwd_cuda), doc);
  m.def("adaln_fwd_cuda", cuda(&adaln_fwd_cuda), doc);
  m.def("adaln_bwd_cuda", cuda(&adaln_bwd_cuda), doc);
  m.def("adaln_jvp_cuda", cuda(&adaln_jvp_cuda), doc);
#endif
}

}  // namespace

CK_REGISTER(register_adaln);

}  // namespace adaln
}  // namespace ck
