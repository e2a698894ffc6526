"""3D neighborhood attention with NATTEN `na3d` semantics (sparse self-attention of the DiT).

    neighborhood_attention_3d(q, k, v, grid, kernel_size, dilation=1, stride=1, is_causal=False,
                              softmax_scale=None, *, backend=None) -> out

q, k, v, out: (B, S, heads, D) with S = T*H*W tokens in t-major order on `grid` = (T, H, W). Each
query attends to the keys of its window (kernel_size per axis; the window shifts inwards at the
borders so it stays full, dilation splits an axis into interleaved groups, queries of a stride group
share their leader's window, causal per axis): see cosmos_kernels/reference/neighborhood_attention.py
for the exact definition and cosmos_kernels/triton/neighborhood_attention.py for the tiling.
kernel_size, dilation and stride take an int (all axes) or a 3-tuple; is_causal a bool or a 3-tuple.
As in NATTEN: kernel_size * dilation <= grid and stride <= kernel_size on every axis; even kernel
sizes are allowed (one more key on the left). Unlike NATTEN, kernel_size 1 is accepted (the only
size a length-1 axis allows, so an image grid (1, H, W) is a valid input).

Differentiable in reverse mode (fused dq and dk/dv kernels from the saved log-sum-exp; the
log-sum-exp output of the op is differentiable too) and in forward mode (torch.func.jvp: one fused
tangent pass that reuses the forward's out and log-sum-exp), O(S) memory in all of them.

For the DiT: `NeighborhoodWindow` is one block's window as the official configs write it (-1 =
full axis, sizes for a base grid scaled to the actual one, dense attention for images);
`attended_pairs` counts the (query, key) pairs of a neighborhood (the FLOP counter's S_q·S_k).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from cosmos_kernels import _validate as V
from cosmos_kernels import dispatch
from cosmos_kernels._op import differentiable
from cosmos_kernels.reference import compute_dtype
from cosmos_kernels.reference import neighborhood_attention as ref

OP = "neighborhood_attention_3d"

MAX_HEAD_DIM = 128  # the Triton launches the compile report verifies spill-free (D = 64, 128)


# ---------------------------------------------------------------------------------------------
# argument normalisation and checks
# ---------------------------------------------------------------------------------------------
def _triple(name: str, value, kind: type, op: str = OP) -> tuple:
    """An int/bool or a 3-sequence of them -> 3-tuple of Python ints/bools (bool is not an int)."""
    def ok(x):
        if kind is bool:
            return isinstance(x, bool)
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)
    if ok(value):
        return (kind(value),) * 3
    if isinstance(value, (tuple, list, torch.Size)) and len(value) == 3 and all(ok(x) for x in value):
        return tuple(kind(x) for x in value)
    raise TypeError(f"{op}: {name}={value!r} must be {'a bool' if kind is bool else 'an int'} or a sequence "
                    f"of 3 (one per axis t, h, w)")


def resolve_geometry(grid, kernel_size, dilation=1, stride=1, is_causal=False, op: str = OP):
    """Normalised, checked 3-tuples (grid, kernel_size, dilation, stride, is_causal)."""
    grid = _triple("grid", grid, int, op)
    kernel_size = _triple("kernel_size", kernel_size, int, op)
    dilation = _triple("dilation", dilation, int, op)
    stride = _triple("stride", stride, int, op)
    is_causal = _triple("is_causal", is_causal, bool, op)
    for name, vals in (("grid", grid), ("kernel_size", kernel_size), ("dilation", dilation), ("stride", stride)):
        if any(x < 1 for x in vals):
            raise ValueError(f"{op}: {name}={vals} must be >= 1 on every axis")
    for ax, axis in enumerate("thw"):
        if kernel_size[ax] * dilation[ax] > grid[ax]:
            raise ValueError(
                f"{op}: kernel_size * dilation must not exceed the grid on any axis; axis {axis}: "
                f"kernel_size={kernel_size[ax]} * dilation={dilation[ax]} > grid size {grid[ax]} "
                f"(grid={grid}, kernel_size={kernel_size}, dilation={dilation})")
        if stride[ax] > kernel_size[ax]:
            raise ValueError(f"{op}: stride must not exceed kernel_size on any axis; axis {axis}: "
                             f"stride={stride[ax]} > kernel_size={kernel_size[ax]}")
    return grid, kernel_size, dilation, stride, is_causal


def attended_pairs(grid, kernel_size, dilation=1, stride=1, is_causal=False) -> int:
    """(query, key) pairs a neighborhood attends per batch element and head (= S² when dense).
    Attention FLOPs are 4 · B · heads · pairs · D forward (DESIGN.md "MFU")."""
    return ref.attended_pairs(*resolve_geometry(grid, kernel_size, dilation, stride, is_causal, "attended_pairs"))


def _check_qkv(q, k, v, grid):
    for name, t in (("q", q), ("k", k), ("v", v)):
        V.check_tensor(name, t, ndim=4, op=OP)
        V.check_last_dim_contiguous(OP, name, t)
    V.check_shape(OP, "k", k, tuple(q.shape))
    V.check_shape(OP, "v", v, tuple(q.shape))
    V.check_same_device(OP, q=q, k=k, v=v)
    V.check_same_dtype(OP, q=q, k=k, v=v)
    B, S, H, D = q.shape
    if D == 0:
        raise ValueError(f"{OP}: q has head dim D=0 (shape {tuple(q.shape)}, (B, S, heads, D)); D must be >= 1")
    if grid[0] * grid[1] * grid[2] != S:
        raise ValueError(f"{OP}: grid={grid} has {grid[0] * grid[1] * grid[2]} tokens but q has S={S} "
                         f"(q shape {tuple(q.shape)} is (B, S, heads, D) with S = T*H*W)")


def _check_backend(q, backend):
    V.check_backend_dtype(OP, backend, q)
    D = q.shape[-1]
    if backend == "triton" and D > MAX_HEAD_DIM:
        raise ValueError(f"{OP}: head dim D={D} is not supported by backend 'triton' (D <= {MAX_HEAD_DIM})")


def _triton():
    from cosmos_kernels.triton import neighborhood_attention as triton_impl
    return triton_impl


def _geometry(grid, kernel_size, dilation, stride, is_causal):
    return _triton().Geometry(tuple(grid), tuple(kernel_size), tuple(dilation), tuple(stride),
                              tuple(bool(c) for c in is_causal))


def _contiguous(tensors):
    # every backend returns fresh contiguous tensors (what the fake implementations promise)
    return tuple(t.contiguous() for t in tensors)


# ---------------------------------------------------------------------------------------------
# custom ops: forward (out, lse), backward (dq, dk, dv), JVP (t_out, t_lse)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("cosmos_kernels::neighborhood_attention_3d", mutates_args=())
def _na3d_op(q: Tensor, k: Tensor, v: Tensor, grid: list[int], kernel_size: list[int], dilation: list[int],
             stride: list[int], is_causal: list[bool], scale: float, backend: str) -> tuple[Tensor, Tensor]:
    if backend == "triton":
        return _triton().forward(q, k, v, _geometry(grid, kernel_size, dilation, stride, is_causal), scale)
    return _contiguous(ref.neighborhood_attention_3d(q, k, v, grid, kernel_size, dilation, stride, is_causal, scale))


@_na3d_op.register_fake
def _(q, k, v, grid, kernel_size, dilation, stride, is_causal, scale, backend):
    B, S, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, S), dtype=compute_dtype(q))


@torch.library.custom_op("cosmos_kernels::neighborhood_attention_3d_bwd", mutates_args=())
def _na3d_bwd_op(grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                 lse: Tensor, grid: list[int], kernel_size: list[int], dilation: list[int], stride: list[int],
                 is_causal: list[bool], scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _triton().backward(grad_out, grad_lse, q, k, v, out, lse,
                                       _geometry(grid, kernel_size, dilation, stride, is_causal), scale)
    return _contiguous(ref.neighborhood_attention_3d_backward(grad_out, grad_lse, q, k, v, grid, kernel_size, dilation,
                                                              stride, is_causal, scale))


@_na3d_bwd_op.register_fake
def _(grad_out, grad_lse, q, k, v, out, lse, grid, kernel_size, dilation, stride, is_causal, scale, backend):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.custom_op("cosmos_kernels::neighborhood_attention_3d_jvp", mutates_args=())
def _na3d_jvp_op(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor, out: Tensor, lse: Tensor,
                 grid: list[int], kernel_size: list[int], dilation: list[int], stride: list[int],
                 is_causal: list[bool], scale: float, backend: str) -> tuple[Tensor, Tensor]:
    """(t_out, t_lse). `out`, `lse` are the forward's results: the Triton kernel reuses them (one
    pass, no online softmax); the reference recomputes everything from q, k, v."""
    if backend == "triton":
        return _triton().jvp(q, k, v, tq, tk, tv, out, lse, _geometry(grid, kernel_size, dilation, stride, is_causal),
                             scale)
    return _contiguous(ref.neighborhood_attention_3d_jvp(q, k, v, tq, tk, tv, grid, kernel_size, dilation, stride,
                                                         is_causal, scale))


@_na3d_jvp_op.register_fake
def _(q, k, v, tq, tk, tv, out, lse, grid, kernel_size, dilation, stride, is_causal, scale, backend):
    B, S, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, S), dtype=compute_dtype(q))


def _setup(ctx, inputs, output):
    q, k, v, *geometry, scale, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.geometry, ctx.scale, ctx.backend = geometry, scale, backend


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = _na3d_bwd_op(grad_out, grad_lse, q, k, v, out, lse, *ctx.geometry, ctx.scale, ctx.backend)
    return dq, dk, dv, None, None, None, None, None, None, None


def _jvp(ctx, tq, tk, tv, *_):
    q, k, v, out, lse = ctx.saved_tensors  # inputs, then outputs (jvp_saves_outputs)
    tq, tk, tv = (t if t is not None else torch.zeros_like(p) for t, p in ((tq, q), (tk, k), (tv, v)))
    return _na3d_jvp_op(q, k, v, tq, tk, tv, out, lse, *ctx.geometry, ctx.scale, ctx.backend)


_na3d = differentiable(_na3d_op, _setup, _backward, _jvp, name=OP, jvp_saves_outputs=True)


def neighborhood_attention_3d(q: Tensor, k: Tensor, v: Tensor, grid, kernel_size, dilation=1, stride=1,
                              is_causal=False, softmax_scale: float | None = None, *,
                              backend: str | None = None) -> Tensor:
    """Neighborhood attention of q, k, v (B, S, heads, D) on the token grid (T, H, W); see the
    module docstring. softmax_scale defaults to D ** -0.5."""
    geometry = resolve_geometry(grid, kernel_size, dilation, stride, is_causal)
    _check_qkv(q, k, v, geometry[0])
    backend = dispatch.backend_for(OP, q, backend)
    _check_backend(q, backend)
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    scale = V.check_real(OP, "softmax_scale", softmax_scale, positive=True)
    out, _ = _na3d(q, k, v, *(list(g) for g in geometry), scale, backend)
    return out


# ---------------------------------------------------------------------------------------------
# per-block windows of the DiT
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NeighborhoodWindow:
    """One DiT block's sparse-attention window, written as the official configs write it.

    kernel_size entries <= 1 (the official -1) mean "the full axis". With `base_grid` (official
    `base_size`; entries <= 0 mean "the actual size") the sizes are for that grid and are scaled to
    the actual one as the official code does: kernel round(k·s) clipped to [2, L], stride
    round(st·s) clipped to [1, kernel], dilation round(d·s) clipped to [1, L // kernel], with
    s = L / base. A grid with T == 1 (images) attends densely.
    """
    kernel_size: int | tuple
    dilation: int | tuple = 1
    stride: int | tuple = 1
    is_causal: bool | tuple = False
    base_grid: tuple | None = None

    def resolve(self, grid) -> dict | None:
        """The neighborhood_attention_3d keyword arguments for `grid`, checked against it, or None
        for dense attention (T == 1)."""
        op = "NeighborhoodWindow.resolve"
        grid = _triple("grid", grid, int, op)
        if grid[0] == 1:
            return None
        kernel = tuple(k if k > 1 else g for k, g in zip(_triple("kernel_size", self.kernel_size, int, op), grid))
        stride = _triple("stride", self.stride, int, op)
        dilation = _triple("dilation", self.dilation, int, op)
        if self.base_grid is not None:
            base = tuple(b if b > 0 else g for b, g in zip(_triple("base_grid", self.base_grid, int, op), grid))
            scale = tuple(g / b for g, b in zip(grid, base))
            kernel = tuple(min(max(2, round(k * s)), g) for k, s, g in zip(kernel, scale, grid))
            stride = tuple(min(max(1, round(st * s)), k) for st, s, k in zip(stride, scale, kernel))
            dilation = tuple(min(max(1, round(d * s)), g // k) for d, s, g, k in zip(dilation, scale, grid, kernel))
        _, kernel, dilation, stride, causal = resolve_geometry(grid, kernel, dilation, stride, self.is_causal, op)
        return dict(kernel_size=kernel, dilation=dilation, stride=stride, is_causal=causal)

    def density(self, grid) -> float:
        """Attended fraction of the S² (query, key) pairs on `grid` (1.0 when dense)."""
        params = self.resolve(grid)
        if params is None:
            return 1.0
        return attended_pairs(grid, **params) / float(grid[0] * grid[1] * grid[2]) ** 2

    def attention(self, q: Tensor, k: Tensor, v: Tensor, grid, softmax_scale: float | None = None, *,
                  backend: str | None = None) -> Tensor:
        """Attention of q, k, v (B, S, heads, D) on `grid` with this window (dense for T == 1)."""
        params = self.resolve(grid)
        if params is None:  # the full grid as the window is exactly dense attention
            params = dict(kernel_size=tuple(grid))
        return neighborhood_attention_3d(q, k, v, tuple(grid), softmax_scale=softmax_scale, backend=backend, **params)
