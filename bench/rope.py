"""3D RoPE family benchmark: apply_rope3d and qk_norm_rope (forward, forward+backward): time, bytes
moved, GB/s against a device copy measured in the same run, and against torch eager and
torch.compile of the reference (the peers a user would pick)."""
from __future__ import annotations

import torch

import cosmos_kernels as ck
from bench.common import bandwidth_rows, forward_backward, ours_backends
from cosmos_kernels.reference import rope as ref

# (B, (T, H, W) latent token grid, heads, D): the 2B model at 720p (24 x 44 x 80 tokens, 16 x 128)
FULL_SHAPES = [(1, (24, 44, 80), 16, 128)]
QUICK_SHAPES = [(1, (2, 4, 6), 4, 64)]


def _rope_rows(shape, dtype, device, quick, compiled):
    B, grid, heads, D = shape
    freqs = ck.rope3d_freqs(grid, D, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0, device=device)
    S = freqs.shape[0]
    x = torch.randn(B, S, heads, D, dtype=dtype, device=device)
    g = torch.randn_like(x)
    io = x.numel() * x.element_size()
    table = freqs.numel() * freqs.element_size()
    label = (B, S, heads, D)
    rows = []
    # forward: read x and the table, write out
    ours = {b: (lambda b=b: ck.apply_rope3d(x, freqs, backend=b)) for b in ours_backends("apply_rope3d", device)}
    peers = {"torch-eager": lambda: ref.apply_rope3d(x, freqs), "torch.compile": lambda: compiled(x, freqs)}
    rows += bandwidth_rows("apply_rope3d", label, dtype, 2 * io + table, ours, peers,
                           ref.apply_rope3d(x, freqs), device, quick)
    # forward + backward: twice that (the backward reads the gradient and the table, writes dx)
    ours = {b: forward_backward(lambda t, b=b: ck.apply_rope3d(t, freqs, backend=b), (x,), (g,))
            for b in ours_backends("apply_rope3d", device)}
    peers = {"torch-eager": forward_backward(lambda t: ref.apply_rope3d(t, freqs), (x,), (g,)),
             "torch.compile": forward_backward(lambda t: compiled(t, freqs), (x,), (g,))}
    expect = forward_backward(lambda t: ref.rope(t.float(), freqs), (x,), (g.float(),))()
    rows += bandwidth_rows("apply_rope3d fwd+bwd", label, dtype, 4 * io + 2 * table, ours, peers,
                           expect, device, quick, grad=True)
    return rows


def _qk_rows(shape, dtype, device, quick, compiled):
    B, grid, heads, D = shape
    freqs = ck.rope3d_freqs(grid, D, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0, device=device)
    S = freqs.shape[0]
    q, k = (torch.randn(B, S, heads, D, dtype=dtype, device=device) for _ in range(2))
    qw, kw = (1 + 0.1 * torch.randn(D, dtype=dtype, device=device) for _ in range(2))
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    io = q.numel() * q.element_size()
    table = freqs.numel() * freqs.element_size()
    label = (B, S, heads, D)
    rows = []
    # forward: read q, k, the table; write both outputs
    ours = {b: (lambda b=b: ck.qk_norm_rope(q, k, qw, kw, freqs, backend=b))
            for b in ours_backends("qk_norm_rope", device)}
    peers = {"torch-eager": lambda: ref.qk_norm_rope(q, k, qw, kw, freqs, 1e-6),
             "torch.compile": lambda: compiled(q, k, qw, kw, freqs, 1e-6)}
    rows += bandwidth_rows("qk_norm_rope", label, dtype, 4 * io + table, ours, peers,
                           ref.qk_norm_rope(q, k, qw, kw, freqs, 1e-6), device, quick)
    # forward + backward: the backward reads q, k, gq, gk and the table, writes dq, dk
    ours = {b: forward_backward(lambda *t, b=b: ck.qk_norm_rope(*t, freqs, backend=b), (q, k, qw, kw), (gq, gk))
            for b in ours_backends("qk_norm_rope", device)}
    peers = {"torch-eager": forward_backward(lambda *t: ref.qk_norm_rope(*t, freqs, 1e-6), (q, k, qw, kw), (gq, gk)),
             "torch.compile": forward_backward(lambda *t: compiled(*t, freqs, 1e-6), (q, k, qw, kw), (gq, gk))}
    expect = forward_backward(lambda *t: ref.qk_norm_rope(*t, freqs, 1e-6),
                      tuple(t.float() for t in (q, k, qw, kw)), (gq.float(), gk.float()))()
    rows += bandwidth_rows("qk_norm_rope fwd+bwd", label, dtype, 10 * io + 2 * table, ours, peers,
                           expect, device, quick, grad=True)
    return rows


def run(device: torch.device, quick: bool, rows: list | None = None) -> list[dict]:
    """This family's rows, appended to `rows` (if given) as each shape finishes."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    compiled_rope = torch.compile(ref.apply_rope3d)
    compiled_qk = torch.compile(ref.qk_norm_rope)
    rows = [] if rows is None else rows
    for shape in QUICK_SHAPES if quick else FULL_SHAPES:
        rows += _rope_rows(shape, dtype, device, quick, compiled_rope)
        rows += _qk_rows(shape, dtype, device, quick, compiled_qk)
    return rows
