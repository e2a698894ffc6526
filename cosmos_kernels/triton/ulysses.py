"""Triton kernels of the Ulysses packing (see cosmos_kernels/reference/ulysses.py for the wire format).

Pack and unpack are the same strided copy: for each tensor, rank chunk p and (A, M) plane,
DST[p*dsp + a*dsa + m] = SRC[p*ssp + a*ssa + m] with m the contiguous axis. Pack reads the tensor
(ssp, ssa: its strides in the (A, P, M) view) and writes the buffer (dsp = chunk, dsa = M);
unpack reads the buffer and writes the fresh output (dsp = M, dsa = P*M).

One launch moves up to three tensors (q, k, v; or an output and its tangent): grid axis 2 picks
the tensor, axis 1 the rank chunk p, axis 0 a BLOCK_A × BLOCK_M tile of the (A, M) plane (tiles
past a smaller tensor's plane exit at once). So a q/k/v exchange reads each element once and
writes it once, in one kernel, instead of a cat of contiguous copies.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from cosmos_kernels import _alloc
from cosmos_kernels.triton import AotSpec
from cosmos_kernels.reference.ulysses import chunk_columns, split_sizes

TILE = 4096          # elements per program: 8 KiB of bf16, 16 per thread at 8 warps
NUM_WARPS = 8        # (4 warps spill when the runtime cannot vectorize: unaligned shapes)
MAX_BLOCK_M = 1024
MAX_TENSORS = 3      # tensors per launch; longer lists take several launches


@triton.jit
def _copy_plane(SRC, DST, A, M, ssa, ssp, dsa, dsp, tile, p,
                BLOCK_A: tl.constexpr, BLOCK_M: tl.constexpr):
    m_tiles = tl.cdiv(M, BLOCK_M)
    a0 = (tile // m_tiles) * BLOCK_A
    if a0 < A:
        a = (a0 + tl.arange(0, BLOCK_A)).to(tl.int64)
        m = (tile % m_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (a < A)[:, None] & (m < M)[None, :]
        v = tl.load(SRC + p * ssp + a[:, None] * ssa + m[None, :], mask=mask)
        tl.store(DST + p * dsp + a[:, None] * dsa + m[None, :], v, mask=mask)


@triton.jit
def _ulysses_copy(S0, D0, A0, M0, ssa0, ssp0, dsa0, dsp0,
                  S1, D1, A1, M1, ssa1, ssp1, dsa1, dsp1,
                  S2, D2, A2, M2, ssa2, ssp2, dsa2, dsp2,
                  NUM: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_M: tl.constexpr):
    tile = tl.program_id(0)
    p = tl.program_id(1).to(tl.int64)
    which = tl.program_id(2)
    if which == 0:
        _copy_plane(S0, D0, A0, M0, ssa0, ssp0, dsa0, dsp0, tile, p, BLOCK_A, BLOCK_M)
    if NUM > 1:
        if which == 1:
            _copy_plane(S1, D1, A1, M1, ssa1, ssp1, dsa1, dsp1, tile, p, BLOCK_A, BLOCK_M)
    if NUM > 2:
        if which == 2:
            _copy_plane(S2, D2, A2, M2, ssa2, ssp2, dsa2, dsp2, tile, p, BLOCK_A, BLOCK_M)


def blocks_for(planes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(BLOCK_A, BLOCK_M) for a launch over (A, M) planes: rows up to MAX_BLOCK_M wide, as many
    rows as fill a TILE; with fewer rows than that (A = batch, the head->seq side), wider rows."""
    max_a = triton.next_power_of_2(max(a for a, _ in planes))
    max_m = triton.next_power_of_2(max(m for _, m in planes))
    block_m = min(MAX_BLOCK_M, max_m)
    block_a = min(TILE // block_m, max_a)
    return block_a, min(max_m, TILE // block_a)


def _launch(jobs: list[tuple], world: int) -> None:
    """jobs: (src, dst, A, M, ssa, ssp, dsa, dsp) per tensor; launched MAX_TENSORS at a time."""
    for start in range(0, len(jobs), MAX_TENSORS):
        group = jobs[start:start + MAX_TENSORS]
        block_a, block_m = blocks_for([(j[2], j[3]) for j in group])
        tiles = max(triton.cdiv(a, block_a) * triton.cdiv(m, block_m) for _, _, a, m, *_ in group)
        padded = group + [group[0]] * (MAX_TENSORS - len(group))  # unused slots, never read (NUM)
        args = [x for job in padded for x in job]
        _ulysses_copy[(tiles, world, len(group))](*args, NUM=len(group), BLOCK_A=block_a, BLOCK_M=block_m,
                                                  num_warps=NUM_WARPS)


def _plane_view(x: torch.Tensor, dim: int, world: int) -> torch.Tensor:
    """x as (A, P, M) with unit stride along M; copies only a layout that cannot be viewed so."""
    a, m = split_sizes(x.shape, dim, world)
    try:
        v = x.view(a, world, m)
    except RuntimeError:
        v = x.reshape(a, world, m).contiguous()
    return v if m <= 1 or v.stride(2) == 1 else v.contiguous()


def pack(xs: Sequence[torch.Tensor], scatter_dim: int, world: int) -> torch.Tensor:
    cols = chunk_columns([x.shape for x in xs], world)
    chunk = sum(cols)
    buf = _alloc.empty(world, chunk, dtype=xs[0].dtype, device=xs[0].device)
    flat = buf.view(-1)
    jobs, off = [], 0
    for x, n in zip(xs, cols):
        v = _plane_view(x, scatter_dim, world)
        a, _, m = v.shape
        jobs.append((v, flat[off:], a, m, v.stride(0), v.stride(1), m, chunk))
        off += n
    _launch(jobs, world)
    return buf


def unpack(buf: torch.Tensor, shapes: Sequence[Sequence[int]], gather_dim: int, world: int) -> list[torch.Tensor]:
    chunk = buf.shape[1]
    flat = buf.reshape(-1)
    jobs, outs, off = [], [], 0
    for shape, n in zip(shapes, chunk_columns(shapes, world)):
        a, m = split_sizes(shape, gather_dim, world)
        out = _alloc.empty(*shape, dtype=buf.dtype, device=buf.device)
        jobs.append((flat[off:], out, a, m, m, chunk, world * m, m))
        outs.append(out)
        off += n
    _launch(jobs, world)
    return outs


def _aot_specs() -> list[AotSpec]:
    """The launches of the paper's shapes (B = 1) on an H100, bf16: three tensors (q, k, v; dq, dk,
    dv) and one (out; dout) for the 2B (16 heads × 128) and 14B (40 × 128) models at CP 2/4/8.
    Seq->head pack and head->seq unpack have A = S/P rows of M = (H/P)·128 ∈ {1024, 512, 256,
    2560, 1280, 640}: tiles (4, 1024), (8, 512), (16, 256); head->seq pack and seq->head unpack
    have A = B = 1 row of M = (S/P)·(H/P)·128: tile (1, 4096)."""
    names = [f"{k}{i}" for i in range(3) for k in ("S", "D", "A", "M", "ssa", "ssp", "dsa", "dsp")]
    sig = {n: ("*bf16" if n[0] in "SD" and len(n) == 2 else "i32") for n in names}
    sig |= {"NUM": "constexpr", "BLOCK_A": "constexpr", "BLOCK_M": "constexpr"}
    # at these shapes every pointer is 16-byte aligned and M and the strides are multiples of 16
    # (Dh = 128), which the runtime specializes on; A (rows: B·S/P tokens) need not be
    aligned = tuple(n for n in names if not n.startswith("A"))
    specs = []
    for num in (3, 1):
        for block_m in (1024, 512, 256, 4096):
            const = {"NUM": num, "BLOCK_A": TILE // block_m, "BLOCK_M": block_m}
            specs.append(AotSpec(f"ulysses_copy[bf16,NUM={num},BLOCK_M={block_m}]", _ulysses_copy,
                                 dict(sig), const, num_warps=NUM_WARPS, aligned=aligned))
    # head dims that are not multiples of 8 (no 16-byte vectors): the scalar-access variant
    specs.append(AotSpec("ulysses_copy[bf16,NUM=3,BLOCK_M=1024,unaligned]", _ulysses_copy, dict(sig),
                         {"NUM": 3, "BLOCK_A": TILE // 1024, "BLOCK_M": 1024}, num_warps=NUM_WARPS))
    return specs


AOT_SPECS = _aot_specs()
