"""Reference (the spec) of the flash-attention family: plain softmax attention, its backward and
its forward-mode JVP, written out by hand.

Layout (B, S, H, D) as in flash-attn; S_q and S_k may differ (cross-attention). Math in fp32
(fp64 for fp64 inputs), results cast to the input dtype; the log-sum-exp is fp32 (B, H, S_q) in
natural-log units. These materialize the (S_q, S_k) score matrix: they are the spec, not a
memory-lean path.

    S = Q Kᵀ · scale,  P = softmax(S),  O = P V,  lse = log Σ_k exp(S)
    JVP:  tS = (tQ Kᵀ + Q tKᵀ) · scale,  r = Σ_k P ⊙ tS  (= the tangent of lse),
          tO = P tV + (P ⊙ tS) V − r · O
    VJP:  dV = Pᵀ dO,  dP = dO Vᵀ,  δ = rowsum(dO ⊙ O) − dlse,  dS = P ⊙ (dP − δ),
          dQ = dS K · scale,  dK = dSᵀ Q · scale
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from cosmos_kernels.reference import f32


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def _bhsd(t: Tensor) -> Tensor:
    """(B, S, H, D) -> (B, H, S, D) in the compute precision."""
    return f32(t).transpose(1, 2)


def _bshd(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.transpose(1, 2).contiguous().to(dtype)


def _scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    return torch.matmul(_bhsd(q), _bhsd(k).transpose(-1, -2)) * scale


def attention_with_lse(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """(out (B, S_q, H, D), lse (B, H, S_q) fp32 or fp64)."""
    s = _scores(q, k, scale)
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.exp(s - lse[..., None]), _bhsd(v))
    return _bshd(out, q.dtype), lse


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """softmax(Q Kᵀ · scale) V; scale defaults to 1/sqrt(D)."""
    scale = default_scale(q.shape[-1]) if scale is None else scale
    return attention_with_lse(q, k, v, scale)[0]


def attention_jvp(q: Tensor, k: Tensor, v: Tensor, q_t: Tensor, k_t: Tensor, v_t: Tensor,
                  scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(out, out_t, lse, lse_t): the primal, its tangent along (q_t, k_t, v_t), and those of lse."""
    s = _scores(q, k, scale)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse[..., None])
    kb, vb = _bhsd(k), _bhsd(v)
    ts = (torch.matmul(_bhsd(q_t), kb.transpose(-1, -2)) + torch.matmul(_bhsd(q), _bhsd(k_t).transpose(-1, -2))) * scale
    pts = p * ts
    r = pts.sum(-1)
    out = torch.matmul(p, vb)
    out_t = torch.matmul(p, _bhsd(v_t)) + torch.matmul(pts, vb) - r[..., None] * out
    return _bshd(out, q.dtype), _bshd(out_t, q.dtype), lse, r


def attention_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       scale: float, grad_lse: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of attention_with_lse given dO (and optionally d lse), from the saved lse."""
    do = _bhsd(grad)
    p = torch.exp(_scores(q, k, scale) - f32(lse)[..., None])
    delta = (do * _bhsd(out)).sum(-1)
    if grad_lse is not None:
        delta = delta - f32(grad_lse)
    dv = torch.matmul(p.transpose(-1, -2), do)
    dp = torch.matmul(do, _bhsd(v).transpose(-1, -2))
    ds = p * (dp - delta[..., None])
    dq = torch.matmul(ds, _bhsd(k)) * scale
    dk = torch.matmul(ds.transpose(-1, -2), _bhsd(q)) * scale
    return _bshd(dq, q.dtype), _bshd(dk, k.dtype), _bshd(dv, v.dtype)
