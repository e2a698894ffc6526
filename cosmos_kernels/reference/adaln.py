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
