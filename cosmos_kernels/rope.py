"""3D RoPE family: the angle table of Cosmos-Predict2.5 (VideoRopePosition3DEmb), RoPE, and the
fused per-head q/k RMSNorm + RoPE of its attention.

    rope3d_freqs(grid=(T, H, W), head_dim, ...)          (T*H*W, head_dim) fp32 angles, t-major tokens
    apply_rope3d(x, freqs)                                x * cos + rotate_half(x) * sin on (B, S, H, D)
    qk_norm_rope(q, k, q_weight, k_weight, freqs, eps)    (rope(rms(q) * q_weight), rope(rms(k) * k_weight))

The (S, head_dim) angle table is the interface: slice it along S for context parallelism, concatenate
per-view tables (t_offset) for multiview. RoPE is non-interleaved (Transformer Engine, bshd) and
computed in fp32 with outputs in the input's dtype; with `freqs=None`, qk_norm_rope is RMSNorm
only (cross-attention, where q and k may have different S).

Supported by every backend: head dim D even, 2 <= D <= 256 (the H100 launch configurations the
compile report checks are D = 128 and 64); fp32/bf16/fp16 (fp64 on the torch reference); freqs
fp32 (S, D). Gradients flow to x, q, k and the norm weights, not to freqs; forward-mode JVP rules
cover the same inputs.
"""
from __future__ import annotations

import numbers
from contextlib import nullcontext
from typing import Optional

import torch
from torch import Tensor

from cosmos_kernels import _alloc, _ext, dispatch
from cosmos_kernels import _validate as V
from cosmos_kernels._op import differentiable
from cosmos_kernels.reference import rope as ref

# The CUDA C++ kernels are not measured on an H100 yet, so Triton stays the default on CUDA
# tensors (prefer_cuda=False) until a benchmark shows the C++ path is faster.

MAX_HEAD_DIM = 256


# ---------------------------------------------------------------------------------------------
# the CUDA C++ backend (csrc/rope.*): raw pointers into cosmos_kernels._C
# ---------------------------------------------------------------------------------------------
class _Cuda:
    """Same functions as the reference and the Triton module, run by _C (device kernels on CUDA
    tensors, the host build of the same source on CPU tensors)."""

    PARTS_FWD = 132 * 64  # target warps (one "part" of rows each) on an H100
    PARTS_BWD = 132 * 16  # fewer in the backward: one partial weight-gradient row per part
    FWD, BWD, JVP = 0, 1, 2

    @staticmethod
    def _device(t: Tensor) -> int:
        return t.device.index if t.is_cuda else -1

    @staticmethod
    def _desc(x, out, *, aux=None, w=None, tw=None, dw_parts=None, parts=0) -> list[int]:
        """The 18-field tensor descriptor of csrc/rope_host.cpp `to_tensor`."""
        B, S, H, _ = x.shape
        aux = x if aux is None else aux
        ptr = lambda t: t.data_ptr() if t is not None else 0  # noqa: E731
        return [ptr(x), x.stride(0), x.stride(1), x.stride(2),
                ptr(aux), aux.stride(0), aux.stride(1), aux.stride(2),
                _ext.dtype_code(x), S, H, B * S * H,
                ptr(w), ptr(tw), _ext.dtype_code(w) if w is not None else 0,
                ptr(out), ptr(dw_parts), parts]

    @staticmethod
    def _split(rows_q: int, rows_k: int, target: int) -> tuple[int, int, int]:
        per_part = max(1, -(-(rows_q + rows_k) // target))
        return per_part, -(-rows_q // per_part), -(-rows_k // per_part)

    @classmethod
    def _rope(cls, x, freqs, transposed):
        out = _alloc.empty(*x.shape, dtype=x.dtype, device=x.device)
        rows = x.shape[0] * x.shape[1] * x.shape[2]
        per_part, parts, _ = cls._split(rows, 0, cls.PARTS_FWD)
        with torch.cuda.device(x.device) if x.is_cuda else nullcontext():
            _ext._C.rope_apply(cls._desc(x, out, parts=parts), freqs.data_ptr(), freqs.stride(0), x.shape[3] // 2,
                               per_part, transposed, cls._device(x), _ext.stream_of(x))
        return out

    @classmethod
    def apply_rope3d(cls, x, freqs):
        return cls._rope(x, freqs, False)

    @classmethod
    def apply_rope3d_backward(cls, grad, freqs):
        return cls._rope(grad, freqs, True)

    @classmethod
    def _qk(cls, mode, q, k, descs, freqs, eps, per_part):
        with torch.cuda.device(q.device) if q.is_cuda else nullcontext():
            _ext._C.rope_qk_norm(mode, descs[0], descs[1], freqs.data_ptr() if freqs is not None else 0,
                                 freqs.stride(0) if freqs is not None else 0, q.shape[3] // 2, eps, per_part,
                                 cls._device(q), _ext.stream_of(q))

    @classmethod
    def qk_norm_rope(cls, q, k, q_weight, k_weight, freqs, eps):
        q_out = _alloc.empty(*q.shape, dtype=q.dtype, device=q.device)
        k_out = _alloc.empty(*k.shape, dtype=k.dtype, device=k.device)
        per_part, pq, pk = cls._split(q[..., 0].numel(), k[..., 0].numel(), cls.PARTS_FWD)
        descs = (cls._desc(q, q_out, w=q_weight, parts=pq), cls._desc(k, k_out, w=k_weight, parts=pk))
        cls._qk(cls.FWD, q, k, descs, freqs, eps, per_part)
        return q_out, k_out

    @classmethod
    def qk_norm_rope_backward(cls, grad_q, grad_k, q, k, q_weight, k_weight, freqs, eps):
        dq = _alloc.empty(*q.shape, dtype=q.dtype, device=q.device)
        dk = _alloc.empty(*k.shape, dtype=k.dtype, device=k.device)
        per_part, pq, pk = cls._split(q[..., 0].numel(), k[..., 0].numel(), cls.PARTS_BWD)
        D = q.shape[3]
        # fp32 partial weight gradients, one row per part (every row is written), summed here
        dwq = _alloc.empty(pq, D, dtype=torch.float32, device=q.device)
        dwk = _alloc.empty(pk, D, dtype=torch.float32, device=k.device)
        descs = (cls._desc(q, dq, aux=grad_q, w=q_weight, dw_parts=dwq, parts=pq),
                 cls._desc(k, dk, aux=grad_k, w=k_weight, dw_parts=dwk, parts=pk))
        cls._qk(cls.BWD, q, k, descs, freqs, eps, per_part)
        return dq, dk, dwq.sum(0).to(q_weight.dtype), dwk.sum(0).to(k_weight.dtype)

    @classmethod
    def qk_norm_rope_jvp(cls, q, k, q_weight, k_weight, tq, tk, tq_weight, tk_weight, freqs, eps):
        tq_out = _alloc.empty(*q.shape, dtype=q.dtype, device=q.device)
        tk_out = _alloc.empty(*k.shape, dtype=k.dtype, device=k.device)
        per_part, pq, pk = cls._split(q[..., 0].numel(), k[..., 0].numel(), cls.PARTS_FWD)
        # a weight tangent must share its weight's dtype (one dtype code per weight in the kernel)
        tqw = tq_weight.to(q_weight.dtype) if tq_weight is not None else None
        tkw = tk_weight.to(k_weight.dtype) if tk_weight is not None else None
        descs = (cls._desc(q, tq_out, aux=tq, w=q_weight, tw=tqw, parts=pq),
                 cls._desc(k, tk_out, aux=tk, w=k_weight, tw=tkw, parts=pk))
        cls._qk(cls.JVP, q, k, descs, freqs, eps, per_part)
        return tq_out, tk_out


def _impl(backend: str):
    if backend == "triton":
        from cosmos_kernels.triton import rope as triton_impl
        return triton_impl
    if backend == "cuda":
        return _Cuda
    return ref


def _rows(t):
    """The kernels read rows with unit stride (other strides are free): gradients and tangents
    that autograd hands over may be expanded (stride 0) and are made so here."""
    if t is None or t.dim() == 0 or t.shape[-1] <= 1 or t.stride(-1) == 1:
        return t
    return t.contiguous()


def _vec(t):
    return None if t is None else t.contiguous()


def _contiguous(*outs):
    # every backend returns contiguous outputs (the fake implementations promise it)
    return tuple(o.contiguous() for o in outs)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def _check_heads(op: str, name: str, x) -> Tensor:
    V.check_tensor(name, x, ndim=4, op=op)
    D = x.shape[-1]
    if D % 2 or not 2 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"{op}: {name} has head dim D={D} (shape {tuple(x.shape)}, (B, S, H, D)); supported: "
                         f"even D with 2 <= D <= {MAX_HEAD_DIM} (RoPE pairs element i with i + D/2)")
    V.check_last_dim_contiguous(op, name, x)
    return x


def _check_freqs(op: str, freqs, S: int, D: int, backend: str) -> Tensor:
    V.check_tensor("freqs", freqs, ndim=(2, 4), dtypes=(torch.float32, torch.float64), op=op)
    if freqs.dim() == 4:  # the official module's (S, 1, 1, D) layout
        if freqs.shape[1:3] != (1, 1):
            raise ValueError(f"{op}: freqs has shape {tuple(freqs.shape)}; expected (S, D) or (S, 1, 1, D)")
        freqs = freqs.reshape(freqs.shape[0], freqs.shape[3])
    if tuple(freqs.shape) != (S, D):
        raise ValueError(f"{op}: freqs has shape {tuple(freqs.shape)}, expected (S, D) = ({S}, {D}) from the "
                         "tokens (build it with rope3d_freqs for the token grid, or slice it along S)")
    if freqs.dtype == torch.float64 and backend != "torch":
        raise TypeError(f"{op}: freqs has dtype float64, supported only by backend 'torch'; "
                        f"backend {backend!r} takes float32 angles")
    if freqs.requires_grad:
        raise ValueError(f"{op}: freqs requires grad, but the angle table is not differentiated; pass freqs.detach()")
    V.check_last_dim_contiguous(op, "freqs", freqs)
    return freqs


# ---------------------------------------------------------------------------------------------
# rope3d_freqs
# ---------------------------------------------------------------------------------------------
def _fps_value(fps) -> float:
    if isinstance(fps, Tensor):
        if fps.numel() == 0 or (not fps.is_floating_point() and fps.dtype not in (torch.int32, torch.int64)):
            raise TypeError(f"rope3d_freqs: fps tensor must be a non-empty number tensor, got {fps.dtype} "
                            f"of shape {tuple(fps.shape)}")
        flat = fps.flatten()
        if not bool((flat == flat[0]).all()):
            raise ValueError(f"rope3d_freqs: fps has several values {flat.tolist()[:8]}; one table has one fps "
                             "(build one table per clip)")
        fps = flat[0].item()
    if not isinstance(fps, numbers.Real) or isinstance(fps, bool) or not fps > 0:
        raise ValueError(f"rope3d_freqs: fps must be a positive number (or a tensor of one value), got {fps!r}")
    return float(fps)


def rope3d_freqs(grid=None, head_dim: int = 128, *, h_extrapolation_ratio: float = 1.0,
                 w_extrapolation_ratio: float = 1.0, t_extrapolation_ratio: float = 1.0,
                 enable_fps_modulation: bool = False, fps=None, base_fps: float = 24, t_offset: float = 0,
                 device=None) -> Tensor:
    """The (T*H*W, head_dim) float32 RoPE angle table of a (T, H, W) latent token grid.

    As the official VideoRopePosition3DEmb: head_dim split dim_h = dim_w = head_dim // 6 * 2,
    dim_t = head_dim - 2 * dim_h (128 -> 44, 42, 42); per axis theta = 10000 * ratio^(dim/(dim-2))
    (NTK extrapolation) and frequencies theta^(-(0, 2, 4, ...)/dim); angles position x frequency,
    each token's row laid out [t, h, w, t, h, w] (half-blocks). With enable_fps_modulation and an
    `fps`, time positions are scaled by base_fps / fps (fps None is allowed only for T == 1, an
    image). `t_offset` shifts the time positions (long-video chunks, per-view tables).
    """
    op = "rope3d_freqs"
    if grid is None or not isinstance(grid, (tuple, list)) or len(grid) != 3 or not all(
            isinstance(g, numbers.Integral) and not isinstance(g, bool) and g > 0 for g in grid):
        raise ValueError(f"{op}: grid must be (T, H, W) of three positive ints, got {grid!r}")
    if not isinstance(head_dim, numbers.Integral) or isinstance(head_dim, bool) or head_dim % 2 or head_dim < 12:
        raise ValueError(f"{op}: head_dim must be an even int >= 12 (each of t, h, w needs >= 4 channels "
                         f"for the NTK exponent dim/(dim-2)), got {head_dim!r}")
    for name, ratio in (("h_extrapolation_ratio", h_extrapolation_ratio),
                        ("w_extrapolation_ratio", w_extrapolation_ratio),
                        ("t_extrapolation_ratio", t_extrapolation_ratio), ("base_fps", base_fps)):
        if not isinstance(ratio, numbers.Real) or isinstance(ratio, bool):
            raise TypeError(f"{op}: {name} must be a number, got {type(ratio).__name__}")
        V.check_positive(op, name, ratio)
    if not isinstance(t_offset, numbers.Real) or isinstance(t_offset, bool):
        raise TypeError(f"{op}: t_offset must be a number, got {type(t_offset).__name__}")
    scale_fps = None
    if enable_fps_modulation:
        if fps is None:
            if grid[0] != 1:
                raise ValueError(f"{op}: enable_fps_modulation needs fps for a video (T={grid[0]}); "
                                 "fps=None is allowed only for images (T == 1)")
        else:
            scale_fps = _fps_value(fps)
    return ref.rope3d_freqs(tuple(int(g) for g in grid), int(head_dim),
                            h_extrapolation_ratio=float(h_extrapolation_ratio),
                            w_extrapolation_ratio=float(w_extrapolation_ratio),
                            t_extrapolation_ratio=float(t_extrapolation_ratio),
                            fps=scale_fps, base_fps=float(base_fps), t_offset=t_offset, device=device)


# ---------------------------------------------------------------------------------------------
# apply_rope3d
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("cosmos_kernels::apply_rope3d", mutates_args=())
def _apply_rope3d_op(x: Tensor, freqs: Tensor, backend: str) -> Tensor:
    return _impl(backend).apply_rope3d(_rows(x), _rows(freqs)).contiguous()


@_apply_rope3d_op.register_fake
def _(x, freqs, backend):
    return x.new_empty(x.shape)


@torch.library.custom_op("cosmos_kernels::apply_rope3d_bwd", mutates_args=())
def _apply_rope3d_bwd_op(grad: Tensor, freqs: Tensor, backend: str) -> Tensor:
    return _impl(backend).apply_rope3d_backward(_rows(grad), _rows(freqs)).contiguous()


@_apply_rope3d_bwd_op.register_fake
def _(grad, freqs, backend):
    return grad.new_empty(grad.shape)


def _rope_setup(ctx, inputs, output):
    _, freqs, backend = inputs
    ctx.save_for_backward(freqs)
    ctx.backend = backend


def _rope_backward(ctx, grad):
    (freqs,) = ctx.saved_tensors
    return _apply_rope3d_bwd_op(grad, freqs, ctx.backend), None, None


def _rope_jvp(ctx, tx, _tfreqs, _backend):
    # freqs is not differentiated (the boundary rejects freqs that require grad; torch.func passes
    # materialized zero tangents for constants, so its tangent is ignored here)
    _, freqs = ctx.saved_tensors
    # RoPE is linear in x: the tangent is RoPE of the tangent
    return _apply_rope3d_op(tx, freqs, ctx.backend)


_apply_rope3d = differentiable(_apply_rope3d_op, _rope_setup, _rope_backward, _rope_jvp, name="apply_rope3d")


def apply_rope3d(x: Tensor, freqs: Tensor, *, backend: str | None = None) -> Tensor:
    """x * cos(freqs) + rotate_half(x) * sin(freqs) on x (B, S, H, D), freqs (S, D) fp32 angles
    (rope3d_freqs; (S, 1, 1, D) accepted). Computed in fp32, returned in x's dtype, contiguous."""
    op = "apply_rope3d"
    _check_heads(op, "x", x)
    V.check_tensor("freqs", freqs, op=op)
    V.check_same_device(op, x=x, freqs=freqs)
    backend = dispatch.backend_for(op, x, backend)
    V.check_backend_dtype(op, backend, x)
    freqs = _check_freqs(op, freqs, x.shape[1], x.shape[3], backend)
    return _apply_rope3d(x, freqs, backend)


# ---------------------------------------------------------------------------------------------
# qk_norm_rope
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("cosmos_kernels::qk_norm_rope", mutates_args=())
def _qk_norm_rope_op(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, freqs: Optional[Tensor],
                     eps: float, backend: str) -> tuple[Tensor, Tensor]:
    return _contiguous(*_impl(backend).qk_norm_rope(_rows(q), _rows(k), _vec(q_weight), _vec(k_weight),
                                                    _rows(freqs), eps))


@_qk_norm_rope_op.register_fake
def _(q, k, q_weight, k_weight, freqs, eps, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.custom_op("cosmos_kernels::qk_norm_rope_bwd", mutates_args=())
def _qk_norm_rope_bwd_op(grad_q: Tensor, grad_k: Tensor, q: Tensor, k: Tensor, q_weight: Tensor,
                         k_weight: Tensor, freqs: Optional[Tensor], eps: float,
                         backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _contiguous(*_impl(backend).qk_norm_rope_backward(
        _rows(grad_q), _rows(grad_k), _rows(q), _rows(k), _vec(q_weight), _vec(k_weight), _rows(freqs), eps))


@_qk_norm_rope_bwd_op.register_fake
def _(grad_q, grad_k, q, k, q_weight, k_weight, freqs, eps, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), q_weight.new_empty(q_weight.shape), \
        k_weight.new_empty(k_weight.shape)


@torch.library.custom_op("cosmos_kernels::qk_norm_rope_jvp", mutates_args=())
def _qk_norm_rope_jvp_op(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, tq: Tensor, tk: Tensor,
                         tq_weight: Optional[Tensor], tk_weight: Optional[Tensor], freqs: Optional[Tensor],
                         eps: float, backend: str) -> tuple[Tensor, Tensor]:
    impl = _impl(backend)
    q, k, tq, tk, freqs = _rows(q), _rows(k), _rows(tq), _rows(tk), _rows(freqs)
    q_weight, k_weight, tq_weight, tk_weight = map(_vec, (q_weight, k_weight, tq_weight, tk_weight))
    if impl is not ref:  # the kernels read a weight tangent row; a missing one is zero
        tq_weight = torch.zeros_like(q_weight) if tq_weight is None else tq_weight
        tk_weight = torch.zeros_like(k_weight) if tk_weight is None else tk_weight
    return _contiguous(*impl.qk_norm_rope_jvp(q, k, q_weight, k_weight, tq, tk, tq_weight, tk_weight, freqs, eps))


@_qk_norm_rope_jvp_op.register_fake
def _(q, k, q_weight, k_weight, tq, tk, tq_weight, tk_weight, freqs, eps, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _qk_setup(ctx, inputs, output):
    q, k, q_weight, k_weight, freqs, eps, backend = inputs
    ctx.save_for_backward(q, k, q_weight, k_weight, freqs)
    ctx.eps, ctx.backend, ctx.has_freqs = eps, backend, freqs is not None


def _qk_backward(ctx, grad_q, grad_k):
    q, k, q_weight, k_weight, freqs = ctx.saved_tensors
    grad_q = torch.zeros_like(q) if grad_q is None else grad_q
    grad_k = torch.zeros_like(k) if grad_k is None else grad_k
    dq, dk, dqw, dkw = _qk_norm_rope_bwd_op(grad_q, grad_k, q, k, q_weight, k_weight, freqs, ctx.eps, ctx.backend)
    return dq, dk, dqw, dkw, None, None, None


def _qk_jvp(ctx, tq, tk, tq_weight, tk_weight, _tfreqs, _eps, _backend):
    # freqs is not differentiated: its (zero) tangent is ignored, as in _rope_jvp
    saved = ctx.saved_tensors  # the tensor inputs in order: q, k, q_weight, k_weight[, freqs]
    q, k, q_weight, k_weight = saved[:4]
    freqs = saved[4] if ctx.has_freqs else None
    tq = torch.zeros_like(q) if tq is None else tq
    tk = torch.zeros_like(k) if tk is None else tk
    return _qk_norm_rope_jvp_op(q, k, q_weight, k_weight, tq, tk, tq_weight, tk_weight, freqs, ctx.eps, ctx.backend)


_qk_norm_rope = differentiable(_qk_norm_rope_op, _qk_setup, _qk_backward, _qk_jvp, name="qk_norm_rope")


def qk_norm_rope(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, freqs: Tensor | None,
                 eps: float = 1e-6, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """RMSNorm over the head dim per head with weights (D,), then RoPE, for q and k in one pass.

    q (B, Sq, H, D) and k (B, Sk, Hk, D) share dtype, device and D; with `freqs` (S, D) both need
    Sq == Sk == S; `freqs=None` skips RoPE (cross-attention: k holds the text tokens). Math in fp32
    (the official use_wan_fp32_strategy), outputs in the input dtype, contiguous. The official code
    rounds the norm's output to the activation dtype before its fp32 RoPE; the fused pass keeps fp32
    throughout (one rounding fewer, within the bf16 tolerance of it).
    """
    op = "qk_norm_rope"
    _check_heads(op, "q", q)
    _check_heads(op, "k", k)
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"{op}: k has head dim {k.shape[3]} but q has {q.shape[3]} "
                         f"(q {tuple(q.shape)}, k {tuple(k.shape)}); they must match")
    D = q.shape[3]
    V.check_tensor("q_weight", q_weight, op=op)
    V.check_tensor("k_weight", k_weight, op=op)
    V.check_shape(op, "q_weight", q_weight, (D,))
    V.check_shape(op, "k_weight", k_weight, (D,))
    if freqs is not None:
        V.check_tensor("freqs", freqs, op=op)
    V.check_same_device(op, q=q, k=k, q_weight=q_weight, k_weight=k_weight, freqs=freqs)
    V.check_same_dtype(op, q=q, k=k)
    eps = V.check_real(op, "eps", eps, positive=True)
    backend = dispatch.backend_for(op, q, backend)
    V.check_backend_dtype(op, backend, q)
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if backend != "torch" and w.dtype not in V.KERNEL_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {w.dtype}, supported only by backend 'torch'; backend "
                            f"{backend!r} takes float32, float16 or bfloat16 weights")
    if freqs is not None:
        if q.shape[1] != k.shape[1]:
            raise ValueError(f"{op}: with freqs, q and k need the same S (got q S={q.shape[1]}, k S={k.shape[1]}); "
                             "pass freqs=None for cross-attention (norm only)")
        freqs = _check_freqs(op, freqs, q.shape[1], D, backend)
    return _qk_norm_rope(q, k, q_weight, k_weight, freqs, eps, backend)
