"""AdaLN family: LayerNorm + AdaLN modulation and gated residuals of the DiT block.

    adaln_modulate(x, shift, scale, eps)             h = LN(x) * (1 + scale) + shift
    gated_residual(x, y, gate)                       x + gate * y
    gated_residual_adaln(x, y, gate, shift, scale)   (x_new, h_next) in one pass

x, y: (B, L, D) tokens, t-major (L = T*N); shift/scale/gate: (B, T, D) per latent frame, or
(B, 1, D) / (B, D) for one row broadcast to every token. LayerNorm has no affine, fp32 statistics.

Dtypes: x and y share one dtype; the modulation tensors of a call share one dtype, which is
either x's or float32 (the official code runs modulation in fp32, "use_wan_fp32_strategy", while
the tokens are bf16). Outputs have x's dtype; gradients have their input's dtype.

Every op has a reverse-mode formula (custom-op backward kernels) and a forward-mode JVP rule
(JVP kernels), so `torch.func.jvp` works through the whole block (rCM distillation).
"""
from __future__ import annotations

import torch
from torch import Tensor

from cosmos_kernels import _ext, _alloc, dispatch
from cosmos_kernels import _validate as V
from cosmos_kernels._grid import row_chunks
from cosmos_kernels._op import differentiable
from cosmos_kernels.reference import compute_dtype
from cosmos_kernels.reference import adaln as ref

# The backends of these ops are in cosmos_kernels/dispatch.py OPS; prefer_cuda stays False there:
# the csrc kernels have not been timed on a GPU yet, so CUDA tensors default to Triton.

MAX_ROW_D = 8192         # the row kernels hold a full row in registers (csrc/adaln.cuh kMaxRowD)
MAX_SCALAR_ROW_D = 4096  # cuda backend, rows that are not whole 16-byte words (kMaxScalarRowD)


# ---------------------------------------------------------------------------------------------
# backends: one interface, three implementations
# ---------------------------------------------------------------------------------------------
# gated_residual(x, y, gate) -> out;  gated_residual_backward(grad, y, gate) -> (dy, dgate)
# adaln_fwd(x, y, gate, shift, scale, eps) -> (x_new | None, h, mean, rstd)
# adaln_bwd(grad_x_new, grad_h, x_new, y, gate, scale, mean, rstd) -> (dx, dy, dgate, dshift, dscale)
#     (dy, dgate None without the residual; modulation grads in fp32, cast by the op)
# adaln_jvp(x, y, gate, scale, tx, ty, tgate, tshift, tscale, eps) -> (tx_new | None, th)
# y is None for adaln_modulate, which is the same row math without the residual.
class _Reference:
    gated_residual = staticmethod(ref.gated_residual)
    gated_residual_backward = staticmethod(ref.gated_residual_backward)

    @staticmethod
    def adaln_fwd(x, y, gate, shift, scale, eps):
        if y is None:
            return (None, *ref.adaln_modulate_fwd(x, shift, scale, eps))
        return ref.gated_residual_adaln_fwd(x, y, gate, shift, scale, eps)

    @staticmethod
    def adaln_bwd(grad_x_new, grad_h, x_new, y, gate, scale, mean, rstd):
        if y is None:
            dx, dshift, dscale = ref.adaln_modulate_backward(grad_h, x_new, scale, mean, rstd, scale.dtype)
            return dx, None, None, dshift, dscale
        return ref.gated_residual_adaln_backward(grad_x_new, grad_h, x_new, y, gate, scale, mean, rstd, scale.dtype)

    @staticmethod
    def adaln_jvp(x, y, gate, scale, tx, ty, tgate, tshift, tscale, eps):
        if y is None:
            return None, ref.adaln_modulate_jvp(x, scale, tx, tshift, tscale, eps)
        return ref.gated_residual_adaln_jvp(x, y, gate, scale, tx, ty, tgate, tshift, tscale, eps)


class _Cuda:
    """csrc/adaln.cu on CUDA tensors, the host build of the same row math on CPU tensors.

    _C takes raw pointers: tokens contiguous and 16-byte aligned (so the kernels can use 16-byte
    accesses), modulation as contiguous fp32 (B, T, D) (a small cast; outputs are not affected).
    """

    @staticmethod
    def _call(name: str, like: Tensor, **args) -> None:
        params = {k: (v.data_ptr() if isinstance(v, Tensor) else v) for k, v in args.items() if v is not None}
        code = _ext.dtype_code(like)
        if like.is_cuda:
            with torch.cuda.device(like.device):
                getattr(_ext._C, f"adaln_{name}_cuda")(params, code, _ext.stream_of(like))
        else:
            getattr(_ext._C, f"adaln_{name}_host")(params, code)

    @staticmethod
    def _tok(t):
        if t is None:
            return None
        t = t.contiguous()
        return t if t.data_ptr() % 16 == 0 else t.clone()

    @staticmethod
    def _mod(t):
        return None if t is None else t.to(torch.float32).contiguous()

    @classmethod
    def gated_residual(cls, x, y, gate):
        B, L, D = x.shape
        T = gate.shape[1]
        out = _alloc.empty_like(x)
        chunks, _ = row_chunks(B * T * max(1, D // 1024), L // T)
        cls._call("gated_residual_fwd", x, x=cls._tok(x), y=cls._tok(y), gate=cls._mod(gate), x_new=out,
                  B=B, T=T, N=L // T, D=D, chunks=chunks)
        return out

    @classmethod
    def gated_residual_backward(cls, grad, y, gate):
        B, L, D = grad.shape
        T = gate.shape[1]
        chunks, _ = row_chunks(B * T * max(1, D // 1024), L // T)
        dy = _alloc.empty_like(y)
        part = _alloc.empty(B * T, chunks, D, dtype=torch.float32, device=y.device)
        dgate = _alloc.empty(B, T, D, dtype=torch.float32, device=y.device)
        cls._call("gated_residual_bwd", y, dxn=cls._tok(grad), y=cls._tok(y), gate=cls._mod(gate), dy=dy,
                  part=part, sums=dgate, B=B, T=T, N=L // T, D=D, chunks=chunks)
        return dy, dgate.to(gate.dtype)

    @classmethod
    def adaln_fwd(cls, x, y, gate, shift, scale, eps):
        B, L, D = x.shape
        T = shift.shape[1]
        h = _alloc.empty_like(x)
        x_new = None if y is None else _alloc.empty_like(x)
        mean = _alloc.empty(B, L, dtype=torch.float32, device=x.device)
        rstd = _alloc.empty(B, L, dtype=torch.float32, device=x.device)
        cls._call("fwd", x, x=cls._tok(x), y=cls._tok(y), gate=cls._mod(gate), shift=cls._mod(shift),
                  scale=cls._mod(scale), x_new=x_new, h=h, mean=mean, rstd=rstd, B=B, T=T, N=L // T, D=D,
                  chunks=row_chunks(B * T, L // T)[0], eps=float(eps), residual=y is not None)
        return x_new, h, mean, rstd

    @classmethod
    def adaln_bwd(cls, grad_x_new, grad_h, x_new, y, gate, scale, mean, rstd):
        B, L, D = x_new.shape
        T = scale.shape[1]
        residual = y is not None
        chunks = row_chunks(B * T, L // T)[0]
        dx = _alloc.empty_like(x_new)
        dy = _alloc.empty_like(y) if residual else None
        part = _alloc.empty(B * T, chunks, 3, D, dtype=torch.float32, device=x_new.device)
        sums = _alloc.empty(B, T, 3, D, dtype=torch.float32, device=x_new.device)
        cls._call("bwd", x_new, dxn=cls._tok(grad_x_new) if residual else None, dh=cls._tok(grad_h),
                  x=cls._tok(x_new), y=cls._tok(y), gate=cls._mod(gate), scale=cls._mod(scale),
                  mean_in=mean.contiguous(), rstd_in=rstd.contiguous(), dx=dx, dy=dy, part=part, sums=sums,
                  B=B, T=T, N=L // T, D=D, chunks=chunks, residual=residual)
        # one fresh tensor per gradient (custom-op outputs must not alias each other)
        dshift, dscale, dgate = (sums[:, :, k].clone() for k in range(3))
        return dx, dy, (dgate if residual else None), dshift, dscale

    @classmethod
    def adaln_jvp(cls, x, y, gate, scale, tx, ty, tgate, tshift, tscale, eps):
        B, L, D = x.shape
        T = scale.shape[1]
        th = _alloc.empty_like(x)
        txn = None if y is None else _alloc.empty_like(x)
        cls._call("jvp", x, x=cls._tok(x), y=cls._tok(y), gate=cls._mod(gate), scale=cls._mod(scale),
                  tx=cls._tok(tx), ty=cls._tok(ty), tgate=cls._mod(tgate), tshift=cls._mod(tshift),
                  tscale=cls._mod(tscale), txn=txn, th=th, B=B, T=T, N=L // T, D=D,
                  chunks=row_chunks(B * T, L // T)[0], eps=float(eps), residual=y is not None)
        return txn, th


class _Triton:
    """cosmos_kernels/triton/adaln.py (imported on first use), every tensor made contiguous (a
    no-op in the block; the kernels index token rows as row * D)."""

    def __getattr__(self, name):
        from cosmos_kernels.triton import adaln as kernels

        fn = getattr(kernels, name)
        return lambda *args: fn(*[a.contiguous() if isinstance(a, Tensor) else a for a in args])


_BACKENDS = {"torch": _Reference, "cuda": _Cuda, "triton": _Triton()}


def _impl(backend: str):
    return _BACKENDS[backend]


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def _check_tokens(op: str, name: str, x) -> Tensor:
    V.check_tensor(name, x, ndim=3, op=op)
    if x.numel() == 0:
        raise ValueError(f"{op}: {name} has shape {tuple(x.shape)} with a zero-size dimension; "
                         "expected a non-empty (B, L, D) tensor")
    V.check_last_dim_contiguous(op, name, x)
    return x


def _frames(op: str, name: str, mod, x: Tensor) -> Tensor:
    """Validate a modulation tensor against tokens x (B, L, D); return it as (B, T, D)."""
    V.check_tensor(name, mod, ndim=(2, 3), op=op)
    B, L, D = x.shape
    if mod.dim() == 2:
        mod = mod.unsqueeze(1)
    if mod.shape[0] != B or mod.shape[2] != D:
        raise ValueError(f"{op}: {name} has shape {tuple(mod.shape)}; expected (B, T, D) or (B, D) "
                         f"with B={B}, D={D} from x {tuple(x.shape)}")
    T = mod.shape[1]
    if T == 0 or L % T:
        raise ValueError(f"{op}: {name} has T={T} frames but x has L={L} tokens; L must be a multiple "
                         "of T (tokens are t-major, L = T * tokens_per_frame)")
    V.check_last_dim_contiguous(op, name, mod)
    return mod


def _modulation(op: str, x: Tensor, **mods) -> list[Tensor]:
    """The modulation tensors as (B, T, D): one frame count, one dtype (x's or float32)."""
    out = [_frames(op, name, m, x) for name, m in mods.items()]
    names = list(mods)
    for name, m in zip(names[1:], out[1:]):
        if m.shape[1] != out[0].shape[1]:
            raise ValueError(f"{op}: {name} has {m.shape[1]} frames but {names[0]} has {out[0].shape[1]}; "
                             "the modulation tensors of one call must have the same T")
    V.check_same_dtype(op, **dict(zip(names, out)))
    if out[0].dtype not in (x.dtype, torch.float32):
        raise TypeError(f"{op}: {names[0]} has dtype {out[0].dtype} but x has {x.dtype}; modulation must "
                        f"have x's dtype or float32")
    return out


def _check_row_size(op: str, backend: str, x: Tensor) -> None:
    """The row kernels keep a whole row of D in registers; the cuda backend's scalar path (rows
    that are not whole 16-byte words) is limited further."""
    D = x.shape[-1]
    if backend == "torch":
        return
    if D > MAX_ROW_D:
        raise ValueError(f"{op}: x has D={D} features; backend {backend!r} supports D <= {MAX_ROW_D} "
                         "(use backend 'torch' beyond)")
    word = 16 // x.element_size()
    if backend == "cuda" and D % word and D > MAX_SCALAR_ROW_D:
        raise ValueError(f"{op}: x has D={D} features; backend 'cuda' supports D <= {MAX_SCALAR_ROW_D} "
                         f"unless D is a multiple of {word} ({x.dtype})")


def _check_token_inputs(op: str, x: Tensor, *tokens: tuple[str, Tensor]) -> None:
    """Common checks of the token tensors (the backend is chosen after the device check, so a
    tensor on another device is named as such, not reported as a backend that cannot run there)."""
    _check_tokens(op, "x", x)
    for name, t in tokens:
        _check_tokens(op, name, t)
        V.check_shape(op, name, t, tuple(x.shape))
    V.check_same_dtype(op, x=x, **dict(tokens))


# ---------------------------------------------------------------------------------------------
# gated_residual
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("cosmos_kernels::gated_residual", mutates_args=())
def _gated_residual_op(x: Tensor, y: Tensor, gate: Tensor, backend: str) -> Tensor:
    return _impl(backend).gated_residual(x, y, gate)


@_gated_residual_op.register_fake
def _(x, y, gate, backend):
    return torch.empty_like(x)


@torch.library.custom_op("cosmos_kernels::gated_residual_bwd", mutates_args=())
def _gated_residual_bwd_op(grad: Tensor, y: Tensor, gate: Tensor, backend: str) -> tuple[Tensor, Tensor]:
    return _impl(backend).gated_residual_backward(grad, y, gate)


@_gated_residual_bwd_op.register_fake
def _(grad, y, gate, backend):
    return torch.empty_like(y), torch.empty_like(gate)


def _gr_setup(ctx, inputs, output):
    x, y, gate, backend = inputs
    ctx.save_for_backward(y, gate)
    ctx.backend = backend


def _gr_backward(ctx, grad):
    y, gate = ctx.saved_tensors
    dy, dgate = _gated_residual_bwd_op(grad.contiguous(), y, gate, ctx.backend)
    return grad, dy, dgate, None


def _gr_jvp(ctx, tx, ty, tgate, _backend):
    x, y, gate = ctx.saved_tensors
    # d(x + g*y) = tx + g*ty + tg*y: the kernel computes the first two, the op the third
    out = _gated_residual_op(tx if tx is not None else torch.zeros_like(x),
                             ty if ty is not None else torch.zeros_like(y), gate, ctx.backend)
    if tgate is not None:
        out = out + (ref.expand_frames(tgate, y.shape[1]) * y).to(out.dtype)
    return out


_gated_residual = differentiable(_gated_residual_op, _gr_setup, _gr_backward, _gr_jvp, name="gated_residual")


def gated_residual(x: Tensor, y: Tensor, gate: Tensor, *, backend: str | None = None) -> Tensor:
    """x + gate * y with gate per latent frame: x, y (B, L, D); gate (B, T, D), (B, 1, D) or (B, D)
    in x's dtype or float32. Returns x's dtype."""
    op = "gated_residual"
    _check_token_inputs(op, x, ("y", y))
    (gate,) = _modulation(op, x, gate=gate)
    V.check_same_device(op, x=x, y=y, gate=gate)
    backend = dispatch.backend_for(op, x, backend)
    V.check_backend_dtype(op, backend, x)
    return _gated_residual(x, y, gate, backend)


# ---------------------------------------------------------------------------------------------
# adaln_modulate
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("cosmos_kernels::adaln_modulate", mutates_args=())
def _adaln_op(x: Tensor, shift: Tensor, scale: Tensor, eps: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    _, h, mean, rstd = _impl(backend).adaln_fwd(x, None, None, shift, scale, eps)
    return h, mean, rstd


@_adaln_op.register_fake
def _(x, shift, scale, eps, backend):
    stats = x.new_empty(x.shape[:2], dtype=compute_dtype(x))
    return torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("cosmos_kernels::adaln_modulate_bwd", mutates_args=())
def _adaln_bwd_op(grad: Tensor, x: Tensor, scale: Tensor, mean: Tensor, rstd: Tensor,
                  backend: str) -> tuple[Tensor, Tensor, Tensor]:
    dx, _, _, dshift, dscale = _impl(backend).adaln_bwd(None, grad, x, None, None, scale, mean, rstd)
    return dx, dshift.to(scale.dtype), dscale.to(scale.dtype)


@_adaln_bwd_op.register_fake
def _(grad, x, scale, mean, rstd, backend):
    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale)


@torch.library.custom_op("cosmos_kernels::adaln_modulate_jvp", mutates_args=())
def _adaln_jvp_op(x: Tensor, scale: Tensor, tx: Tensor, tshift: Tensor, tscale: Tensor, eps: float,
                  backend: str) -> Tensor:
    return _impl(backend).adaln_jvp(x, None, None, scale, tx, None, None, tshift, tscale, eps)[1]


@_adaln_jvp_op.register_fake
def _(x, scale, tx, tshift, tscale, eps, backend):
    return torch.empty_like(x)


def _adaln_setup(ctx, inputs, output):
    x, shift, scale, eps, backend = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, scale, mean, rstd)
    ctx.eps, ctx.backend = eps, backend


def _adaln_backward(ctx, grad, _dmean, _drstd):
    x, scale, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale = _adaln_bwd_op(grad.contiguous(), x, scale, mean, rstd, ctx.backend)
    return dx, dshift, dscale, None, None


def _zeros_if_none(t, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if t is None else t


def _adaln_jvp(ctx, tx, tshift, tscale, _eps, _backend):
    x, shift, scale = ctx.saved_tensors
    th = _adaln_jvp_op(x, scale, _zeros_if_none(tx, x), _zeros_if_none(tshift, shift),
                       _zeros_if_none(tscale, scale), ctx.eps, ctx.backend)
    return th, None, None


_adaln_modulate = differentiable(_adaln_op, _adaln_setup, _adaln_backward, _adaln_jvp, name="adaln_modulate")


def adaln_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6, *,
                   backend: str | None = None) -> Tensor:
    """LayerNorm(x, no affine, eps) * (1 + scale) + shift, per latent frame.

    x (B, L, D); shift, scale (B, T, D), (B, 1, D) or (B, D), in x's dtype or float32 (both the
    same). Statistics in fp32. Returns x's dtype.
    """
    op = "adaln_modulate"
    _check_token_inputs(op, x)
    shift, scale = _modulation(op, x, shift=shift, scale=scale)
    eps = V.check_real(op, "eps", eps, positive=True)
    V.check_same_device(op, x=x, shift=shift, scale=scale)
    backend = dispatch.backend_for(op, x, backend)
    V.check_backend_dtype(op, backend, x)
    _check_row_size(op, backend, x)
    return _adaln_modulate(x, shift, scale, eps, backend)[0]


# ---------------------------------------------------------------------------------------------
# gated_residual_adaln
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("cosmos_kernels::gated_residual_adaln", mutates_args=())
def _gr_adaln_op(x: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, eps: float,
                 backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x_new, h, mean, rstd = _impl(backend).adaln_fwd(x, y, gate, shift, scale, eps)
    return x_new, h, mean, rstd


@_gr_adaln_op.register_fake
def _(x, y, gate, shift, scale, eps, backend):
    stats = x.new_empty(x.shape[:2], dtype=compute_dtype(x))
    return torch.empty_like(x), torch.empty_like(x), stats, torch.empty_like(stats)


@torch.library.custom_op("cosmos_kernels::gated_residual_adaln_bwd", mutates_args=())
def _gr_adaln_bwd_op(grad_x_new: Tensor, grad_h: Tensor, x_new: Tensor, y: Tensor, gate: Tensor, scale: Tensor,
                     mean: Tensor, rstd: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dx, dy, dgate, dshift, dscale = _impl(backend).adaln_bwd(grad_x_new, grad_h, x_new, y, gate, scale, mean, rstd)
    return dx, dy, dgate.to(gate.dtype), dshift.to(scale.dtype), dscale.to(scale.dtype)


@_gr_adaln_bwd_op.register_fake
def _(grad_x_new, grad_h, x_new, y, gate, scale, mean, rstd, backend):
    return (torch.empty_like(x_new), torch.empty_like(y), torch.empty_like(gate), torch.empty_like(scale),
            torch.empty_like(scale))


@torch.library.custom_op("cosmos_kernels::gated_residual_adaln_jvp", mutates_args=())
def _gr_adaln_jvp_op(x: Tensor, y: Tensor, gate: Tensor, scale: Tensor, tx: Tensor, ty: Tensor, tgate: Tensor,
                     tshift: Tensor, tscale: Tensor, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    return _impl(backend).adaln_jvp(x, y, gate, scale, tx, ty, tgate, tshift, tscale, eps)


@_gr_adaln_jvp_op.register_fake
def _(x, y, gate, scale, tx, ty, tgate, tshift, tscale, eps, backend):
    return torch.empty_like(x), torch.empty_like(x)


def _gr_adaln_setup(ctx, inputs, output):
    x, y, gate, shift, scale, eps, backend = inputs
    x_new, _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x_new, y, gate, scale, mean, rstd)
    ctx.eps, ctx.backend = eps, backend


def _gr_adaln_backward(ctx, grad_x_new, grad_h, _dmean, _drstd):
    # autograd materializes the gradient of an unused output as zeros
    x_new, y, gate, scale, mean, rstd = ctx.saved_tensors
    dx, dy, dgate, dshift, dscale = _gr_adaln_bwd_op(grad_x_new.contiguous(), grad_h.contiguous(), x_new, y, gate,
                                                     scale, mean, rstd, ctx.backend)
    return dx, dy, dgate, dshift, dscale, None, None


def _gr_adaln_jvp(ctx, tx, ty, tgate, tshift, tscale, _eps, _backend):
    x, y, gate, shift, scale = ctx.saved_tensors
    tx_new, th = _gr_adaln_jvp_op(x, y, gate, scale, _zeros_if_none(tx, x), _zeros_if_none(ty, y),
                                  _zeros_if_none(tgate, gate), _zeros_if_none(tshift, shift),
                                  _zeros_if_none(tscale, scale), ctx.eps, ctx.backend)
    return tx_new, th, None, None


_gated_residual_adaln = differentiable(_gr_adaln_op, _gr_adaln_setup, _gr_adaln_backward, _gr_adaln_jvp,
                                       name="gated_residual_adaln")


def gated_residual_adaln(x: Tensor, y: Tensor, gate: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6, *,
                         backend: str | None = None) -> tuple[Tensor, Tensor]:
    """(x_new, h_next) = (x + gate * y, LN(x_new) * (1 + scale) + shift) in one pass over memory.

    x, y (B, L, D); gate, shift, scale (B, T, D), (B, 1, D) or (B, D), one dtype (x's or float32).
    x_new is rounded to x's dtype before it is normalized, as the unfused pair would store it.
    """
    op = "gated_residual_adaln"
    _check_token_inputs(op, x, ("y", y))
    gate, shift, scale = _modulation(op, x, gate=gate, shift=shift, scale=scale)
    eps = V.check_real(op, "eps", eps, positive=True)
    V.check_same_device(op, x=x, y=y, gate=gate, shift=shift, scale=scale)
    backend = dispatch.backend_for(op, x, backend)
    V.check_backend_dtype(op, backend, x)
    _check_row_size(op, backend, x)
    x_new, h, _, _ = _gated_residual_adaln(x, y, gate, shift, scale, eps, backend)
    return x_new, h
