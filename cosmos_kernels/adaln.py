"""AdaLN family: LayerNorm + AdaLN modulation and gated residuals of the DiT block.

    adaln_modulate(x, shift, scale, eps)             h = LN(x) * (1 + scale) + shift
    gated_residual(x, y, gate)                       x + gate * y
    gated_residual_adaln(x, y, gate, shift, scale)   (x_new, h_next) in one pass

x, y: (B, L, D) tokens, t-major (L = T*N); shift/scale/gate: (B, T, D) per latent frame, or
(B, 1, D) / (B, D) for one row broadcast to every token. LayerNorm has no affine, fp32 statistics.
"""
from __future__ import annotations

import torch
from torch import Tensor

from cosmos_kernels import dispatch
from cosmos_kernels import _validate as V
from cosmos_kernels._op import differentiable
from cosmos_kernels.reference import adaln as ref

dispatch.register_op("gated_residual", backends=("triton", "torch"))


def _impl(backend: str):
    if backend == "triton":
        from cosmos_kernels.triton import adaln as triton_impl
        return triton_impl
    return ref


def _check_tokens(op: str, name: str, x) -> Tensor:
    V.check_tensor(name, x, ndim=3, op=op)
    V.check_last_dim_contiguous(op, name, x)
    return x


def _frames(op: str, name: str, mod, x: Tensor) -> Tensor:
    """Validate a modulation tensor against tokens x (B, L, D); return it as (B, T, D)."""
    V.check_tensor(name, mod, ndim=(2, 3), op=op)
    B, L, D = x.shape
    if mod.dim() == 2:
        mod = mod.unsqueeze(1)
    if mod.shape[0] != B or mod.shape[2] != D:
        raise ValueError(f"{op}: {name} has shape {tuple(mod.shape)}; expected (B, T, D) or (B, D) "
                         f"with B={B}, D={D} from x {tuple(x.shape)}")
    T = mod.shape[1]
    if T == 0 or L % T:
        raise ValueError(f"{op}: {name} has T={T} frames but x has L={L} tokens; L must be a multiple "
                         "of T (tokens are t-major, L = T * tokens_per_frame)")
    V.check_last_dim_contiguous(op, name, mod)
    return mod


# ---------------------------------------------------------------------------------------------
# gated_residual
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("cosmos_kernels::gated_residual", mutates_args=())
def _gated_residual_op(x: Tensor, y: Tensor, gate: Tensor, backend: str) -> Tensor:
    return _impl(backend).gated_residual(x, y, gate)


@_gated_residual_op.register_fake
def _(x, y, gate, backend):
    return torch.empty_like(x)


@torch.library.custom_op("cosmos_kernels::gated_residual_bwd", mutates_args=())
def _gated_residual_bwd_op(grad: Tensor, y: Tensor, gate: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return _impl(backend).gated_residual_backward(grad, y, gate)


@_gated_residual_bwd_op.register_fake
def _(grad, y, gate, backend):
    return torch.empty_like(y), torch.empty_like(gate)


def _gr_setup(ctx, inputs, output):
    x, y, gate, backend = inputs
    ctx.save_for_backward(y, gate)
    ctx.backend = backend


def _gr_backward(ctx, grad):
    y, gate = ctx.saved_tensors
    dy, dgate = _gated_residual_bwd_op(grad.contiguous(), y, gate, ctx.backend)
    return grad, dy, dgate, None


def _gr_jvp(ctx, tx, ty, tgate, _backend):
    x, y, gate = ctx.saved_tensors
    # d(x + g*y) = tx + g*ty + tg*y: the kernel computes the first two, the op the third
    out = _gated_residual_op(tx if tx is not None else torch.zeros_like(x),
                             ty if ty is not None else torch.zeros_like(y), gate, ctx.backend)
    if tgate is not None:
        out = out + ref.expand_frames(tgate, y.shape[1]).to(y.dtype) * y
    return out


_gated_residual = differentiable(_gated_residual_op, _gr_setup, _gr_backward, _gr_jvp, name="gated_residual")


def gated_residual(x: Tensor, y: Tensor, gate: Tensor, *, backend: str | None = None) -> Tensor:
    """x + gate * y with gate per latent frame: x, y (B, L, D); gate (B, T, D), (B, 1, D) or (B, D)."""
    op = "gated_residual"
    _check_tokens(op, "x", x)
    _check_tokens(op, "y", y)
    V.check_shape(op, "y", y, tuple(x.shape))
    gate = _frames(op, "gate", gate, x)
    V.check_same_device(op, x=x, y=y, gate=gate)
    V.check_same_dtype(op, x=x, y=y, gate=gate)
    backend = dispatch.backend_for(op, x, backend)
    V.check_backend_dtype(op, backend, x)
    return _gated_residual(x, y, gate, backend)
