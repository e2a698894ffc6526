"""Reference (the spec) of the Ulysses packing: tensors <-> the one buffer an all-to-all exchanges.

An all-to-all over P ranks that scatters dimension `dim` of a tensor sends its p-th slice along
`dim` to rank p. Viewing the tensor as (A, P, M), with A = prod(shape[:dim]) and
M = prod(shape[dim:]) / P, that slice is [:, p, :]: a run of A rows of M contiguous elements.

Wire format, shared by pack and unpack (and the Triton kernels): a buffer (P, chunk) whose row p
is what this rank sends to (after the exchange: received from) rank p. Several tensors travel in
one buffer: tensor i occupies columns [off_i, off_i + numel_i / P) of every row, holding its
slice p laid out (A_i, M_i) row-major; off_i is the sum of numel_j / P over the tensors before it.

pack  (scatter side):  buf[p, off_i + a*M + m]  = x_i.view(A, P, M)[a, p, m]  with A, M split at scatter_dim
unpack (gather side):  out_i.view(A, P, M)[a, p, m] = buf[p, off_i + a*M + m] with A, M split at gather_dim
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cosmos_kernels import _alloc


def split_sizes(shape: Sequence[int], dim: int, world: int) -> tuple[int, int]:
    """(A, M) of the (A, P, M) view of a tensor of `shape` split into `world` parts along `dim`."""
    return math.prod(shape[:dim]), math.prod(shape[dim:]) // world


def exchanged_shape(shape: Sequence[int], scatter_dim: int, gather_dim: int, world: int) -> list[int]:
    """Shape after the all-to-all: scatter_dim divided by the group size, gather_dim multiplied."""
    out = list(shape)
    out[scatter_dim] //= world
    out[gather_dim] *= world
    return out


def chunk_columns(shapes: Sequence[Sequence[int]], world: int) -> list[int]:
    """Columns each tensor takes in a buffer row (numel / P), in order."""
    return [math.prod(s) // world for s in shapes]


def pack(xs: Sequence[torch.Tensor], scatter_dim: int, world: int) -> torch.Tensor:
    """Tensors -> one (world, chunk) send buffer."""
    cols = chunk_columns([x.shape for x in xs], world)
    buf = _alloc.empty(world, sum(cols), dtype=xs[0].dtype, device=xs[0].device)
    off = 0
    for x, n in zip(xs, cols):
        a, m = split_sizes(x.shape, scatter_dim, world)
        buf[:, off:off + n].view(world, a, m).copy_(x.reshape(a, world, m).transpose(0, 1))
        off += n
    return buf


def unpack(buf: torch.Tensor, shapes: Sequence[Sequence[int]], gather_dim: int, world: int) -> list[torch.Tensor]:
    """One received (world, chunk) buffer -> tensors of `shapes` (the shapes after the exchange)."""
    outs = []
    off = 0
    for shape, n in zip(shapes, chunk_columns(shapes, world)):
        a, m = split_sizes(shape, gather_dim, world)
        out = _alloc.empty(*shape, dtype=buf.dtype, device=buf.device)
        out.view(a, world, m).copy_(buf[:, off:off + n].view(world, a, m).transpose(0, 1))
        outs.append(out)
        off += n
    return outs


def all_to_all_emulated(per_rank: Sequence[Sequence[torch.Tensor]], scatter_dim: int, gather_dim: int
                        ) -> list[list[torch.Tensor]]:
    """What every rank holds after the exchange, computed in one process from every rank's inputs
    (per_rank[r] = rank r's tensors): rank r gets slice r along scatter_dim of every rank's tensor,
    concatenated along gather_dim in rank order. The definition the packed path must match."""
    world = len(per_rank)
    outs = []
    for r in range(world):
        mine = []
        for i in range(len(per_rank[0])):
            parts = [per_rank[src][i].chunk(world, dim=scatter_dim)[r] for src in range(world)]
            mine.append(torch.cat(parts, dim=gather_dim))
        outs.append(mine)
    return outs
