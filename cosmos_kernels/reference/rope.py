"""Reference (the spec) of the 3D RoPE family: the angle table, RoPE, and fused q/k RMSNorm + RoPE.

Tensors are (B, S, H, D) (flash-attn / Transformer Engine "bshd"); `freqs` is the (S, D) angle
table of `rope3d_freqs`. RoPE is non-interleaved, as Transformer Engine's apply_rotary_pos_emb:
    out = x * cos(freqs) + rotate_half(x) * sin(freqs),  rotate_half([x1, x2]) = [-x2, x1]
over the two halves of D. RMSNorm per head: x * rsqrt(mean(x^2) + eps) * weight. All math in fp32
(fp64 for fp64 inputs), results cast to the input's dtype (weight gradients to the weight's).
"""
from __future__ import annotations

import torch

from cosmos_kernels.reference import f32

ROPE_THETA = 10000.0


# ---------------------------------------------------------------------------------------------
# the angle table (VideoRopePosition3DEmb of the official code)
# ---------------------------------------------------------------------------------------------
def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(dim_t, dim_h, dim_w): dim_h = dim_w = head_dim // 6 * 2, the rest to time (128 -> 44, 42, 42)."""
    dim_h = head_dim // 6 * 2
    return head_dim - 2 * dim_h, dim_h, dim_h


def axis_frequencies(dim: int, extrapolation_ratio: float) -> torch.Tensor:
    """theta^(-(0, 2, 4, ...)/dim) with the NTK-scaled theta = 10000 * ratio^(dim/(dim-2)); fp32 like
    the official buffers, so tables match it bit for bit on the same device."""
    theta = ROPE_THETA * extrapolation_ratio ** (dim / (dim - 2))
    exponents = torch.arange(0, dim, 2)[: dim // 2].float() / dim
    return 1.0 / (theta ** exponents)


def rope3d_freqs(grid: tuple[int, int, int], head_dim: int, *, h_extrapolation_ratio: float = 1.0,
                 w_extrapolation_ratio: float = 1.0, t_extrapolation_ratio: float = 1.0,
                 fps: float | None = None, base_fps: float = 24, t_offset: float = 0,
                 device=None) -> torch.Tensor:
    """(T*H*W, head_dim) fp32 angles, t-major tokens, laid out [t, h, w, t, h, w] half-blocks.

    Time positions are t_offset + (0, 1, ..., T-1), scaled by base_fps / fps when `fps` is given
    (fps modulation); height and width positions are 0..H-1 and 0..W-1.
    """
    T, H, W = grid
    dim_t, dim_h, dim_w = axis_dims(head_dim)
    freqs_t = axis_frequencies(dim_t, t_extrapolation_ratio).to(device)
    freqs_h = axis_frequencies(dim_h, h_extrapolation_ratio).to(device)
    freqs_w = axis_frequencies(dim_w, w_extrapolation_ratio).to(device)
    pos_t = torch.arange(T, dtype=torch.float32, device=device) + t_offset
    if fps is not None:
        # the official order and precision: (position / fps) * base_fps in fp32
        pos_t = pos_t / torch.tensor(float(fps), dtype=torch.float32, device=device) * base_fps
    pos_h = torch.arange(H, dtype=torch.float32, device=device)
    pos_w = torch.arange(W, dtype=torch.float32, device=device)
    ang_t = torch.outer(pos_t, freqs_t)[:, None, None, :].expand(T, H, W, -1)
    ang_h = torch.outer(pos_h, freqs_h)[None, :, None, :].expand(T, H, W, -1)
    ang_w = torch.outer(pos_w, freqs_w)[None, None, :, :].expand(T, H, W, -1)
    half = torch.cat([ang_t, ang_h, ang_w], dim=-1)
    return torch.cat([half, half], dim=-1).reshape(T * H * W, head_dim).contiguous()


# ---------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotate_half_transposed(x: torch.Tensor) -> torch.Tensor:
    """The adjoint of rotate_half: [g1, g2] -> [g2, -g1]."""
    g1, g2 = x.chunk(2, dim=-1)
    return torch.cat([g2, -g1], dim=-1)


def _cos_sin(freqs: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the (S, D) table, shaped (1, S, 1, D) to broadcast over (B, S, H, D)."""
    ang = freqs.to(like.dtype)[None, :, None, :]
    return ang.cos(), ang.sin()


def rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE in compute precision (no cast back): x * cos + rotate_half(x) * sin."""
    cos, sin = _cos_sin(freqs, x)
    return x * cos + rotate_half(x) * sin


def rope_transposed(g: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """The adjoint of rope (its inverse rotation): g * cos + rotate_half^T(g * sin)."""
    cos, sin = _cos_sin(freqs, g)
    return g * cos + rotate_half_transposed(g * sin)


def apply_rope3d(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    return rope(f32(x), freqs).to(x.dtype)


def apply_rope3d_backward(grad: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    return rope_transposed(f32(grad), freqs).to(grad.dtype)


# ---------------------------------------------------------------------------------------------
# q/k RMSNorm (+ RoPE)
# ---------------------------------------------------------------------------------------------
def rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """rsqrt(mean(x^2) + eps) per row, keepdim."""
    return torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


def norm_rope(x: torch.Tensor, weight: torch.Tensor, freqs: torch.Tensor | None, eps: float) -> torch.Tensor:
    xf = f32(x)
    y = xf * rms_scale(xf, eps) * weight.to(xf.dtype)
    return (y if freqs is None else rope(y, freqs)).to(x.dtype)


def qk_norm_rope(q, k, q_weight, k_weight, freqs, eps: float):
    return norm_rope(q, q_weight, freqs, eps), norm_rope(k, k_weight, freqs, eps)


def norm_rope_backward(grad, x, weight, freqs, eps: float):
    """(dx, dweight) of norm_rope. With n = x*r, r = rsqrt(mean(x^2)+eps), y = n*w, out = rope(y):
    dy = rope^T(grad); dw = sum_rows(dy * n); dx = r * (dn - n * mean(dn * n)), dn = dy * w."""
    xf = f32(x)
    g = f32(grad)
    dy = g if freqs is None else rope_transposed(g, freqs)
    r = rms_scale(xf, eps)
    n = xf * r
    dweight = (dy * n).reshape(-1, x.shape[-1]).sum(0)
    dn = dy * weight.to(xf.dtype)
    dx = r * (dn - n * (dn * n).mean(-1, keepdim=True))
    return dx.to(x.dtype), dweight.to(weight.dtype)


def qk_norm_rope_backward(grad_q, grad_k, q, k, q_weight, k_weight, freqs, eps: float):
    dq, dqw = norm_rope_backward(grad_q, q, q_weight, freqs, eps)
    dk, dkw = norm_rope_backward(grad_k, k, k_weight, freqs, eps)
    return dq, dk, dqw, dkw


def norm_rope_jvp(x, weight, tx, tweight, freqs, eps: float):
    """Tangent of norm_rope: rope(w * r * (tx - n * mean(n * tx)) + tw * n)."""
    xf = f32(x)
    t = f32(tx)
    r = rms_scale(xf, eps)
    n = xf * r
    ty = weight.to(xf.dtype) * r * (t - n * (n * t).mean(-1, keepdim=True))
    if tweight is not None:
        ty = ty + tweight.to(xf.dtype) * n
    return (ty if freqs is None else rope(ty, freqs)).to(x.dtype)


def qk_norm_rope_jvp(q, k, q_weight, k_weight, tq, tk, tq_weight, tk_weight, freqs, eps: float):
    return (norm_rope_jvp(q, q_weight, tq, tq_weight, freqs, eps),
            norm_rope_jvp(k, k_weight, tk, tk_weight, freqs, eps))
