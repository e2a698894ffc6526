"""Reference (the spec) of 3D neighborhood attention with NATTEN's `na3d` semantics.

Tokens live on a (T, H, W) grid, flattened t-major (S = T*H*W). The neighborhood is separable: a
query attends to a key iff, along each of the three axes, the key's coordinate is in the query's
window for that axis. Along one axis of length L, with kernel size k, dilation d, stride s, causal c,
for a query at coordinate X and a key at coordinate Y:

  dilation  the axis splits into d interleaved groups (g = X % d); a query only sees keys of its own
            group (Y % d == g), and inside the group the coordinates are x = X // d, y = Y // d on a
            group of n = ceil((L - g) / d) positions. Everything below happens in group coordinates.
  stride    queries with the same x // s form a stride group and share the window of its leader:
            non-causal: leader = min((x // s) * s + s // 2, n - 1)   (the centre query; right of
                        centre when s is even)
            causal:     leader = min((x // s) * s + s - 1, n - 1)    (the last query of the group)
  window    non-causal: k keys centred on the leader, shifted inwards at the borders so that the
                        window is always full: centre = clamp(leader, k // 2, n - 1 - (k - 1 - k // 2)),
                        y in [centre - k // 2, centre - k // 2 + k - 1] (even k: one more key on the left)
            causal:     y in [max(leader - k + 1, 0), x]  (never a key after the query itself)

kernel_size = L on an axis (non-causal, dilation 1) makes that axis dense; the full grid is plain
softmax attention. Math in fp32 (fp64 for fp64 inputs); outputs in the input dtype, the log-sum-exp
(natural log, of the scaled scores) in the compute precision, shape (B, heads, S).
"""
from __future__ import annotations

import torch
from torch import Tensor

from cosmos_kernels.reference import f32


def axis_window(x: Tensor, n: Tensor | int, kernel: int, stride: int, causal: bool) -> tuple[Tensor, Tensor]:
    """First and last key (group coordinates, inclusive) of the window of query x on a group of n."""
    n = torch.as_tensor(n, device=x.device)
    if causal:
        leader = torch.minimum((x // stride) * stride + stride - 1, n - 1)
        return torch.clamp(leader - kernel + 1, min=0), x.clone()
    left, right = kernel // 2, kernel - 1 - kernel // 2
    leader = torch.minimum((x // stride) * stride + stride // 2, n - 1)
    centre = torch.minimum(torch.clamp(leader, min=left), n - 1 - right)
    return centre - left, centre + right


def axis_mask(length: int, kernel: int, dilation: int, stride: int, causal: bool, device=None) -> Tensor:
    """(length, length) bool: [query coordinate, key coordinate] in the window along one axis."""
    pos = torch.arange(length, device=device)
    group, inner = pos % dilation, pos // dilation
    n = (length - group + dilation - 1) // dilation          # size of each position's dilation group
    start, end = axis_window(inner, n, kernel, stride, causal)
    same_group = group[:, None] == group[None, :]
    return same_group & (start[:, None] <= inner[None, :]) & (inner[None, :] <= end[:, None])


def neighborhood_mask(grid, kernel_size, dilation, stride, is_causal, device=None, rows: Tensor | None = None) -> Tensor:
    """(S, S) bool mask [query token, key token] (or (len(rows), S) for the query tokens `rows`)."""
    T, H, W = grid
    mt, mh, mw = (axis_mask(grid[i], kernel_size[i], dilation[i], stride[i], is_causal[i], device) for i in range(3))
    if rows is None:
        rows = torch.arange(T * H * W, device=device)
    t, h, w = rows // (H * W), (rows // W) % H, rows % W
    mask = mt[t][:, :, None, None] & mh[h][:, None, :, None] & mw[w][:, None, None, :]
    return mask.reshape(len(rows), T * H * W)


def attended_pairs(grid, kernel_size, dilation, stride, is_causal) -> int:
    """Number of (query, key) pairs in the neighborhood: the mask is separable, so it is the
    product over axes of the per-axis pair counts."""
    count = 1
    for i in range(3):
        count *= int(axis_mask(grid[i], kernel_size[i], dilation[i], stride[i], is_causal[i]).sum())
    return count


def _probs(q: Tensor, k: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Softmax probabilities P (B, heads, S, S) and log-sum-exp (B, heads, S) in compute precision."""
    s = torch.einsum("bqhd,bkhd->bhqk", f32(q), f32(k)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.exp(s - lse[..., None]), lse


def neighborhood_attention_3d(q: Tensor, k: Tensor, v: Tensor, grid, kernel_size, dilation, stride, is_causal,
                              scale: float) -> tuple[Tensor, Tensor]:
    """(out, lse): softmax attention of q, k, v (B, S, heads, D) restricted to the neighborhood."""
    mask = neighborhood_mask(grid, kernel_size, dilation, stride, is_causal, q.device)
    p, lse = _probs(q, k, mask, scale)
    out = torch.einsum("bhqk,bkhd->bqhd", p, f32(v))
    return out.to(q.dtype), lse


def neighborhood_attention_3d_backward(grad_out: Tensor, grad_lse: Tensor | None, q: Tensor, k: Tensor, v: Tensor,
                                       grid, kernel_size, dilation, stride, is_causal, scale: float):
    """(dq, dk, dv) by the attention backward formulas (tested against autograd):
    dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dO ⊙ O) + dlse), dQ = scale·dS·K, dK = scale·dSᵀ·Q, dV = Pᵀ·dO."""
    mask = neighborhood_mask(grid, kernel_size, dilation, stride, is_causal, q.device)
    p, _ = _probs(q, k, mask, scale)
    do, vf = f32(grad_out), f32(v)
    out = torch.einsum("bhqk,bkhd->bqhd", p, vf)
    delta = (do * out).sum(-1).transpose(1, 2)                               # (B, heads, S)
    if grad_lse is not None:
        delta = delta - f32(grad_lse)
    dp = torch.einsum("bqhd,bkhd->bhqk", do, vf)
    ds = p * (dp - delta[..., None])
    dq = torch.einsum("bhqk,bkhd->bqhd", ds, f32(k)) * scale
    dk = torch.einsum("bhqk,bqhd->bkhd", ds, f32(q)) * scale
    dv = torch.einsum("bhqk,bqhd->bkhd", p, do)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def neighborhood_attention_3d_jvp(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
                                  grid, kernel_size, dilation, stride, is_causal, scale: float):
    """(t_out, t_lse), the forward-mode tangents (tested against torch.func.jvp):
    tS = (tQ·Kᵀ + Q·tKᵀ)·scale, r = Σ_k P ⊙ tS, tO = P·tV + (P ⊙ tS)·V − r·O, t_lse = r."""
    mask = neighborhood_mask(grid, kernel_size, dilation, stride, is_causal, q.device)
    p, _ = _probs(q, k, mask, scale)
    qf, kf, vf = f32(q), f32(k), f32(v)
    ts = (torch.einsum("bqhd,bkhd->bhqk", f32(tq), kf) + torch.einsum("bqhd,bkhd->bhqk", qf, f32(tk))) * scale
    pts = (p * ts).masked_fill(~mask, 0.0)
    r = pts.sum(-1)                                                           # (B, heads, S)
    out = torch.einsum("bhqk,bkhd->bqhd", p, vf)
    t_out = (torch.einsum("bhqk,bkhd->bqhd", p, f32(tv)) + torch.einsum("bhqk,bkhd->bqhd", pts, vf)
             - r.transpose(1, 2)[..., None] * out)
    return t_out.to(q.dtype), r
