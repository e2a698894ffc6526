"""Triton kernels of the AdaLN family (see cosmos_kernels/adaln.py for the ops).

Tokens are rows of D features; the modulation rows are per latent frame. Kernels are tiled by
(batch × frame) on the first grid axis, so each program loads its frame's modulation row once and
reuses it for a tile of tokens; per-frame reductions in the backward loop over the frame's tokens
inside one program (no atomics: deterministic).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc
from cosmos_kernels.aot import AotSpec

GR_BLOCK_N = 32
GR_BLOCK_D = 128


@triton.jit
def _gated_residual_fwd(X, Y, G, OUT, T, N, D,
                        sxb, sxl, syb, syl, sgb, sgt, sob, sol,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bt = tl.program_id(0)
    b = (pid_bt // T).to(tl.int64)
    t = pid_bt % T
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = (t * N + n).to(tl.int64)
    cmask = cols < D
    mask = (n < N)[:, None] & cmask[None, :]
    g = tl.load(G + b * sgb + t * sgt + cols, mask=cmask, other=0.0).to(tl.float32)
    x = tl.load(X + b * sxb + rows[:, None] * sxl + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + b * syb + rows[:, None] * syl + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    out = x + g[None, :] * y
    tl.store(OUT + b * sob + rows[:, None] * sol + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_bwd(GRAD, Y, G, DY, DG, T, N, D,
                        sgrb, sgrl, syb, syl, sgb, sgt, sdyb, sdyl, sdgb, sdgt,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bt = tl.program_id(0)
    b = (pid_bt // T).to(tl.int64)
    t = pid_bt % T
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    g = tl.load(G + b * sgb + t * sgt + cols, mask=cmask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        rows = (t * N + n).to(tl.int64)
        mask = (n < N)[:, None] & cmask[None, :]
        grad = tl.load(GRAD + b * sgrb + rows[:, None] * sgrl + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + b * syb + rows[:, None] * syl + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(DY + b * sdyb + rows[:, None] * sdyl + cols[None, :], (grad * g[None, :]).to(DY.dtype.element_ty), mask=mask)
        acc += tl.sum(grad * y, axis=0)
    tl.store(DG + b * sdgb + t * sdgt + cols, acc.to(DG.dtype.element_ty), mask=cmask)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    B, L, D = x.shape
    T = gate.shape[1]
    N = L // T
    out = _alloc.empty_like(x)
    grid = (B * T, triton.cdiv(N, GR_BLOCK_N), triton.cdiv(D, GR_BLOCK_D))
    _gated_residual_fwd[grid](x, y, gate, out, T, N, D,
                              x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                              gate.stride(0), gate.stride(1), out.stride(0), out.stride(1),
                              BLOCK_N=GR_BLOCK_N, BLOCK_D=GR_BLOCK_D, num_warps=4)
    return out


def gated_residual_backward(grad: torch.Tensor, y: torch.Tensor, gate: torch.Tensor):
    B, L, D = grad.shape
    T = gate.shape[1]
    N = L // T
    dy = _alloc.empty_like(y)
    dgate = _alloc.empty_like(gate)
    grid = (B * T, triton.cdiv(D, GR_BLOCK_D))
    _gated_residual_bwd[grid](grad, y, gate, dy, dgate, T, N, D,
                              grad.stride(0), grad.stride(1), y.stride(0), y.stride(1),
                              gate.stride(0), gate.stride(1), dy.stride(0), dy.stride(1),
                              dgate.stride(0), dgate.stride(1),
                              BLOCK_N=GR_BLOCK_N, BLOCK_D=GR_BLOCK_D, num_warps=4)
    return dy, dgate


def _aot_specs() -> list[AotSpec]:
    specs = []
    for dt in ("bf16", "fp32"):
        p = f"*{dt}"
        specs.append(AotSpec(
            f"gated_residual_fwd[{dt}]", _gated_residual_fwd,
            dict(zip(["X", "Y", "G", "OUT", "T", "N", "D", "sxb", "sxl", "syb", "syl", "sgb", "sgt", "sob", "sol"],
                     [p] * 4 + ["i32"] * 11)) | {"BLOCK_N": "constexpr", "BLOCK_D": "constexpr"},
            {"BLOCK_N": GR_BLOCK_N, "BLOCK_D": GR_BLOCK_D}, num_warps=4))
        specs.append(AotSpec(
            f"gated_residual_bwd[{dt}]", _gated_residual_bwd,
            dict(zip(["GRAD", "Y", "G", "DY", "DG", "T", "N", "D", "sgrb", "sgrl", "syb", "syl", "sgb", "sgt",
                      "sdyb", "sdyl", "sdgb", "sdgt"], [p] * 5 + ["i32"] * 13))
            | {"BLOCK_N": "constexpr", "BLOCK_D": "constexpr"},
            {"BLOCK_N": GR_BLOCK_N, "BLOCK_D": GR_BLOCK_D}, num_warps=4))
    return specs


AOT_SPECS = _aot_specs()
