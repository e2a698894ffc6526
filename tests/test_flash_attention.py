"""Flash-attention family against its reference: forward, backward, fused JVP (and as the forward-AD
rule of flash_attention), the rCM combination, opcheck, compile, strides, bad input.

Triton runs in the interpreter with the H100 tile shapes (cosmos_kernels.triton.flash_attention
CONFIGS); sequence lengths above 128 make every kernel run both its unmasked full blocks and its
masked tail. fp32 on the Triton backend is judged with the tf32 threshold: the compiled kernels
use tf32 dots for fp32 inputs (the interpreter computes them in full fp32).
"""
import importlib

import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels.reference import flash_attention as ref
from cosmos_kernels.testing import TF32, assert_close, rel_err
from tests.helpers import DTYPES, runnable_backends

fa_triton = importlib.import_module("cosmos_kernels.triton.flash_attention")

BACKENDS = runnable_backends("flash_attention")
SHAPES = [  # (B, S_q, S_k, H, D)
    (1, 150, 140, 1, 128),  # several query and key blocks, ragged tails
    (2, 37, 53, 2, 64),     # S_q != S_k, neither a multiple of a block
    (1, 20, 30, 1, 80),     # padded head dim (80 in a 128-wide tile)
]


def _qkv(B, S_q, S_k, H, D, dtype, q_mult=1.0):
    q = torch.randn(B, S_q, H, D) * q_mult
    return q.to(dtype), torch.randn(B, S_k, H, D, dtype=dtype), torch.randn(B, S_k, H, D, dtype=dtype)


def _check(out, expect, dtype, backend, *, grad=False, name="output"):
    if dtype == torch.float32 and backend == "triton":
        assert torch.isfinite(out).all(), f"{name}: contains NaN/Inf"
        err = rel_err(out, expect)
        tol = TF32 * (2 if grad else 1)
        assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e} (fp32 inputs, tf32 dots)"
        return
    assert_close(out, expect.to(out.dtype), dtype, grad=grad, name=name)


def _ref_grads(q, k, v, grad, scale=None, fn=None):
    args = [t.detach().float().requires_grad_() for t in (q, k, v)]
    (fn or ref.attention)(*args, scale).backward(grad.float())
    return [a.grad for a in args]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward(backend, dtype, shape):
    q, k, v = _qkv(*shape, dtype)
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    out = ck.flash_attention(*args, backend=backend)
    _check(out, ref.attention(q, k, v), dtype, backend)
    grad = torch.randn_like(out)
    out.backward(grad)
    for name, a, r in zip("qkv", args, _ref_grads(q, k, v, grad)):
        _check(a.grad, r, dtype, backend, grad=True, name=f"d{name}")


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the triton backend")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2]])
def test_forward_variants(dtype, shape):
    """Every forward variant this Triton offers (FA2; TMA descriptors; warp-specialized TMA),
    launched with its own built-in tile, against the reference: ragged tails, padded head dim."""
    q, k, v = _qkv(*shape, dtype)
    D = shape[-1]
    offered = fa_triton.variants("fwd", dtype)
    assert offered[0] == "fa2" and (dtype == torch.float32 or len(offered) == 3), offered  # Triton 3.6-3.9 offer all
    for variant in offered:
        cfg = fa_triton.config("fwd", D, dtype, variant)
        out, lse = fa_triton.forward(q, k, v, ref.default_scale(D), cfg)
        e_out, e_lse = ref.attention_with_lse(q, k, v, ref.default_scale(D))
        _check(out, e_out, dtype, "triton", name=f"{variant} output")
        _check(lse, e_lse, torch.float32, "torch", name=f"{variant} lse")


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the triton backend")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2]])
def test_jvp_and_backward_variants(dtype, shape):
    """Every variant this Triton offers of the JVP pass (FA2; TMA; warp-specialized TMA) and of the
    backward kernels (dK/dV, dQ, the one-pass dK/dV/dQ: FA2; TMA), each at its own built-in tile,
    against the reference: ragged tails, padded head dim."""
    q, k, v = _qkv(*shape, dtype)
    tq, tk, tv, grad = (torch.randn_like(t) for t in (q, k, v, q))
    D, scale = shape[-1], ref.default_scale(shape[-1])
    e_out, e_tout = ref.attention_jvp(*(t.double() for t in (q, k, v, tq, tk, tv)), scale)[:2]
    for variant in fa_triton.variants("jvp", dtype):
        out, out_t, _, _ = fa_triton.forward_jvp(q, k, v, tq, tk, tv, scale, fa_triton.config("jvp", D, dtype, variant))
        _check(out, e_out, dtype, "triton", name=f"jvp {variant} output")
        _check(out_t, e_tout, dtype, "triton", grad=True, name=f"jvp {variant} tangent")
    out, lse = fa_triton.forward(q, k, v, scale)
    expect = _ref_grads(q, k, v, grad, scale)
    assert fa_triton.variants("dkdv", dtype) == fa_triton.variants("dq", dtype) == ("fa2", "tma")
    runs = [(False, {"dkdv": fa_triton.config("dkdv", D, dtype, a), "dq": fa_triton.config("dq", D, dtype, b)})
            for a in ("fa2", "tma") for b in ("fa2", "tma") if a == b or D == 128]
    if fa_triton.one_pass_backward(D, dtype):
        runs += [(True, {"bwd_fused": fa_triton.config("bwd_fused", D, dtype, variant)})
                 for variant in fa_triton.variants("bwd_fused", dtype)]
    for one_pass, cfgs in runs:
        grads = fa_triton.backward(grad, q, k, v, out, lse, scale, None, not one_pass, cfgs)
        what = ", ".join(f"{kernel} {cfg.variant}" for kernel, cfg in cfgs.items())
        for name, got, e in zip("qkv", grads, expect):
            _check(got, e, dtype, "triton", grad=True, name=f"d{name} ({what})")


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the triton backend")
def test_tma_variant_falls_back_on_unaligned_tensors_and_refuses_unknown_variants():
    """TMA needs 16-byte aligned bases and row strides: a q that starts one element into its
    storage takes the FA2 path (same numbers); an unknown variant is a clear error."""
    dtype = torch.bfloat16
    q, k, v = _qkv(1, 70, 40, 1, 64, dtype)
    q = torch.cat([torch.zeros(1, dtype=dtype), q.flatten()])[1:].view(q.shape)
    assert q.data_ptr() % 16
    out, _ = fa_triton.forward(q, k, v, 0.125, fa_triton.config("fwd", 64, dtype, "tma"))
    _check(out, ref.attention(q, k, v, 0.125), dtype, "triton")
    with pytest.raises(ValueError, match="fwd variant 'wgmma9' is not offered"):
        fa_triton.forward(q, k, v, 0.125, fa_triton.Blocks(64, 64, 4, 2, "wgmma9"))
    # the JVP and backward variants fall back the same way (an expanded gradient: stride 0 along S)
    out, out_t, _, _ = fa_triton.forward_jvp(q, k, v, q, k, v, 0.125, fa_triton.config("jvp", 64, dtype, "tma"))
    e_out, e_t = ref.attention_jvp(*(t.double() for t in (q, k, v, q, k, v)), 0.125)[:2]
    _check(out, e_out, dtype, "triton")
    _check(out_t, e_t, dtype, "triton", grad=True)
    out, lse = fa_triton.forward(q, k, v, 0.125)
    grad = torch.ones(1, 1, 1, 64, dtype=dtype).expand(out.shape)
    cfgs = {"dkdv": fa_triton.config("dkdv", 64, dtype, "tma"), "dq": fa_triton.config("dq", 64, dtype, "tma")}
    grads = fa_triton.backward(grad, q, k, v, out, lse, 0.125, None, True, cfgs)
    for got, e in zip(grads, _ref_grads(q, k, v, grad.contiguous(), 0.125)):
        _check(got, e, dtype, "triton", grad=True)
    with pytest.raises(ValueError, match="dq variant 'tma_ws' is not offered"):
        fa_triton.backward(grad, q, k, v, out, lse, 0.125, None, True, {"dq": fa_triton.Blocks(64, 64, 4, 2, "tma_ws")})


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the triton backend")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_one_pass_backward(dtype, shape):
    """deterministic=False: dK, dV and dQ from one pass over the key blocks (dQ by fp32 atomics)
    against the reference, through flash_attention and through flash_attention_jvp's primal."""
    q, k, v = _qkv(*shape, dtype)
    tangents = [torch.randn_like(t) for t in (q, k, v)]
    for name, attend in (("flash_attention", lambda *a: ck.flash_attention(*a, backend="triton", deterministic=False)),
                         ("flash_attention_jvp", lambda *a: ck.flash_attention_jvp(
                             *a, *tangents, backend="triton", deterministic=False)[0])):
        if name == "flash_attention_jvp" and shape is not SHAPES[0]:
            continue  # the same backward op; one shape shows the JVP op hands `deterministic` on
        args = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attend(*args)
        grad = torch.randn_like(out)
        out.backward(grad)
        for g, a, r in zip("qkv", args, _ref_grads(q, k, v, grad)):
            _check(a.grad, r, dtype, "triton", grad=True, name=f"{name}: d{g} (one-pass backward)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, q_mult", [(SHAPES[0], 1.0), (SHAPES[1], 1.0), (SHAPES[1], 30.0)])
def test_jvp(backend, dtype, shape, q_mult, monkeypatch):
    """torch.func.jvp of flash_attention (its forward-AD rule) and flash_attention_jvp against the
    hand-derived reference; q_mult=30 gives logits of magnitude ~30 (peaked softmax, large tS)."""
    q, k, v = _qkv(*shape, dtype, q_mult)
    tangents = tuple(torch.randn_like(t) for t in (q, k, v))
    calls = []
    fused = fa_triton.forward_jvp
    monkeypatch.setattr(fa_triton, "forward_jvp", lambda *a: calls.append(1) or fused(*a))
    out, out_t = torch.func.jvp(lambda a, b, c: ck.flash_attention(a, b, c, backend=backend), (q, k, v), tangents)
    e_out, e_t, _, _ = ref.attention_jvp(q, k, v, *tangents, ref.default_scale(q.shape[-1]))
    _check(out, e_out, dtype, backend)
    _check(out_t, e_t, dtype, backend, grad=True, name="tangent")
    if backend == "triton":
        assert calls, "torch.func.jvp did not run the fused JVP kernel"
    out2, out2_t = ck.flash_attention_jvp(q, k, v, *tangents, backend=backend)
    _check(out2, e_out, dtype, backend)
    _check(out2_t, e_t, dtype, backend, grad=True, name="tangent (flash_attention_jvp)")


def _count_launches(monkeypatch, backend) -> dict:
    """Counts the attention computations a call makes: the forward kernel and the fused JVP kernel
    (on the torch backend, the reference functions the custom ops call)."""
    calls = {"forward": 0, "jvp": 0}
    module, names = (fa_triton, ("forward", "forward_jvp")) if backend == "triton" else \
        (ref, ("attention_with_lse", "attention_jvp"))
    for key, name in zip(("forward", "jvp"), names):
        fn = getattr(module, name)

        def counted(*a, _fn=fn, _key=key):
            calls[_key] += 1
            return _fn(*a)
        monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["func.jvp", "forward_ad"])
def test_jvp_is_one_kernel_pass(backend, mode, monkeypatch):
    """Under torch.func.jvp (and forward_ad's dual tensors) flash_attention runs the fused JVP kernel
    once and no separate forward: the JVP costs one pass. Its primal stays differentiable in reverse
    mode (rCM's one-pass JVP), with the standard backward's gradients."""
    dtype = torch.bfloat16
    q, k, v = _qkv(1, 150, 140, 2, 64, dtype)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    tangents = tuple(torch.randn_like(t) for t in (q, k, v))
    calls = _count_launches(monkeypatch, backend)
    attend = lambda a, b, c: ck.flash_attention(a, b, c, backend=backend)  # noqa: E731
    if mode == "func.jvp":
        out, out_t = torch.func.jvp(attend, (q, k, v), tangents)
    else:
        import torch.autograd.forward_ad as fwAD
        with fwAD.dual_level():
            dual = fwAD.unpack_dual(attend(*(fwAD.make_dual(p, t) for p, t in zip((q, k, v), tangents))))
            out, out_t = dual.primal, dual.tangent
    assert calls == {"forward": 0, "jvp": 1}, f"attention passes per JVP call: {calls}; expected one fused JVP"
    e_out, e_t, _, _ = ref.attention_jvp(*(t.detach() for t in (q, k, v)), *tangents, ref.default_scale(64))
    _check(out, e_out, dtype, backend)
    _check(out_t, e_t, dtype, backend, grad=True, name="tangent")
    assert not out_t.requires_grad, "the tangent is a stop-gradient target"
    grad = torch.randn_like(out)
    out.backward(grad)
    for name, a, r in zip("qkv", (q, k, v), _ref_grads(q, k, v, grad)):
        _check(a.grad, r, dtype, backend, grad=True, name=f"d{name} through the JVP's primal")


@pytest.mark.skipif("triton" not in BACKENDS, reason="needs the triton backend")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_jvp_tangent_stays_accurate_at_large_logits(dtype):
    """Logits ~100 (peaked P, |tS| ~ 100): the centered tangent accumulator keeps the error at
    the output-rounding level of the dtype (the plain threshold, not the 2× tangent one), where
    accumulating (P⊙tS)·V and subtracting r·O afterwards loses ~8× (3.8e-2 in bf16 at this size)."""
    q, k, v = _qkv(1, 150, 150, 2, 128, dtype, 100.0)
    tangents = [torch.randn_like(t) for t in (q, k, v)]
    _, out_t = ck.flash_attention_jvp(q, k, v, *tangents, backend="triton")
    truth = ref.attention_jvp(*[t.double() for t in (q, k, v, *tangents)], ref.default_scale(128))[1]
    assert_close(out_t, truth, dtype, name="tangent")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rcm_combination(backend, dtype):
    """One forward gives out and out_t; a loss on out with out_t as a detached target backpropagates
    through the standard backward (the JVP pass saved the log-sum-exp)."""
    q, k, v = _qkv(1, 70, 150, 2, 64, dtype, 3.0)
    tangents = [torch.randn_like(t) for t in (q, k, v)]
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    out, out_t = ck.flash_attention_jvp(*args, *tangents, softmax_scale=0.2, backend=backend)
    assert out.requires_grad and not out_t.requires_grad
    (out.float() - out_t.float()).square().sum().backward()

    ref_args = [t.detach().float().requires_grad_() for t in (q, k, v)]
    e_out, e_t, _, _ = ref.attention_jvp(*ref_args, *[t.float() for t in tangents], 0.2)
    _check(out_t, e_t.detach(), dtype, backend, grad=True, name="tangent")
    (e_out - e_t.detach()).square().sum().backward()
    for name, a, r in zip("qkv", args, ref_args):
        _check(a.grad, r.grad, dtype, backend, grad=True, name=f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_attention_512_keys_and_packed_strides(backend):
    """q, k, v as strided views of packed projections (the model's layout), 512 text keys."""
    B, S_q, S_k, H, D, dtype = 1, 40, 512, 2, 64, torch.bfloat16
    q = torch.randn(B, S_q, H, 2 * D, dtype=dtype)[..., :D]  # row stride 2*H*D, head stride 2*D
    kv = torch.randn(B, S_k, 2, H, D, dtype=dtype)
    k, v = kv[:, :, 0], kv[:, :, 1]
    assert not q.is_contiguous() and not k.is_contiguous()
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    out = ck.flash_attention(*args, backend=backend)
    _check(out, ref.attention(q, k, v), dtype, backend)
    grad = torch.randn_like(out)
    out.backward(grad)
    for name, a, r in zip("qkv", args, _ref_grads(q, k, v, grad)):
        _check(a.grad, r, dtype, backend, grad=True, name=f"d{name}")
    tangents = [torch.randn_like(t) for t in (q, k, v)]
    _, out_t = ck.flash_attention_jvp(q, k, v, *tangents, backend=backend)
    _check(out_t, ref.attention_jvp(q, k, v, *tangents, ref.default_scale(D))[1], dtype, backend, grad=True)


def test_hand_jvp_and_backward_match_autodiff_float64():
    q, k, v = _qkv(2, 9, 13, 2, 16, torch.float64, 3.0)
    tangents = tuple(torch.randn_like(t) for t in (q, k, v))
    scale = 0.3
    (out, lse), (e_t, e_lse_t) = torch.func.jvp(lambda a, b, c: ref.attention_with_lse(a, b, c, scale), (q, k, v),
                                                tangents)
    h_out, h_t, h_lse, h_lse_t = ref.attention_jvp(q, k, v, *tangents, scale)
    for got, want, name in ((h_out, out, "out"), (h_t, e_t, "out_t"), (h_lse, lse, "lse"), (h_lse_t, e_lse_t, "lse_t")):
        assert_close(got, want, torch.float64, name=name)

    grad, grad_lse = torch.randn_like(out), torch.randn_like(lse)
    _, vjp = torch.func.vjp(lambda a, b, c: ref.attention_with_lse(a, b, c, scale), q, k, v)
    for got, want, name in zip(ref.attention_backward(grad, q, k, v, out, lse, scale, grad_lse),
                               vjp((grad, grad_lse)), "qkv"):
        assert_close(got, want, torch.float64, name=f"d{name}")


def test_torch_backend_gradcheck_float64():
    """Reverse and forward mode of both public functions on the reference backend (float64)."""
    q, k, v = [t.requires_grad_() for t in _qkv(1, 5, 7, 2, 16, torch.float64)]
    fa = lambda a, b, c: ck.flash_attention(a, b, c, 0.4, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fa, (q, k, v), check_forward_ad=True)
    tangents = [torch.randn_like(t) for t in (q, k, v)]
    primal = lambda a, b, c: ck.flash_attention_jvp(a, b, c, *tangents, 0.4, backend="torch")[0]  # noqa: E731
    assert torch.autograd.gradcheck(primal, (q, k, v))


def test_opcheck():
    q, k, v = _qkv(1, 6, 9, 2, 16, torch.float32)
    tq, tk, tv = [torch.randn_like(t) for t in (q, k, v)]
    ops = torch.ops.cosmos_kernels
    for backend in BACKENDS:
        args = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.library.opcheck(ops.flash_attention, (*args, 0.25, backend))
        torch.library.opcheck(ops.flash_attention_jvp, (*args, tq, tk, tv, 0.25, backend))
        out, lse = ops.flash_attention(q, k, v, 0.25, backend)
        grad = torch.randn_like(out)
        torch.library.opcheck(ops.flash_attention_bwd, (grad, q, k, v, out, lse, None, 0.25, backend))
        torch.library.opcheck(ops.flash_attention_bwd, (grad, q, k, v, out, lse, torch.randn_like(lse), 0.25, backend))
        torch.library.opcheck(ops.flash_attention_bwd, (grad, q, k, v, out, lse, None, 0.25, backend, False))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("deterministic", [True, False])
def test_grad_of_lse_output(backend, deterministic):
    """The op's second output (the log-sum-exp) is differentiable too: δ gets the dlse term (in
    both backwards)."""
    q, k, v = _qkv(1, 33, 70, 1, 32, torch.float32)
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = torch.ops.cosmos_kernels.flash_attention(*args, 0.3, backend, deterministic)
    g_out, g_lse = torch.randn_like(out), torch.randn_like(lse)
    torch.autograd.backward((out, lse), (g_out, g_lse))
    ref_args = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    torch.autograd.backward(ref.attention_with_lse(*ref_args, 0.3), (g_out, g_lse))
    for name, a, r in zip("qkv", args, ref_args):
        _check(a.grad, r.grad, torch.float32, backend, grad=True, name=f"d{name}")


def test_compile_fullgraph():
    q, k, v = _qkv(2, 11, 17, 2, 32, torch.float32)
    tangents = [torch.randn_like(t) for t in (q, k, v)]

    def loss_fn(a, b, c):
        out = ck.flash_attention(a, b, c, backend="torch")
        out2, out_t = ck.flash_attention_jvp(a, b, c, *tangents, backend="torch")
        return out.square().sum() + (out2 - out_t.detach()).square().sum()

    args = [t.clone().requires_grad_() for t in (q, k, v)]
    loss = torch.compile(loss_fn, fullgraph=True)(*args)
    loss.backward()
    ref_args = [t.clone().requires_grad_() for t in (q, k, v)]
    e_out = ref.attention(*ref_args)
    e2, e_t, _, _ = ref.attention_jvp(*ref_args, *tangents, ref.default_scale(32))
    e_loss = e_out.square().sum() + (e2 - e_t.detach()).square().sum()
    e_loss.backward()
    assert_close(loss.detach(), e_loss.detach(), torch.float32)
    for name, a, r in zip("qkv", args, ref_args):
        assert_close(a.grad, r.grad, torch.float32, grad=True, name=f"d{name}")


def test_launch_configs_are_in_the_compile_report():
    """Every tile configuration the launchers pick is compiled by the sm_90a report."""
    reported = {(s.fn, tuple(sorted(s.constexprs.items())), s.num_warps, s.num_stages) for s in fa_triton.AOT_SPECS}
    kernels = {"fwd": (fa_triton._attn_fwd, {}), "jvp": (fa_triton._attn_jvp, {}),
               "dkdv": (fa_triton._attn_bwd_dkdv, {"ONE_PASS": False}), "dq": (fa_triton._attn_bwd_dq, {}),
               "bwd_fused": (fa_triton._attn_bwd_dkdv, {"ONE_PASS": True})}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for d in (32, 64, 128):
            cases = [(kind, fn, extra, fa_triton.config(kind, d, dtype)) for kind, (fn, extra) in kernels.items()
                     if kind != "bwd_fused" or fa_triton.one_pass_backward(d, dtype)]
            cases += [(f"fwd_{v}", fa_triton._attn_fwd_tma, {"WARP_SPECIALIZE": v == "tma_ws"},
                       fa_triton.config("fwd", d, dtype, v)) for v in fa_triton.variants("fwd", dtype)[1:]]
            for kind, fn, extra, cfg in cases:
                const = dict(HEAD_DIM=d, BLOCK_D=fa_triton.block_d(d), BLOCK_M=cfg.m, BLOCK_N=cfg.n, **extra)
                assert (fn, tuple(sorted(const.items())), cfg.warps, cfg.stages) in reported, (kind, dtype, d)


def _bad(make):
    q, k, v = _qkv(2, 8, 10, 2, 32, torch.float32)
    return make(q, k, v)


@pytest.mark.parametrize("make, exc, words", [
    (lambda q, k, v: (q[0], k, v), ValueError, "q must have 4 dimensions"),
    (lambda q, k, v: (q, k[:1], v), ValueError, "k has shape"),  # batch
    (lambda q, k, v: (q, k[:, :, :1], v), ValueError, "k has shape"),  # heads
    (lambda q, k, v: (q, k, v[..., :16]), ValueError, "v has shape"),  # head dim
    (lambda q, k, v: (q, k, v[:, :-1]), ValueError, "v has shape"),  # key length
    (lambda q, k, v: tuple(torch.randn(2, 8, 2, 72) for _ in range(3)), ValueError, "head dim D=72"),
    (lambda q, k, v: tuple(torch.randn(2, 8, 2, 256) for _ in range(3)), ValueError, "head dim D=256"),
    (lambda q, k, v: (q, k.double(), v), TypeError, "must match"),
    (lambda q, k, v: (q.int(), k.int(), v.int()), TypeError, "q has dtype torch.int32"),
    (lambda q, k, v: (q.double(), k.double(), v.double(), "triton"), TypeError, "only by backend 'torch'"),
    (lambda q, k, v: (q.transpose(2, 3).contiguous().transpose(2, 3), k, v), ValueError, "contiguous in its last"),
    (lambda q, k, v: (q, k.to("meta"), v), ValueError, "k is on meta"),
    (lambda q, k, v: (q, k, "v"), TypeError, "v must be a torch.Tensor"),
    (lambda q, k, v: (q[:, :0], k, v), ValueError, "empty input"),
])
def test_bad_input(make, exc, words):
    with pytest.raises(exc, match=words):
        args = _bad(make)
        ck.flash_attention(*args[:3], backend=args[3] if len(args) > 3 else None)


@pytest.mark.parametrize("make, exc, words", [
    (lambda q, k, v: (q, k, v, q[:, :-1], k, v), ValueError, "q_t has shape"),
    (lambda q, k, v: (q, k, v, q, k.half(), v), TypeError, "must match"),
    (lambda q, k, v: (q, k, v, q, k, v.transpose(2, 3).contiguous().transpose(2, 3)), ValueError, "v_t must be contig"),
    (lambda q, k, v: (q, k, v, q, k, None), TypeError, "v_t must be a torch.Tensor"),
])
def test_bad_tangents(make, exc, words):
    with pytest.raises(exc, match=words):
        ck.flash_attention_jvp(*_bad(make))


def test_bad_scale_and_backend():
    q, k, v = _qkv(1, 4, 4, 1, 16, torch.float32)
    with pytest.raises(TypeError, match="softmax_scale"):
        ck.flash_attention(q, k, v, float("nan"))
    with pytest.raises(TypeError, match="softmax_scale"):
        ck.flash_attention(q, k, v, torch.tensor(0.5))
    with pytest.raises(ck.BackendUnavailable, match="no 'cuda' backend"):
        ck.flash_attention(q, k, v, backend="cuda")
    with pytest.raises(TypeError, match="deterministic must be True or False"):
        ck.flash_attention(q, k, v, deterministic="no")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_long_sequence(dtype):
    q, k, v = [t.cuda() for t in _qkv(1, 2000, 1700, 4, 128, dtype, 2.0)]
    tangents = [torch.randn_like(t) for t in (q, k, v)]
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    out, out_t = ck.flash_attention_jvp(*args, *tangents)
    e_out, e_t, _, _ = ref.attention_jvp(q, k, v, *tangents, ref.default_scale(128))
    assert_close(out, e_out, dtype)
    assert_close(out_t, e_t, dtype, grad=True, name="tangent")
    grad = torch.randn_like(out)
    out.backward(grad)
    for name, a, r in zip("qkv", args, _ref_grads(q, k, v, grad)):
        assert_close(a.grad, r.to(dtype), dtype, grad=True, name=f"d{name}")
