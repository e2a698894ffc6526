"""Reference (the spec) of the AdaLN family: LayerNorm + AdaLN modulation and gated residuals.

Shapes: x, y are (B, L, D) with L = T*N tokens in t-major order; the modulation tensors
(shift, scale, gate) are (B, T, D): one row per latent frame, broadcast over that frame's N
tokens. Math in fp32, result cast to the input dtype.
"""
from __future__ import annotations

import torch

from cosmos_kernels.reference import f32


def expand_frames(mod: torch.Tensor, length: int) -> torch.Tensor:
    """(B, T, D) per-frame rows -> (B, L, D), each row repeated for the L // T tokens of its frame."""
    b, t, d = mod.shape
    return mod[:, :, None, :].expand(b, t, length // t, d).reshape(b, length, d)


def sum_frames(v: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, L, D) -> (B, T, D): the adjoint of expand_frames."""
    b, length, d = v.shape
    return v.reshape(b, frames, length // frames, d).sum(2)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + gate * y."""
    out = f32(x) + expand_frames(f32(gate), x.shape[1]) * f32(y)
    return out.to(x.dtype)


def gated_residual_backward(grad: torch.Tensor, y: torch.Tensor, gate: torch.Tensor):
    """(dy, dgate) of gated_residual; dx is grad itself."""
    g = f32(grad)
    dy = g * expand_frames(f32(gate), g.shape[1])
    dgate = sum_frames(g * f32(y), gate.shape[1])
    return dy.to(y.dtype), dgate.to(gate.dtype)


# ---------------------------------------------------------------------------------------------
# LayerNorm (no affine) + AdaLN modulation
# ---------------------------------------------------------------------------------------------
def layer_norm_stats(x: torch.Tensor, eps: float):
    """(mean, rstd) over the last dim in reference precision: fp32 (fp64 for fp64 x), shape (B, L)."""
    xf = f32(x)
    mean = xf.mean(-1)
    var = (xf - mean[..., None]).square().mean(-1)
    return mean, torch.rsqrt(var + eps)


def adaln_modulate_fwd(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6):
    """(h, mean, rstd): h = LN(x) * (1 + scale) + shift in x's dtype; the statistics for backward."""
    mean, rstd = layer_norm_stats(x, eps)
    xhat = (f32(x) - mean[..., None]) * rstd[..., None]
    L = x.shape[1]
    h = xhat * (1 + expand_frames(f32(scale), L)) + expand_frames(f32(shift), L)
    return h.to(x.dtype), mean, rstd


def adaln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm(x, no affine, eps) * (1 + scale) + shift, in x's dtype."""
    return adaln_modulate_fwd(x, shift, scale, eps)[0]


def ln_project(v: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """rstd * (v - mean(v) - xhat * mean(v * xhat)): the Jacobian of xhat = LN(x) applied to v.

    It is symmetric, so the same formula is the backward (v = dxhat) and the JVP (v = tangent of x).
    """
    return rstd[..., None] * (v - v.mean(-1, keepdim=True) - xhat * (v * xhat).mean(-1, keepdim=True))


def adaln_modulate_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                            mean: torch.Tensor, rstd: torch.Tensor, shift_dtype: torch.dtype):
    """(dx, dshift, dscale) of adaln_modulate given dh; per-frame sums for the modulation grads."""
    g = f32(grad)
    L, T = x.shape[1], scale.shape[1]
    xhat = (f32(x) - mean[..., None]) * rstd[..., None]
    dx = ln_project(g * (1 + expand_frames(f32(scale), L)), xhat, rstd)
    dshift = sum_frames(g, T)
    dscale = sum_frames(g * xhat, T)
    return dx.to(x.dtype), dshift.to(shift_dtype), dscale.to(scale.dtype)


def adaln_modulate_jvp(x, scale, tx, tshift, tscale, eps: float = 1e-6) -> torch.Tensor:
    """Tangent of h given the tangents of x, shift and scale (all tensors, zeros where absent)."""
    mean, rstd = layer_norm_stats(x, eps)
    xhat = (f32(x) - mean[..., None]) * rstd[..., None]
    L = x.shape[1]
    th = (ln_project(f32(tx), xhat, rstd) * (1 + expand_frames(f32(scale), L))
          + xhat * expand_frames(f32(tscale), L) + expand_frames(f32(tshift), L))
    return th.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# gated residual fused with the next AdaLN
# ---------------------------------------------------------------------------------------------
def gated_residual_adaln_fwd(x, y, gate, shift, scale, eps: float = 1e-6):
    """(x_new, h_next, mean, rstd): x_new = x + gate*y (rounded to x's dtype, as the unfused pair
    stores it), h_next = adaln_modulate(x_new, shift, scale) with the statistics of x_new."""
    x_new = gated_residual(x, y, gate)
    h, mean, rstd = adaln_modulate_fwd(x_new, shift, scale, eps)
    return x_new, h, mean, rstd


def gated_residual_adaln(x, y, gate, shift, scale, eps: float = 1e-6):
    """(x_new, h_next) = (x + gate*y, LN(x_new) * (1 + scale) + shift)."""
    return gated_residual_adaln_fwd(x, y, gate, shift, scale, eps)[:2]


def gated_residual_adaln_backward(grad_x_new, grad_h, x_new, y, gate, scale, mean, rstd, shift_dtype):
    """(dx, dy, dgate, dshift, dscale) given the gradients of both outputs (zeros where unused).

    The gradient reaching x_new is its own plus the LayerNorm backward of grad_h, in fp32; x, y
    and gate then see it through x_new = x + gate*y.
    """
    g = f32(grad_h)
    L, T = x_new.shape[1], scale.shape[1]
    xhat = (f32(x_new) - mean[..., None]) * rstd[..., None]
    dx = f32(grad_x_new) + ln_project(g * (1 + expand_frames(f32(scale), L)), xhat, rstd)
    dy = dx * expand_frames(f32(gate), L)
    dgate = sum_frames(dx * f32(y), T)
    dshift = sum_frames(g, T)
    dscale = sum_frames(g * xhat, T)
    return (dx.to(x_new.dtype), dy.to(y.dtype), dgate.to(gate.dtype), dshift.to(shift_dtype),
            dscale.to(scale.dtype))


def gated_residual_adaln_jvp(x, y, gate, scale, tx, ty, tgate, tshift, tscale, eps: float = 1e-6):
    """(tangent of x_new, tangent of h_next) given the tangents of all five inputs."""
    L = x.shape[1]
    x_new = gated_residual(x, y, gate)
    tx_new = f32(tx) + expand_frames(f32(gate), L) * f32(ty) + expand_frames(f32(tgate), L) * f32(y)
    th = adaln_modulate_jvp(x_new, scale, tx_new, tshift, tscale, eps)
    return tx_new.to(x.dtype), th
