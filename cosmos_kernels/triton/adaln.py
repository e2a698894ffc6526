"""Triton kernels of the AdaLN family (see cosmos_kernels/adaln.py for the ops).

Tokens are rows of D features; the modulation rows are per latent frame. Programs are tiled by
(batch × frame) on the first grid axis, so each loads its frame's modulation row once and reuses
it for a chunk of the frame's tokens. Per-frame reductions of the backward (dgate, dshift, dscale)
are deterministic: each program writes the partial sum of its chunk, and a small sum over chunks
follows (no atomics).

Tokens and their gradients/tangents are read as contiguous (B, L, D), row r at r * D (the op
wrappers make them so); modulation may be fp32 with bf16/fp16 tokens (loads convert to fp32).

Note on tests: the Triton interpreter converts fp32 -> bf16 by truncation where the GPU rounds to
nearest even, so interpreter results carry up to one extra bf16 ulp.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc
from cosmos_kernels._grid import row_chunks
from cosmos_kernels.triton import AotSpec

# ---------------------------------------------------------------------------------------------
# gated residual: x + gate * y, elementwise on (BLOCK_N tokens × BLOCK_D features) tiles
# ---------------------------------------------------------------------------------------------
# 8 × 256 tiles at 4 warps: 16 elements per thread (two 16-byte bf16 loads per tensor), 44-56
# registers (32 × 128 tiles took 162-205).
GR_BLOCK_N = 8
GR_BLOCK_D = 256
GR_WARPS = 4


@triton.jit
def _gated_residual_fwd(X, Y, G, OUT, T, N, D, sgb, sgt,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bt = tl.program_id(0)
    b = (pid_bt // T).to(tl.int64)
    t = pid_bt % T
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = b * T * N + t * N + n
    cmask = cols < D
    mask = (n < N)[:, None] & cmask[None, :]
    offs = rows[:, None] * D + cols[None, :]
    g = tl.load(G + b * sgb + t * sgt + cols, mask=cmask, other=0.0).to(tl.float32)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, (x + g[None, :] * y).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_bwd(GRAD, Y, G, DY, PART, T, N, D, rows_per_prog, n_chunks, sgb, sgt,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dy = grad * gate; PART[b*T + t, chunk, :] = the chunk's partial sum of grad * y."""
    pid_bt = tl.program_id(0)
    chunk = tl.program_id(1)
    b = (pid_bt // T).to(tl.int64)
    t = pid_bt % T
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    g = tl.load(G + b * sgb + t * sgt + cols, mask=cmask, other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = chunk * rows_per_prog
    end = tl.minimum(start + rows_per_prog, N)
    for first in range(start, end, BLOCK_N):
        n = first + tl.arange(0, BLOCK_N)
        mask = (n < end)[:, None] & cmask[None, :]
        offs = (b * T * N + t * N + n)[:, None] * D + cols[None, :]
        grad = tl.load(GRAD + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DY + offs, (grad * g[None, :]).to(DY.dtype.element_ty), mask=mask)
        acc += tl.sum(grad * y, axis=0)
    tl.store(PART + (pid_bt.to(tl.int64) * n_chunks + chunk) * D + cols, acc, mask=cmask)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    B, L, D = x.shape
    T = gate.shape[1]
    N = L // T
    out = _alloc.empty_like(x)
    grid = (B * T, triton.cdiv(N, GR_BLOCK_N), triton.cdiv(D, GR_BLOCK_D))
    _gated_residual_fwd[grid](x, y, gate, out, T, N, D, gate.stride(0), gate.stride(1),
                              BLOCK_N=GR_BLOCK_N, BLOCK_D=GR_BLOCK_D, num_warps=GR_WARPS)
    return out


def gated_residual_backward(grad: torch.Tensor, y: torch.Tensor, gate: torch.Tensor):
    B, L, D = grad.shape
    T = gate.shape[1]
    N = L // T
    dblocks = triton.cdiv(D, GR_BLOCK_D)
    chunks, rows = row_chunks(B * T * dblocks, N)
    dy = _alloc.empty_like(y)
    part = _alloc.empty(B * T, chunks, D, dtype=torch.float32, device=grad.device)
    _gated_residual_bwd[(B * T, chunks, dblocks)](
        grad, y, gate, dy, part, T, N, D, rows, chunks, gate.stride(0), gate.stride(1),
        BLOCK_N=GR_BLOCK_N, BLOCK_D=GR_BLOCK_D, num_warps=GR_WARPS)
    return dy, part.sum(1).view(B, T, D).to(gate.dtype)


def _gr_specs() -> list[AotSpec]:
    """The gated residual at the H100 configs (names start with the family, for --only adaln)."""
    specs = []
    const = {"BLOCK_N": GR_BLOCK_N, "BLOCK_D": GR_BLOCK_D}
    cx = dict.fromkeys(const, "constexpr")
    for dt, mt in (("bf16", "bf16"), ("bf16", "fp32"), ("fp32", "fp32")):
        p, m = f"*{dt}", f"*{mt}"
        cfg = f"[{dt},mod={mt}]"
        specs.append(AotSpec(
            f"adaln:gated_residual_fwd{cfg}", _gated_residual_fwd,
            {"X": p, "Y": p, "G": m, "OUT": p} | dict.fromkeys(["T", "N", "D", "sgb", "sgt"], "i32") | cx,
            const, num_warps=GR_WARPS))
        specs.append(AotSpec(
            f"adaln:gated_residual_bwd{cfg}", _gated_residual_bwd,
            {"GRAD": p, "Y": p, "G": m, "DY": p, "PART": "*fp32"}
            | dict.fromkeys(["T", "N", "D", "rows_per_prog", "n_chunks", "sgb", "sgt"], "i32") | cx,
            const, num_warps=GR_WARPS))
    return specs


# ---------------------------------------------------------------------------------------------
# LayerNorm + AdaLN modulation, alone (HAS_RESIDUAL=False) or after a gated residual (True)
# ---------------------------------------------------------------------------------------------
# Row kernels: a program owns a chunk of rows (tokens) of one frame and keeps the full row of D
# in registers (LayerNorm needs it), so BLOCK_D is D rounded up to a power of two.
def row_block(D: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps) of the row kernels: 8 elements of a row per thread (a bf16 row is one
    16-byte load per thread), up to 32 warps. With D a constexpr the lanes past D are compiled
    away, so D=5120 in a BLOCK_D=8192 program costs no registers for the padding. Register counts
    at these settings (python -m cosmos_kernels.aot --only adaln): <= 128 at D=2048 (2 blocks of 8
    warps per SM for the heaviest, the fused backward) and <= 64 at D=5120 (one 32-warp block)."""
    block = triton.next_power_of_2(D)
    return block, max(1, min(32, block // 256))


@triton.jit
def _adaln_fwd(X, Y, G, SHIFT, SCALE, XNEW, H, MEAN, RSTD,
               T, N, rows_per_prog, eps,
               sgb, sgt, sshb, ssht, sscb, ssct,
               D: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bt = tl.program_id(0)
    b = (pid_bt // T).to(tl.int64)
    t = pid_bt % T
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    shift = tl.load(SHIFT + b * sshb + t * ssht + cols, mask=cmask, other=0.0).to(tl.float32)
    scale1 = 1.0 + tl.load(SCALE + b * sscb + t * ssct + cols, mask=cmask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        g = tl.load(G + b * sgb + t * sgt + cols, mask=cmask, other=0.0).to(tl.float32)
    start = tl.program_id(1) * rows_per_prog
    end = tl.minimum(start + rows_per_prog, N)
    for n in range(start, end):
        row = b * T * N + t * N + n  # index into (B, L) of contiguous tokens
        x = tl.load(X + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            y = tl.load(Y + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
            x_new = (x + g * y).to(XNEW.dtype.element_ty)
            tl.store(XNEW + row * D + cols, x_new, mask=cmask)
            x = x_new.to(tl.float32)  # normalize what was stored, as the unfused pair would
        mean = tl.sum(x, axis=0) / D
        diff = tl.where(cmask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=0) / D + eps)
        h = diff * rstd * scale1 + shift
        tl.store(H + row * D + cols, h.to(H.dtype.element_ty), mask=cmask)
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)


@triton.jit
def _adaln_bwd(DXN, DH, XN, Y, G, SCALE, MEAN, RSTD, DX, DY, PART,
               T, N, rows_per_prog, n_chunks,
               sgb, sgt, sscb, ssct,
               D: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr):
    """dx (and dy) per row; per-chunk partial sums of dshift, dscale (and dgate) into
    PART[(b*T + t), chunk, k, :] (k = 0 shift, 1 scale, 2 gate), summed over chunks afterwards."""
    pid_bt = tl.program_id(0)
    chunk = tl.program_id(1)
    b = (pid_bt // T).to(tl.int64)
    t = pid_bt % T
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    scale1 = 1.0 + tl.load(SCALE + b * sscb + t * ssct + cols, mask=cmask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        g = tl.load(G + b * sgb + t * sgt + cols, mask=cmask, other=0.0).to(tl.float32)
    acc_shift = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_scale = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc_gate = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = chunk * rows_per_prog
    end = tl.minimum(start + rows_per_prog, N)
    for n in range(start, end):
        row = b * T * N + t * N + n
        x = tl.load(XN + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
        dh = tl.load(DH + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = tl.where(cmask, (x - mean) * rstd, 0.0)
        v = dh * scale1
        mean_v = tl.sum(v, axis=0) / D
        mean_vx = tl.sum(v * xhat, axis=0) / D
        dx = rstd * (v - mean_v - xhat * mean_vx)
        acc_shift += dh
        acc_scale += dh * xhat
        if HAS_RESIDUAL:
            dx += tl.load(DXN + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
            y = tl.load(Y + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
            tl.store(DY + row * D + cols, (dx * g).to(DY.dtype.element_ty), mask=cmask)
            acc_gate += dx * y
        tl.store(DX + row * D + cols, dx.to(DX.dtype.element_ty), mask=cmask)
    part = PART + ((pid_bt.to(tl.int64) * n_chunks + chunk) * 3) * D + cols
    tl.store(part, acc_shift, mask=cmask)
    tl.store(part + D, acc_scale, mask=cmask)
    if HAS_RESIDUAL:
        tl.store(part + 2 * D, acc_gate, mask=cmask)


@triton.jit
def _adaln_jvp(X, Y, G, SCALE, TX, TY, TG, TSHIFT, TSCALE, TXN, TH,
               T, N, rows_per_prog, eps,
               D: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr):
    """Tangent of h (and of x_new) from the tangents of every input; the statistics are recomputed
    from the row (it is in registers anyway). Modulation tensors and tangents are contiguous."""
    pid_bt = tl.program_id(0)
    b = (pid_bt // T).to(tl.int64)
    t = pid_bt % T
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    mod = pid_bt.to(tl.int64) * D + cols
    scale1 = 1.0 + tl.load(SCALE + mod, mask=cmask, other=0.0).to(tl.float32)
    tscale = tl.load(TSCALE + mod, mask=cmask, other=0.0).to(tl.float32)
    tshift = tl.load(TSHIFT + mod, mask=cmask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        g = tl.load(G + mod, mask=cmask, other=0.0).to(tl.float32)
        tg = tl.load(TG + mod, mask=cmask, other=0.0).to(tl.float32)
    start = tl.program_id(1) * rows_per_prog
    end = tl.minimum(start + rows_per_prog, N)
    for n in range(start, end):
        row = b * T * N + t * N + n
        x = tl.load(X + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
        tx = tl.load(TX + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            y = tl.load(Y + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
            ty = tl.load(TY + row * D + cols, mask=cmask, other=0.0).to(tl.float32)
            x = (x + g * y).to(X.dtype.element_ty).to(tl.float32)
            tx = tx + g * ty + tg * y
            tl.store(TXN + row * D + cols, tx.to(TXN.dtype.element_ty), mask=cmask)
        mean = tl.sum(x, axis=0) / D
        diff = tl.where(cmask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=0) / D + eps)
        xhat = diff * rstd
        mean_t = tl.sum(tx, axis=0) / D
        mean_tx = tl.sum(tx * xhat, axis=0) / D
        th = rstd * (tx - mean_t - xhat * mean_tx) * scale1 + xhat * tscale + tshift
        tl.store(TH + row * D + cols, th.to(TH.dtype.element_ty), mask=cmask)


def _grid_and_block(x: torch.Tensor, T: int):
    B, L, D = x.shape
    N = L // T
    chunks, rows = row_chunks(B * T, N)
    block, warps = row_block(D)
    return (B * T, chunks), rows, block, warps


def adaln_fwd(x, y, gate, shift, scale, eps: float):
    """(x_new or None, h, mean, rstd); x_new only with the residual (y and gate given)."""
    residual = y is not None
    B, L, D = x.shape
    T = shift.shape[1]
    grid, rows, block, warps = _grid_and_block(x, T)
    h = _alloc.empty_like(x)
    mean = _alloc.empty(B, L, dtype=torch.float32, device=x.device)
    rstd = _alloc.empty(B, L, dtype=torch.float32, device=x.device)
    x_new = _alloc.empty_like(x) if residual else h
    g = gate if residual else shift
    _adaln_fwd[grid](x, y if residual else x, g, shift, scale, x_new, h, mean, rstd,
                     T, L // T, rows, eps,
                     g.stride(0), g.stride(1), shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1),
                     D=D, HAS_RESIDUAL=residual, BLOCK_D=block, num_warps=warps)
    return (x_new if residual else None), h, mean, rstd


def adaln_bwd(grad_x_new, grad_h, x_new, y, gate, scale, mean, rstd):
    """(dx, dy, dgate_f32, dshift_f32, dscale_f32); dy and dgate are None without the residual."""
    residual = y is not None
    B, L, D = x_new.shape
    T = scale.shape[1]
    grid, rows, block, warps = _grid_and_block(x_new, T)
    dx = _alloc.empty_like(x_new)
    dy = _alloc.empty_like(y) if residual else None
    part = _alloc.empty(B * T, grid[1], 3, D, dtype=torch.float32, device=x_new.device)
    g = gate if residual else scale
    _adaln_bwd[grid](grad_x_new if residual else grad_h, grad_h, x_new, y if residual else x_new, g, scale,
                     mean, rstd, dx, dy if residual else dx, part,
                     T, L // T, rows, grid[1],
                     g.stride(0), g.stride(1), scale.stride(0), scale.stride(1),
                     D=D, HAS_RESIDUAL=residual, BLOCK_D=block, num_warps=warps)
    # the small deterministic reduction over chunks (B*T*chunks*D floats, no atomics); one fresh
    # tensor per gradient (custom-op outputs must not alias each other)
    dshift, dscale, dgate = (part[:, :, k].sum(1).view(B, T, D) for k in range(3))
    return dx, dy, (dgate if residual else None), dshift, dscale


def adaln_jvp(x, y, gate, scale, tx, ty, tgate, tshift, tscale, eps: float):
    """(tangent of x_new or None, tangent of h); every argument contiguous."""
    residual = y is not None
    B, L, D = x.shape
    T = scale.shape[1]
    grid, rows, block, warps = _grid_and_block(x, T)
    th = _alloc.empty_like(x)
    txn = _alloc.empty_like(x) if residual else th
    _adaln_jvp[grid](x, y if residual else x, gate if residual else scale, scale, tx,
                     ty if residual else tx, tgate if residual else tscale, tshift, tscale, txn, th,
                     T, L // T, rows, eps,
                     D=D, HAS_RESIDUAL=residual, BLOCK_D=block, num_warps=warps)
    return (txn if residual else None), th


def _row_specs() -> list[AotSpec]:
    """The row kernels at the H100 shapes: D = 2048 (2B) and 5120 (14B), bf16 tokens with bf16 or
    fp32 modulation (fp32 is the official "use_wan_fp32_strategy"), fp32 tokens with fp32."""
    specs = []
    for D in (2048, 5120):
        block, warps = row_block(D)
        for dt, mt in (("bf16", "bf16"), ("bf16", "fp32"), ("fp32", "fp32")):
            p, m = f"*{dt}", f"*{mt}"
            for residual in (False, True):
                tag = f"{'gated_residual_adaln' if residual else 'adaln_modulate'}"
                cfg = f"[{dt},mod={mt},D={D}]"
                const = {"D": D, "HAS_RESIDUAL": residual, "BLOCK_D": block}
                cx = {"D": "constexpr", "HAS_RESIDUAL": "constexpr", "BLOCK_D": "constexpr"}
                specs.append(AotSpec(
                    f"adaln:{tag}_fwd{cfg}", _adaln_fwd,
                    dict(zip(["X", "Y", "G", "SHIFT", "SCALE", "XNEW", "H", "MEAN", "RSTD"],
                             [p, p, m, m, m, p, p, "*fp32", "*fp32"]))
                    | dict.fromkeys(["T", "N", "rows_per_prog"], "i32") | {"eps": "fp32"}
                    | dict.fromkeys(["sgb", "sgt", "sshb", "ssht", "sscb", "ssct"], "i32") | cx,
                    const, num_warps=warps))
                specs.append(AotSpec(
                    f"adaln:{tag}_bwd{cfg}", _adaln_bwd,
                    dict(zip(["DXN", "DH", "XN", "Y", "G", "SCALE", "MEAN", "RSTD", "DX", "DY", "PART"],
                             [p, p, p, p, m, m, "*fp32", "*fp32", p, p, "*fp32"]))
                    | dict.fromkeys(["T", "N", "rows_per_prog", "n_chunks", "sgb", "sgt", "sscb", "ssct"], "i32")
                    | cx, const, num_warps=warps))
                specs.append(AotSpec(
                    f"adaln:{tag}_jvp{cfg}", _adaln_jvp,
                    dict(zip(["X", "Y", "G", "SCALE", "TX", "TY", "TG", "TSHIFT", "TSCALE", "TXN", "TH"],
                             [p, p, m, m, p, p, m, m, m, p, p]))
                    | dict.fromkeys(["T", "N", "rows_per_prog"], "i32") | {"eps": "fp32"} | cx,
                    const, num_warps=warps))
    return specs


AOT_SPECS = _gr_specs() + _row_specs()
