"""Flash-attention family: fused softmax attention with a backward and a fused forward-mode JVP.

    flash_attention(q, k, v, softmax_scale=None)                       -> out
    flash_attention_jvp(q, k, v, q_t, k_t, v_t, softmax_scale=None)    -> (out, out_t)

q: (B, S_q, H, D); k, v: (B, S_k, H, D) (flash-attn layout; S_q ≠ S_k for cross-attention);
head dim D a multiple of 16 up to 128; scale defaults to 1/sqrt(D). Every path keeps O(S) memory
on the Triton backend: the forward saves only the log-sum-exp (fp32, (B, H, S_q)).

Autograd: reverse mode on both functions (dq, dk, dv kernels). Under `torch.func.jvp` (or
torch.autograd.forward_ad) flash_attention sees the tangents of q, k, v and runs ONE fused pass that
returns the primal and its tangent: the JVP costs one JVP kernel, not a forward and then a JVP
kernel that recomputes the forward inside it (rCM's student step). flash_attention_jvp returns the
primal and its tangent from one kernel pass, and its `out` stays differentiable in reverse mode
(the pass saves the log-sum-exp for the standard backward): rCM's combination of a JVP target
and a backward in one forward. `out_t` is not differentiable (rCM uses it as a stop-gradient
target); backpropagating through the tangent would need second-order terms this op does not have.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from cosmos_kernels import dispatch
from cosmos_kernels import _validate as V
from cosmos_kernels._op import differentiable
from cosmos_kernels.reference import compute_dtype
from cosmos_kernels.reference import flash_attention as ref


# head dims padded to BLOCK_D in {32, 64, 128}; 256 would spill the JVP and dK/dV kernels on H100
MAX_HEAD_DIM = 128


def _triton():
    from cosmos_kernels.triton import flash_attention as triton_impl
    return triton_impl


def _fake_lse(q: Tensor) -> Tensor:
    B, S_q, H, _ = q.shape
    return q.new_empty((B, H, S_q), dtype=compute_dtype(q))


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# ---------------------------------------------------------------------------------------------
# custom ops: forward (out, lse), backward (dq, dk, dv), forward + JVP (out, out_t, lse, lse_t)
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("cosmos_kernels::flash_attention", mutates_args=())
def _fa_op(q: Tensor, k: Tensor, v: Tensor, scale: float, backend: str,
           deterministic: bool = True) -> tuple[Tensor, Tensor]:
    # `deterministic` selects the backward (see _fa_bwd_op); it is an input here so that autograd's
    # setup_context, which sees only the forward's inputs, can hand it on.
    if backend == "triton":
        return _triton().forward(q, k, v, scale)
    return ref.attention_with_lse(q, k, v, scale)


@_fa_op.register_fake
def _(q, k, v, scale, backend, deterministic=True):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), _fake_lse(q)


@torch.library.custom_op("cosmos_kernels::flash_attention_bwd", mutates_args=())
def _fa_bwd_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
               grad_lse: Tensor | None, scale: float, backend: str,
               deterministic: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """deterministic=True: the two-kernel backward (dK/dV, then dQ; bitwise reproducible).
    False: one pass over the key blocks, dQ added with fp32 atomics, on the Triton backend where
    its tile fits (16-bit inputs; fp32 up to D=64: at D>64 every fp32 tile spills on sm_90, so fp32
    takes the two-kernel backward there). The reference has one exact backward for both."""
    if backend == "triton":
        return _triton().backward(grad, q, k, v, out, lse, scale, grad_lse, deterministic)
    return ref.attention_backward(grad, q, k, v, out, lse, scale, grad_lse)


@_fa_bwd_op.register_fake
def _(grad, q, k, v, out, lse, grad_lse, scale, backend, deterministic=True):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


@torch.library.custom_op("cosmos_kernels::flash_attention_jvp", mutates_args=())
def _fa_jvp_op(q: Tensor, k: Tensor, v: Tensor, q_t: Tensor, k_t: Tensor, v_t: Tensor, scale: float,
               backend: str, deterministic: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if backend == "triton":
        return _triton().forward_jvp(q, k, v, q_t, k_t, v_t, scale)
    return ref.attention_jvp(q, k, v, q_t, k_t, v_t, scale)


@_fa_jvp_op.register_fake
def _(q, k, v, q_t, k_t, v_t, scale, backend, deterministic=True):
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    return out, torch.empty_like(out), _fake_lse(q), _fake_lse(q)


# ---------------------------------------------------------------------------------------------
# autograd wiring
# ---------------------------------------------------------------------------------------------
def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = _fa_bwd_op(_last_dim_contiguous(grad_out), q, k, v, out, lse,
                            None if grad_lse is None else grad_lse.contiguous(), ctx.scale, ctx.backend,
                            ctx.deterministic)
    return dq, dk, dv, None, None, None


def _fa_setup(ctx, inputs, output):
    q, k, v, scale, backend, *rest = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.set_materialize_grads(False)  # the lse is internal: its grad stays None, δ needs no dlse term
    ctx.scale, ctx.backend, ctx.deterministic = scale, backend, rest[0] if rest else True


def _fa_jvp(ctx, q_t, k_t, v_t, *_):
    q, k, v = ctx.saved_tensors[:3]
    tangents = [t if t is not None else torch.zeros_like(p) for t, p in zip((q_t, k_t, v_t), (q, k, v))]
    _, out_t, _, lse_t = _fa_jvp_op(q, k, v, *map(_last_dim_contiguous, tangents), ctx.scale, ctx.backend)
    return out_t, lse_t


_flash_attention = differentiable(_fa_op, _fa_setup, _backward, _fa_jvp, name="flash_attention")


def _jvp_setup(ctx, inputs, output):
    q, k, v, _qt, _kt, _vt, scale, backend, *rest = inputs
    out, out_t, lse, lse_t = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.mark_non_differentiable(out_t, lse_t)
    ctx.set_materialize_grads(False)
    ctx.scale, ctx.backend, ctx.deterministic = scale, backend, rest[0] if rest else True


def _jvp_backward(ctx, grad_out, _grad_out_t, grad_lse, _grad_lse_t):
    # the tangents are non-differentiable outputs: their incoming grads are None or zeros
    dq, dk, dv, *_ = _backward(ctx, grad_out, grad_lse)
    return dq, dk, dv, None, None, None, None, None, None


_flash_attention_jvp = differentiable(_fa_jvp_op, _jvp_setup, _jvp_backward, name="flash_attention_jvp")


class _FlashAttentionUnderJvp(torch.autograd.Function):
    """flash_attention when q, k, v carry forward-mode tangents: the inputs are the primals AND
    their tangents (read off the dual tensors by the caller), so the forward is the fused kernel and
    the JVP rule only hands back the tangent that pass already computed. Reverse mode through `out`
    is the standard backward (rCM's one-pass JVP needs it); the tangent is a stop-gradient target."""

    @staticmethod
    def forward(q, k, v, q_t, k_t, v_t, scale, backend, deterministic):
        return _fa_jvp_op(q, k, v, q_t, k_t, v_t, scale, backend, deterministic)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _jvp_setup(ctx, inputs, output)
        _, out_t, _, lse_t = output
        ctx.save_for_forward(out_t, lse_t)

    @staticmethod
    def jvp(ctx, *_input_tangents):
        # the input tangents are the q_t, k_t, v_t the forward already used (and tangents of those)
        out_t, lse_t = ctx.saved_tensors
        return out_t, None, lse_t, None

    @staticmethod
    def backward(ctx, grad_out, grad_out_t, grad_lse, grad_lse_t):
        return _jvp_backward(ctx, grad_out, grad_out_t, grad_lse, grad_lse_t)


def _forward_tangents(q: Tensor, k: Tensor, v: Tensor) -> list[Tensor] | None:
    """The forward-mode tangents of q, k, v (zeros for a primal without one), or None when none has
    one. `unpack_dual` sees torch.func.jvp's tangents as well as forward_ad's dual tensors."""
    if torch.compiler.is_compiling():
        return None  # traced graphs take the custom op; forward mode is eager-only (see _op.py)
    tangents = [fwAD.unpack_dual(t).tangent for t in (q, k, v)]
    if all(t is None for t in tangents):
        return None
    # detached: the tangent is a stop-gradient target, and its reverse-mode history (e.g. the
    # output of another op's JVP rule, which has no backward) must not enter the primal's graph
    return [_last_dim_contiguous(t.detach()) if t is not None else torch.zeros_like(p)
            for t, p in zip(tangents, (q, k, v))]


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def _check(op: str, q, k, v, softmax_scale, backend, tangents: dict | None = None) -> tuple[float, str]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        V.check_tensor(name, t, ndim=4, op=op)
    V.check_same_device(op, q=q, k=k, v=v)
    V.check_same_dtype(op, q=q, k=k, v=v)
    B, S_q, H, D = q.shape
    if k.shape[0] != B or k.shape[2] != H or k.shape[3] != D:
        raise ValueError(f"{op}: k has shape {tuple(k.shape)}; expected (B, S_k, H, D) = ({B}, *, {H}, {D}) "
                         f"matching q {tuple(q.shape)} (layout (batch, seq, heads, head_dim))")
    V.check_shape(op, "v", v, (B, k.shape[1], H, D))
    if D % 16 or not 16 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"{op}: head dim D={D} (q shape {tuple(q.shape)}) is not supported; "
                         f"supported: multiples of 16 from 16 to {MAX_HEAD_DIM}")
    if min(B, S_q, H, k.shape[1]) == 0:
        raise ValueError(f"{op}: empty input: q {tuple(q.shape)}, k {tuple(k.shape)}; "
                         "B, H, S_q and S_k must be at least 1")
    for name, t in (("q", q), ("k", k), ("v", v)):
        V.check_last_dim_contiguous(op, name, t)
    for name, t in (tangents or {}).items():
        primal = {"q_t": q, "k_t": k, "v_t": v}[name]
        V.check_tensor(name, t, ndim=4, op=op)
        V.check_shape(op, name, t, tuple(primal.shape))
        V.check_same_device(op, q=q, **{name: t})
        V.check_same_dtype(op, q=q, **{name: t})
        V.check_last_dim_contiguous(op, name, t)
    scale = ref.default_scale(D) if softmax_scale is None else V.check_real(op, "softmax_scale", softmax_scale)
    backend = dispatch.backend_for(op, q, backend)
    V.check_backend_dtype(op, backend, q)
    return scale, backend


def flash_attention(q: Tensor, k: Tensor, v: Tensor, softmax_scale: float | None = None, *,
                    backend: str | None = None, deterministic: bool = True) -> Tensor:
    """softmax(q kᵀ · softmax_scale) v per (batch, head): q (B, S_q, H, D), k and v (B, S_k, H, D).
    deterministic=False picks the one-pass backward (dQ by fp32 atomics; not bitwise reproducible)."""
    scale, backend = _check("flash_attention", q, k, v, softmax_scale, backend)
    deterministic = V.check_bool("flash_attention", "deterministic", deterministic)
    tangents = _forward_tangents(q, k, v)
    if tangents is not None:
        return _FlashAttentionUnderJvp.apply(q, k, v, *tangents, scale, backend, deterministic)[0]
    return _flash_attention(q, k, v, scale, backend, deterministic)[0]


def flash_attention_jvp(q: Tensor, k: Tensor, v: Tensor, q_t: Tensor, k_t: Tensor, v_t: Tensor,
                        softmax_scale: float | None = None, *, backend: str | None = None,
                        deterministic: bool = True) -> tuple[Tensor, Tensor]:
    """(out, out_t): flash_attention(q, k, v) and its directional derivative along (q_t, k_t, v_t),
    from one fused pass. `out` is differentiable in reverse mode (deterministic as in
    flash_attention); `out_t` is not."""
    scale, backend = _check("flash_attention_jvp", q, k, v, softmax_scale, backend,
                            tangents={"q_t": q_t, "k_t": k_t, "v_t": v_t})
    deterministic = V.check_bool("flash_attention_jvp", "deterministic", deterministic)
    out, out_t, _, _ = _flash_attention_jvp(q, k, v, q_t, k_t, v_t, scale, backend, deterministic)
    return out, out_t
