"""Ulysses context parallelism: all-to-all between sequence shards and head shards, and an
attention wrapper that uses it.

    ulysses_all_to_all(x, group, scatter_dim, gather_dim)
        x (a tensor, or a list/tuple of tensors such as q, k, v) split along scatter_dim across the
        P ranks of `group` and gathered along gather_dim: (B, S/P, H, D) -> (B, S, H/P, D) with
        (scatter_dim, gather_dim) = (2, 1), and back with (1, 2). Several tensors travel in ONE
        torch.distributed.all_to_all_single (NCCL on GPUs, gloo on CPUs); the packing into that
        one buffer and the unpacking after it are one fused kernel each (cosmos_kernels/triton/
        ulysses.py; the reference in cosmos_kernels/reference/ulysses.py defines the layout).
        Reverse mode: the backward is the inverse all-to-all of the gradients. Forward mode: the op
        is linear, so the tangents take the same all-to-all (torch.func.jvp works through it).

    UlyssesAttention(attn_fn, group)
        q, k, v sequence-sharded in -> all heads' whole sequence redistributed as head shards ->
        attn_fn on this rank's heads -> output(s) sequence-sharded out. Works for any attention
        op of the library (flash_attention, flash_attention_jvp, neighborhood_attention_3d): after
        the exchange each rank holds the whole sequence of its heads, so a 3D neighbourhood is
        the same as on one GPU (keyword arguments such as grid= describe the FULL sequence).

Conventions and preconditions
- group=None or a group of size 1 means no context parallelism: the all-to-all is the identity
  and UlyssesAttention is a plain call of attn_fn (not the default process group of
  torch.distributed: model code passes its context-parallel group, or None).
- Rank r of the group holds tokens [r*S/P, (r+1)*S/P) of the sequence (contiguous, rank order;
  for t-major video tokens: a block of latent frames), so S must be a multiple of P. The heads
  (the scattered dimension) must be divisible by P: a ValueError names both numbers otherwise.
- check_shapes=True (the default) verifies before the forward exchange, with one all_gather of a
  few integers, that every rank holds tensors of the same shapes: uneven shards raise a ValueError
  on every rank instead of corrupting data or hanging. It costs one tiny collective and a host
  sync per call; pass check_shapes=False where shapes are known to agree. The backward and the
  tangent exchange never check (their shapes follow from the checked forward).
- Every rank of the group must make the same calls in the same order (as for any collective);
  a rank that raises instead leaves the others blocked until the process group's timeout
  (init_process_group(timeout=...)): set it to seconds-to-minutes, not the default 30 min, in tests.
- torch.compile traces the exchange (no graph break): under compilation it is the packing op, a
  functional all-to-all (torch.distributed._functional_collectives, differentiable, which the
  compiler can schedule against compute) and the unpacking op, each with its backward; eager mode
  without overlap keeps one autograd.Function that also has the forward-mode rule. Compiled code is
  reverse-mode only (forward mode through a compiled exchange is not supported), and check_shapes is
  skipped there (it needs a host sync): the compiled graph is specialised to its shapes.

Overlap (UlyssesAttention(..., overlap_chunks=C)): the heads are cut into C chunks, every chunk's
q/k/v exchange is issued before the first attention runs (functional collectives are asynchronous:
a chunk waits for its data where it is first used), and each chunk's output goes back while the next
chunk's attention computes, so the exchange of chunk c+1 and the return of chunk c hide behind the
attention of chunk c. Attention is independent per head, so the result equals C = 1 (same values; the
head order is restored). Needs heads divisible by C × P. Under forward mode (torch.func.jvp) the
chunks exchange synchronously (the autograd.Function path). C = 1 (the default) until a GPU
measurement shows the split pays (a chunk's attention must outlast its exchange).

Per-batch switch (context parallel on for video, off for image batches): `module.enabled = False`
on one UlyssesAttention, or `with cosmos_kernels.ulysses.disabled(): ...` for all of them. While
disabled every rank must hold the FULL sequence (and all heads); the call is attn_fn unchanged.
The switch is read when the forward runs, so keep the backward inside the `with` block:
activation checkpointing re-runs the forward during backward and must take the same path.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor

from cosmos_kernels import _alloc, dispatch
from cosmos_kernels import _validate as V
from cosmos_kernels.reference import ulysses as ref

OP = "ulysses_all_to_all"


def _impl(backend: str):
    if backend == "triton":
        from cosmos_kernels.triton import ulysses as triton_impl
        return triton_impl
    return ref


# ---------------------------------------------------------------------------------------------
# pack / unpack kernels as custom ops (the communication itself is torch.distributed)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("cosmos_kernels::ulysses_pack", mutates_args=())
def _pack_op(xs: list[Tensor], scatter_dim: int, world: int, backend: str) -> Tensor:
    return _impl(backend).pack(xs, scatter_dim, world)


@_pack_op.register_fake
def _(xs, scatter_dim, world, backend):
    cols = sum(ref.chunk_columns([x.shape for x in xs], world))
    return xs[0].new_empty(world, cols)


@torch.library.custom_op("cosmos_kernels::ulysses_unpack", mutates_args=())
def _unpack_op(buf: Tensor, shapes: list[int], ndim: int, gather_dim: int, world: int,
               backend: str) -> list[Tensor]:
    return _impl(backend).unpack(buf, _unflatten(shapes, ndim), gather_dim, world)


@_unpack_op.register_fake
def _(buf, shapes, ndim, gather_dim, world, backend):
    return [buf.new_empty(s) for s in _unflatten(shapes, ndim)]


def _unflatten(flat: Sequence[int], ndim: int) -> list[list[int]]:
    return [list(flat[i:i + ndim]) for i in range(0, len(flat), ndim)]


def _flat_shapes(ts) -> list[int]:
    return [n for t in ts for n in t.shape]


# pack and unpack are each other's inverse on one side of the wire (reference/ulysses.py): the
# gradient of pack along scatter_dim is unpack along the same dim to the input shapes, and back
def _pack_setup(ctx, inputs, output):
    xs, ctx.scatter_dim, ctx.world, ctx.backend = inputs
    ctx.flat, ctx.ndim = _flat_shapes(xs), xs[0].dim()


def _pack_backward(ctx, grad):
    grads = _unpack_op(grad.contiguous(), ctx.flat, ctx.ndim, ctx.scatter_dim, ctx.world, ctx.backend)
    return grads, None, None, None


def _unpack_setup(ctx, inputs, output):
    buf, _, _, ctx.gather_dim, ctx.world, ctx.backend = inputs
    ctx.shapes = [tuple(o.shape) for o in output]
    ctx.dtype, ctx.device = buf.dtype, buf.device


def _unpack_backward(ctx, grads):
    grads = [g if g is not None else torch.zeros(s, dtype=ctx.dtype, device=ctx.device)
             for g, s in zip(grads, ctx.shapes)]
    return _pack_op(grads, ctx.gather_dim, ctx.world, ctx.backend), None, None, None, None, None


_pack_op.register_autograd(_pack_backward, setup_context=_pack_setup)
_unpack_op.register_autograd(_unpack_backward, setup_context=_unpack_setup)


# ---------------------------------------------------------------------------------------------
# the exchange and its autograd
# ---------------------------------------------------------------------------------------------
class _Exchange:
    """What one all-to-all needs besides its tensors (a plain object: autograd.Function takes it
    as a non-tensor argument)."""

    def __init__(self, group, world: int, scatter_dim: int, gather_dim: int, backend: str):
        self.group, self.world, self.backend = group, world, backend
        self.scatter_dim, self.gather_dim = scatter_dim, gather_dim

    def inverse(self) -> _Exchange:
        return _Exchange(self.group, self.world, self.gather_dim, self.scatter_dim, self.backend)

    def _received_shapes(self, xs: Sequence[Tensor]) -> list[int]:
        return [n for x in xs for n in ref.exchanged_shape(x.shape, self.scatter_dim, self.gather_dim, self.world)]

    def __call__(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """The exchange in place (blocking), inside _AllToAll: no autograd of its own."""
        send = _pack_op(list(xs), self.scatter_dim, self.world, self.backend)
        recv = _alloc.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)
        return _unpack_op(recv, self._received_shapes(xs), xs[0].dim(), self.gather_dim, self.world, self.backend)

    def issue(self, xs: Sequence[Tensor]) -> Tensor:
        """Pack and start a functional all-to-all (traceable, differentiable; in eager mode
        asynchronous): returns the receive buffer, which waits for its data where first used."""
        send = _pack_op(list(xs), self.scatter_dim, self.world, self.backend)
        return funcol.all_to_all_single_autograd(send, None, None, self.group)

    def finish(self, recv: Tensor, xs: Sequence[Tensor]) -> list[Tensor]:
        """Unpack what issue(xs) received (waits for it)."""
        return _unpack_op(recv, self._received_shapes(xs), xs[0].dim(), self.gather_dim, self.world, self.backend)

    def functional(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """The exchange as traceable pieces (reverse mode only): the compiled path."""
        return self.finish(self.issue(xs), xs)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ex: _Exchange, *xs: Tensor):
        return tuple(ex(xs))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.ex = inputs[0]
        ctx.shapes = [x.shape for x in inputs[1:]]
        ctx.dtype, ctx.device = inputs[1].dtype, inputs[1].device

    @staticmethod
    def backward(ctx, *grads):
        # materialize_grads (the default) has turned missing gradients into zeros already
        return (None, *ctx.ex.inverse()(grads))

    @staticmethod
    def jvp(ctx, _ex_tangent, *tangents):
        # an input without a tangent moves zeros (the op is linear: its tangent is the exchange)
        return tuple(ctx.ex([t if t is not None else torch.zeros(s, dtype=ctx.dtype, device=ctx.device)
                             for t, s in zip(tangents, ctx.shapes)]))


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def group_size(group) -> int:
    """Ranks in `group`; 1 for None (no context parallelism)."""
    return 1 if group is None else dist.get_world_size(group)


def _as_list(op: str, x) -> tuple[list[Tensor], bool]:
    if isinstance(x, Tensor):
        return [x], True
    if isinstance(x, (list, tuple)) and x and all(isinstance(t, Tensor) for t in x):
        return list(x), False
    got = type(x).__name__
    if isinstance(x, (list, tuple)):
        got += f" of {[type(t).__name__ for t in x]}"
    raise TypeError(f"{op}: x must be a tensor or a non-empty list/tuple of tensors, got {got}")


def _dim(op: str, name: str, dim, ndim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"{op}: {name}={dim!r} is not a dimension of a {ndim}-d tensor")
    return dim % ndim


def _check_inputs(op: str, xs: list[Tensor], scatter_dim, gather_dim, world: int) -> tuple[int, int]:
    names = ["x"] if len(xs) == 1 else [f"x[{i}]" for i in range(len(xs))]
    for n, t in zip(names, xs):
        V.check_tensor(n, t, op=op)
        if t.dim() != xs[0].dim():
            raise ValueError(f"{op}: {n} has {t.dim()} dimensions but {names[0]} has {xs[0].dim()}; "
                             "the tensors exchanged together must have the same number of dimensions")
    V.check_same_device(op, **dict(zip(names, xs)))
    V.check_same_dtype(op, **dict(zip(names, xs)))
    ndim = xs[0].dim()
    scatter_dim = _dim(op, "scatter_dim", scatter_dim, ndim)
    gather_dim = _dim(op, "gather_dim", gather_dim, ndim)
    if scatter_dim == gather_dim:
        raise ValueError(f"{op}: scatter_dim and gather_dim are both {scatter_dim}; they must differ")
    for n, t in zip(names, xs):
        size = t.shape[scatter_dim]
        if size % world:
            what = " (heads)" if ndim == 4 and scatter_dim == 2 else ""
            raise ValueError(f"{op}: {n} has size {size}{what} along scatter_dim={scatter_dim}, which is not "
                             f"divisible by the group size {world}; {size} % {world} = {size % world}")
    return scatter_dim, gather_dim


_SIG_SHAPES, _SIG_DIMS = 3, 8


def _signature(xs: list[Tensor], scatter_dim: int, gather_dim: int) -> list[int]:
    """Fixed-length integers that agree across ranks iff the exchange is well formed."""
    shapes = tuple(tuple(x.shape) for x in xs)
    head = [len(xs), xs[0].dim(), scatter_dim, gather_dim, V.FLOAT_DTYPES.index(xs[0].dtype),
            hash(shapes) & ((1 << 62) - 1)]
    dims = []
    for s in shapes[:_SIG_SHAPES]:
        dims += list(s[:_SIG_DIMS]) + [-1] * (_SIG_DIMS - min(len(s), _SIG_DIMS))
    return head + dims + [-1] * (_SIG_SHAPES * _SIG_DIMS - len(dims))


def _check_across_ranks(op: str, xs: list[Tensor], scatter_dim: int, gather_dim: int, group, world: int):
    mine = torch.tensor(_signature(xs, scatter_dim, gather_dim), dtype=torch.int64, device=xs[0].device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    every = [e.tolist() for e in every]
    if all(e == every[0] for e in every):
        return

    def describe(sig):
        n, ndim, s, g, dt = sig[:5]
        starts = [6 + i * _SIG_DIMS for i in range(min(n, _SIG_SHAPES))]
        shapes = [tuple(sig[s0:s0 + min(ndim, _SIG_DIMS)]) for s0 in starts]
        more = f" +{n - _SIG_SHAPES} more" if n > _SIG_SHAPES else ""
        return f"{shapes}{more} {str(V.FLOAT_DTYPES[dt])[6:]} scatter_dim={s} gather_dim={g}"

    ranks = "; ".join(f"rank {r}: {describe(e)}" for r, e in enumerate(every))
    raise ValueError(f"{op}: the ranks of the group hold different inputs ({ranks}). Every rank must hold "
                     "tensors of the same shapes: an equal, contiguous shard of the sequence (S/P tokens "
                     "each, S a multiple of the group size), the same heads, batch and dtype")


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def _has_tangents(xs: Sequence[Tensor]) -> bool:
    """Whether forward mode (torch.func.jvp or forward_ad) carries a tangent on any input."""
    if torch.compiler.is_compiling():
        return False  # compiled code is reverse-mode only (module docstring)
    return any(fwAD.unpack_dual(x).tangent is not None for x in xs)


def _resolve_backend(xs: Sequence[Tensor], backend: str | None) -> str:
    backend = dispatch.backend_for(OP, xs[0], backend)
    V.check_backend_dtype(OP, backend, xs[0])
    return backend


def ulysses_all_to_all(x, group, scatter_dim: int, gather_dim: int, *, check_shapes: bool = True,
                       backend: str | None = None):
    """All-to-all over `group`: split scatter_dim into P parts (part p to rank p), concatenate the
    parts received along gather_dim in rank order. x: a tensor, or a list/tuple of tensors (same
    ndim, dtype, device; shapes may differ) exchanged together in one all_to_all_single; returns
    a tensor, or a tuple in the same order. See the module docstring for the preconditions."""
    xs, single = _as_list(OP, x)
    world = group_size(group)
    scatter_dim, gather_dim = _check_inputs(OP, xs, scatter_dim, gather_dim, world)
    backend = _resolve_backend(xs, backend)
    if world == 1:
        return x if single else tuple(xs)
    ex = _Exchange(group, world, scatter_dim, gather_dim, backend)
    if torch.compiler.is_compiling():
        out = tuple(ex.functional(xs))
    else:
        if check_shapes:
            _check_across_ranks(OP, xs, scatter_dim, gather_dim, group, world)
        out = _AllToAll.apply(ex, *xs)
    return out[0] if single else out


_DISABLED = 0


@contextlib.contextmanager
def disabled():
    """Turn every UlyssesAttention into a plain attn_fn call inside the block (image batches).
    Process-wide (not per thread), so the backward, run by autograd's threads, sees it too."""
    global _DISABLED
    _DISABLED += 1
    try:
        yield
    finally:
        _DISABLED -= 1


def is_disabled() -> bool:
    return _DISABLED > 0


class UlyssesAttention(torch.nn.Module):
    """attn_fn(q, k, v, ...) on (B, S, H, D) tensors, context-parallel over `group`.

    Positional tensor arguments are sequence-sharded (B, S/P, H, D) unless their index is in
    `replicated` (e.g. replicated=(1, 2) for cross-attention to text tokens that every rank
    holds whole: (B, L, H, D)). The sharded ones are exchanged together to (B, S, H/P, D) in one
    all-to-all; the replicated ones are sliced to this rank's heads locally. attn_fn runs on the
    head shard; its output tensor(s) (B, S, H/P, D) go back to (B, S/P, H, D) in one all-to-all.
    flash_attention_jvp(q, k, v, q_t, k_t, v_t) works the same way: six sharded inputs, two
    outputs (use replicated=(1, 2, 4, 5) for its cross-attention).

    overlap_chunks=C pipelines the exchange with attention over C head chunks (module docstring);
    attn_fn must then treat heads independently (every attention op of the library does).

    Cross-attention note: dense softmax attention is independent per query row, so a plain local
    call on the sequence shard (no wrapper) gives the same result without communication; the
    `replicated` path is for attention functions that need the whole query sequence.
    """

    def __init__(self, attn_fn: Callable, group=None, *, replicated: Sequence[int] = (),
                 check_shapes: bool = True, backend: str | None = None, overlap_chunks: int = 1):
        super().__init__()
        if not callable(attn_fn):
            raise TypeError(f"UlyssesAttention: attn_fn must be callable, got {type(attn_fn).__name__}")
        if isinstance(overlap_chunks, bool) or not isinstance(overlap_chunks, int) or overlap_chunks < 1:
            raise ValueError(f"UlyssesAttention: overlap_chunks must be a positive int, got {overlap_chunks!r}")
        self.attn_fn = attn_fn
        self.group = group
        self.replicated = tuple(replicated)
        self.check_shapes = check_shapes
        self.backend = backend
        self.overlap_chunks = overlap_chunks
        self.enabled = True

    def active(self) -> bool:
        """Whether the next call is context-parallel (otherwise a plain attn_fn call)."""
        return self.enabled and not is_disabled() and group_size(self.group) > 1

    def extra_repr(self) -> str:
        name = getattr(self.attn_fn, "__name__", type(self.attn_fn).__name__)
        return (f"attn_fn={name}, world={group_size(self.group)}, replicated={self.replicated}, "
                f"overlap_chunks={self.overlap_chunks}, enabled={self.enabled}")

    def forward(self, *args, **kwargs):
        if not self.active():
            return self.attn_fn(*args, **kwargs)
        op = "UlyssesAttention"
        world, rank = group_size(self.group), dist.get_rank(self.group)
        sharded = [i for i, a in enumerate(args) if isinstance(a, Tensor) and i not in self.replicated]
        if not sharded:
            raise ValueError(f"{op}: no sequence-sharded tensor among the positional arguments "
                             f"(replicated={self.replicated})")
        chunks = self.overlap_chunks
        for i in (*sharded, *(j for j in self.replicated if j < len(args))):
            V.check_tensor(f"argument {i}", args[i], ndim=4, op=op)
            heads = args[i].shape[2]
            if heads % world:
                raise ValueError(f"{op}: argument {i} has {heads} heads, which is not divisible by "
                                 f"the context-parallel group size {world}")
            if heads % (chunks * world):
                raise ValueError(f"{op}: argument {i} has {heads} heads, which overlap_chunks={chunks} cannot "
                                 f"split: heads must be divisible by overlap_chunks x group size = {chunks * world}")
        if chunks == 1:
            heads = ulysses_all_to_all([args[i] for i in sharded], self.group, 2, 1,
                                       check_shapes=self.check_shapes, backend=self.backend)
            out = self.attn_fn(*self._arguments(args, sharded, heads, rank, world, 0, args[sharded[0]].shape[2]),
                               **kwargs)
            return self._to_sequence_shards(op, out)
        return self._overlapped(op, args, kwargs, sharded, rank, world, chunks)

    def _arguments(self, args, sharded, exchanged, rank, world, head0, width) -> list:
        """attn_fn's positional arguments for heads [head0, head0 + width) of the whole sequence:
        the sharded ones as exchanged (this rank's width / P of them), the replicated ones sliced."""
        new = list(args)
        for i, t in zip(sharded, exchanged):
            new[i] = t
        per_rank = width // world
        for i in self.replicated:
            if i < len(args):
                new[i] = args[i][:, :, head0 + rank * per_rank:head0 + (rank + 1) * per_rank]
        return new

    def _to_sequence_shards(self, op: str, out):
        items, idx = _output_tensors(op, out)
        back = ulysses_all_to_all([items[i] for i in idx], self.group, 1, 2, check_shapes=False,
                                  backend=self.backend)
        return _rebuild(out, items, idx, back)

    def _overlapped(self, op, args, kwargs, sharded, rank, world, chunks):
        """overlap_chunks > 1: head chunks pipelined (module docstring). Every chunk's exchange is
        issued before the first attention; chunk c waits only for its own data, and its output
        leaves while chunk c + 1 attends."""
        whole = [args[i] for i in sharded]
        _check_inputs(op, whole, 2, 1, world)
        backend = _resolve_backend(whole, self.backend)
        width = whole[0].shape[2] // chunks
        parts = [[t[:, :, c * width:(c + 1) * width] for t in whole] for c in range(chunks)]
        if _has_tangents(whole):  # forward mode: the blocking exchange (it has the tangent rule)
            outs = []
            for c, part in enumerate(parts):
                heads = ulysses_all_to_all(part, self.group, 2, 1, check_shapes=self.check_shapes and c == 0,
                                           backend=backend)
                out = self.attn_fn(*self._arguments(args, sharded, heads, rank, world, c * width, width), **kwargs)
                outs.append(self._to_sequence_shards(op, out))
            return _concat_heads(outs)
        if self.check_shapes and not torch.compiler.is_compiling():
            _check_across_ranks(op, whole, 2, 1, self.group, world)
        to_heads = _Exchange(self.group, world, 2, 1, backend)
        to_sequence = to_heads.inverse()
        received = [to_heads.issue(part) for part in parts]
        sent = []
        for c, (part, recv) in enumerate(zip(parts, received)):
            heads = to_heads.finish(recv, part)
            out = self.attn_fn(*self._arguments(args, sharded, heads, rank, world, c * width, width), **kwargs)
            items, idx = _output_tensors(op, out)
            sent.append((out, items, idx, to_sequence.issue([items[i] for i in idx])))
        outs = [_rebuild(out, items, idx, to_sequence.finish(recv, [items[i] for i in idx]))
                for out, items, idx, recv in sent]
        return _concat_heads(outs)


def _output_tensors(op: str, out) -> tuple[list, list[int]]:
    """attn_fn's output as a list of items and the indices of its tensors (to send back)."""
    items = [out] if isinstance(out, Tensor) else list(out)
    idx = [i for i, t in enumerate(items) if isinstance(t, Tensor)]
    for i in idx:
        if items[i].dim() != 4:
            raise ValueError(f"{op}: attn_fn output {i} has shape {tuple(items[i].shape)}; expected "
                             "(B, S, H/P, D) tensors to send back to sequence shards")
    return items, idx


def _rebuild(out, items: list, idx: list[int], back: Sequence[Tensor]):
    """attn_fn's output structure with its tensors replaced by `back`."""
    items = list(items)
    for i, t in zip(idx, back):
        items[i] = t
    return items[0] if isinstance(out, Tensor) else type(out)(items)


def _concat_heads(outs: list):
    """The head chunks' outputs (each a tensor, or a tuple/list of tensors and other values) joined
    along the head dimension in chunk order (= the global head order)."""
    if isinstance(outs[0], Tensor):
        return torch.cat(outs, dim=2)
    return type(outs[0])(torch.cat([o[i] for o in outs], dim=2) if isinstance(item, Tensor) else item
                         for i, item in enumerate(outs[0]))
