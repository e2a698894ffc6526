"""AdaLN family against its reference: forward, backward, JVP, opcheck, compile, bad input.

Every runnable backend is tested: "triton" through the interpreter, "cuda" through the host build
of csrc/adaln (the same per-row source as the GPU kernels), "torch" (the reference op).
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import cosmos_kernels as ck
import cosmos_kernels.adaln as adaln_mod
from cosmos_kernels import _ext
from cosmos_kernels.reference import adaln as ref
from cosmos_kernels.testing import assert_close
from tests.helpers import DTYPES, runnable_backends

SHAPES = [  # (B, T, N, D): odd sizes, D not a multiple of the block nor of the 16-byte vector
    (2, 3, 5, 64),
    (1, 4, 7, 200),
    (2, 1, 9, 130),
]
# (token dtype, modulation dtype): the official fp32-modulation strategy is bf16 tokens + fp32
DTYPE_PAIRS = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
               (torch.float16, torch.float16), (torch.bfloat16, torch.float32)]
OPS = ("gated_residual", "adaln_modulate", "gated_residual_adaln")


def _tokens(B, T, N, D, dtype, n=2):
    return [torch.randn(B, T * N, D, dtype=dtype) for _ in range(n)]


def _mods(B, T, D, dtype, n=3, scale=0.5):
    return [scale * torch.randn(B, T, D, dtype=dtype) for _ in range(n)]


def _leaf(ts):
    return [t.clone().requires_grad_() for t in ts]


def _ref_grads(fn, inputs, grads):
    """Gradients of fn at inputs by autograd through the fp32 reference (fp64 stays fp64)."""
    args = [(t if t.dtype == torch.float64 else t.float()).detach().requires_grad_() for t in inputs]
    outs = fn(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward([o for o, g in zip(outs, grads) if g is not None],
                            [g.to(o.dtype) for o, g in zip(outs, grads) if g is not None])
    return [a.grad for a in args]


def _check_grads(args, expect, names, tol_dtype):
    """Each gradient in its input's dtype, within the threshold of the computation's lowest
    precision `tol_dtype` (an fp32 modulation gradient of bf16 tokens sums bf16-rounded values:
    x_new is rounded to bf16 before it is normalized, and the Triton interpreter rounds fp32 to
    bf16 by truncation where the GPU rounds to nearest)."""
    for name, a, e in zip(names, args, expect):
        assert a.grad is not None and a.grad.dtype == a.dtype, f"d{name}: missing or wrong dtype"
        assert_close(a.grad, e.to(a.dtype), tol_dtype, grad=True, name=f"d{name}")


# ---------------------------------------------------------------------------------------------
# gated_residual
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", runnable_backends("gated_residual"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gated_residual_forward_backward(backend, dtype, shape):
    B, T, N, D = shape
    x, y = _tokens(B, T, N, D, dtype)
    (gate,) = _mods(B, T, D, dtype, 1, scale=1.0)
    args = _leaf((x, y, gate))
    out = ck.gated_residual(*args, backend=backend)
    assert out.dtype == dtype
    assert_close(out, ref.gated_residual(x, y, gate), dtype)
    grad = torch.randn_like(out)
    out.backward(grad)
    _check_grads(args, _ref_grads(ref.gated_residual, (x, y, gate), [grad]), "xyg", dtype)


@pytest.mark.parametrize("backend", runnable_backends("gated_residual"))
def test_gated_residual_fp32_gate_with_bf16_tokens(backend):
    B, T, N, D = 2, 3, 5, 64
    x, y = _tokens(B, T, N, D, torch.bfloat16)
    (gate,) = _mods(B, T, D, torch.float32, 1)
    args = _leaf((x, y, gate))
    out = ck.gated_residual(*args, backend=backend)
    assert out.dtype == torch.bfloat16
    assert_close(out, ref.gated_residual(x, y, gate), torch.bfloat16)
    grad = torch.randn_like(out)
    out.backward(grad)
    expect = _ref_grads(ref.gated_residual, (x, y, gate), [grad])
    _check_grads(args, expect, "xyg", torch.bfloat16)


@pytest.mark.parametrize("backend", runnable_backends("gated_residual"))
def test_gated_residual_jvp(backend):
    x, y = [t.double() if backend == "torch" else t for t in _tokens(2, 3, 5, 48, torch.float32)]
    (gate,) = [t.double() if backend == "torch" else t for t in _mods(2, 3, 48, torch.float32, 1)]
    tangents = tuple(torch.randn_like(t) for t in (x, y, gate))
    _, t_out = torch.func.jvp(lambda a, b, c: ck.gated_residual(a, b, c, backend=backend), (x, y, gate), tangents)
    _, t_ref = torch.func.jvp(ref.gated_residual, (x, y, gate), tangents)
    assert_close(t_out, t_ref, x.dtype, grad=True, name="tangent")


def test_gated_residual_backward_formula_matches_autograd():
    x, y = [t.double() for t in _tokens(2, 3, 5, 16, torch.float32)]
    (gate,) = [t.double() for t in _mods(2, 3, 16, torch.float32, 1)]
    grad = torch.randn_like(x)
    dy, dgate = ref.gated_residual_backward(grad, y, gate)
    _, vjp = torch.func.vjp(ref.gated_residual, x, y, gate)
    _, ey, eg = vjp(grad)
    assert_close(dy, ey, torch.float64)
    assert_close(dgate, eg, torch.float64)


# ---------------------------------------------------------------------------------------------
# adaln_modulate and gated_residual_adaln: forward and backward
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", runnable_backends("adaln_modulate"))
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=lambda p: f"{p[0]}-mod{p[1]}".replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES)
def test_adaln_modulate_forward_backward(backend, dtypes, shape):
    dtype, mdtype = dtypes
    B, T, N, D = shape
    (x,) = _tokens(B, T, N, D, dtype, 1)
    shift, scale = _mods(B, T, D, mdtype, 2)
    args = _leaf((x, shift, scale))
    h = ck.adaln_modulate(*args, backend=backend)
    assert h.dtype == dtype
    assert_close(h, ref.adaln_modulate(x, shift, scale), dtype)
    grad = torch.randn_like(h)
    h.backward(grad)
    expect = _ref_grads(ref.adaln_modulate, (x, shift, scale), [grad])
    _check_grads(args, expect, ("x", "shift", "scale"), dtype)


@pytest.mark.parametrize("backend", runnable_backends("gated_residual_adaln"))
@pytest.mark.parametrize("dtypes", DTYPE_PAIRS, ids=lambda p: f"{p[0]}-mod{p[1]}".replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES)
def test_gated_residual_adaln_forward_backward(backend, dtypes, shape):
    dtype, mdtype = dtypes
    B, T, N, D = shape
    x, y = _tokens(B, T, N, D, dtype)
    gate, shift, scale = _mods(B, T, D, mdtype)
    args = _leaf((x, y, gate, shift, scale))
    x_new, h = ck.gated_residual_adaln(*args, backend=backend)
    e_new, e_h = ref.gated_residual_adaln(x, y, gate, shift, scale)
    assert x_new.dtype == h.dtype == dtype
    assert_close(x_new, e_new, dtype, name="x_new")
    assert_close(h, e_h, dtype, name="h")
    grads = [torch.randn_like(x_new), torch.randn_like(h)]
    torch.autograd.backward([x_new, h], grads)
    expect = _ref_grads(ref.gated_residual_adaln, (x, y, gate, shift, scale), grads)
    _check_grads(args, expect, ("x", "y", "gate", "shift", "scale"), dtype)


@pytest.mark.parametrize("backend", runnable_backends("gated_residual_adaln"))
@pytest.mark.parametrize("used", ["x_new", "h"])
def test_gated_residual_adaln_one_output_used(backend, used):
    """Only one output reaches the loss: the other's gradient is materialized as zeros."""
    B, T, N, D = 2, 3, 4, 40
    x, y = _tokens(B, T, N, D, torch.float32)
    gate, shift, scale = _mods(B, T, D, torch.float32)
    args = _leaf((x, y, gate, shift, scale))
    out = ck.gated_residual_adaln(*args, backend=backend)[0 if used == "x_new" else 1]
    grad = torch.randn_like(out)
    out.backward(grad)
    grads = [grad, None] if used == "x_new" else [None, grad]
    expect = _ref_grads(ref.gated_residual_adaln, (x, y, gate, shift, scale), grads)
    for a, e in zip(args, expect):
        if e is None:  # shift/scale do not reach x_new
            assert a.grad is None or not a.grad.any()
        else:
            assert_close(a.grad, e, torch.float32, grad=True)


@pytest.mark.parametrize("backend", runnable_backends("adaln_modulate"))
@pytest.mark.parametrize("rows", ["(B, D)", "(B, 1, D)"])
def test_broadcast_modulation_rows(backend, rows):
    B, T, N, D = 2, 3, 4, 32
    x, y = _tokens(B, T, N, D, torch.float32)
    flat = _mods(B, 1, D, torch.float32)
    mods = [m[:, 0] if rows == "(B, D)" else m for m in flat]
    gate, shift, scale = mods
    assert_close(ck.gated_residual(x, y, gate, backend=backend), ref.gated_residual(x, y, flat[0]), torch.float32)
    assert_close(ck.adaln_modulate(x, shift, scale, backend=backend), ref.adaln_modulate(x, *flat[1:]), torch.float32)
    got = ck.gated_residual_adaln(x, y, gate, shift, scale, backend=backend)
    for g, e in zip(got, ref.gated_residual_adaln(x, y, *flat)):
        assert_close(g, e, torch.float32)
    # the gradient of a broadcast row is the sum over every token, in the row's own shape
    args = _leaf((x, y, gate, shift, scale))
    x_new, h = ck.gated_residual_adaln(*args, backend=backend)
    (x_new.sum() + h.square().sum()).backward()
    ref_args = _leaf((x, y, *flat))
    e_new, e_h = ref.gated_residual_adaln(*ref_args)
    (e_new.sum() + e_h.square().sum()).backward()
    for a, e in zip(args[2:], ref_args[2:]):
        assert a.grad.shape == a.shape
        assert_close(a.grad, e.grad.reshape(a.shape), torch.float32, grad=True)


@pytest.mark.parametrize("backend", [b for b in runnable_backends("gated_residual_adaln") if b != "torch"])
@pytest.mark.parametrize("target", [1, 5])
def test_backward_chunking_is_exact_and_deterministic(backend, target, monkeypatch):
    """Few programs per launch: chunks of several rows, the last one short; repeated runs agree
    bit for bit (per-chunk partial sums, no atomics)."""
    from cosmos_kernels import _grid
    monkeypatch.setattr(_grid, "TARGET_PROGRAMS", target)
    B, T, N, D = 1, 2, 7, 48
    x, y = _tokens(B, T, N, D, torch.float32)
    gate, shift, scale = _mods(B, T, D, torch.float32)
    grads = [torch.randn(B, T * N, D), torch.randn(B, T * N, D)]
    results = []
    for _ in range(2):
        args = _leaf((x, y, gate, shift, scale))
        torch.autograd.backward(list(ck.gated_residual_adaln(*args, backend=backend)), grads)
        gr = _leaf((x, y, gate))
        ck.gated_residual(*gr, backend=backend).backward(grads[0])
        results.append([a.grad for a in args + gr])
    expect = _ref_grads(ref.gated_residual_adaln, (x, y, gate, shift, scale), grads)
    expect += _ref_grads(ref.gated_residual, (x, y, gate), grads[:1])
    for got, again, e in zip(*results, expect):
        assert torch.equal(got, again)
        assert_close(got, e, torch.float32, grad=True)


@pytest.mark.parametrize("backend", [b for b in runnable_backends("gated_residual_adaln") if b != "torch"])
def test_model_width_rows(backend):
    """D = 5120 (the 14B model): the row kernels' largest real width, and the vector path."""
    B, T, N, D = 1, 2, 2, 5120
    x, y = _tokens(B, T, N, D, torch.bfloat16)
    gate, shift, scale = _mods(B, T, D, torch.float32)
    got = ck.gated_residual_adaln(x, y, gate, shift, scale, backend=backend)
    for g, e in zip(got, ref.gated_residual_adaln(x, y, gate, shift, scale)):
        assert_close(g, e, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("D", [2048, 5120, 130])
def test_gpu_kernels_match_reference(backend, D):
    """The compiled kernels on a GPU: bf16 tokens with fp32 modulation (the official strategy),
    the model widths and an odd one (the scalar path); forward, backward, JVP (fp32)."""
    B, T, N = 2, 3, 37
    x, y = [t.cuda() for t in _tokens(B, T, N, D, torch.bfloat16)]
    gate, shift, scale = [t.cuda() for t in _mods(B, T, D, torch.float32)]
    args = _leaf((x, y, gate, shift, scale))
    outs = ck.gated_residual_adaln(*args, backend=backend)
    for o, e in zip(outs, ref.gated_residual_adaln(x, y, gate, shift, scale)):
        assert_close(o, e, torch.bfloat16)
    grads = [torch.randn_like(x), torch.randn_like(x)]
    torch.autograd.backward(list(outs), grads)
    expect = _ref_grads(ref.gated_residual_adaln, (x, y, gate, shift, scale), grads)
    _check_grads(args, expect, ("x", "y", "gate", "shift", "scale"), torch.bfloat16)
    args = _leaf((x, shift, scale))
    h = ck.adaln_modulate(*args, backend=backend)
    assert_close(h, ref.adaln_modulate(x, shift, scale), torch.bfloat16)
    h.backward(grads[1])
    _check_grads(args, _ref_grads(ref.adaln_modulate, (x, shift, scale), grads[1:]), ("x", "shift", "scale"),
                 torch.bfloat16)
    prim = tuple(t.float() for t in (x, y, gate, shift, scale))
    tan = tuple(torch.randn_like(t) for t in prim)
    _, t_out = torch.func.jvp(lambda *a: ck.gated_residual_adaln(*a, backend=backend), prim, tan)
    _, t_ref = torch.func.jvp(ref.gated_residual_adaln, prim, tan)
    for o, e in zip(t_out, t_ref):
        assert_close(o, e, torch.float32, grad=True)


# ---------------------------------------------------------------------------------------------
# reference formulas (backward and JVP) against autograd, float64
# ---------------------------------------------------------------------------------------------
def test_reference_backward_formulas_match_autograd():
    B, T, N, D = 2, 3, 5, 16
    x, y = [t.double() for t in _tokens(B, T, N, D, torch.float32)]
    gate, shift, scale = [t.double() for t in _mods(B, T, D, torch.float32)]
    gh, gx = torch.randn_like(x), torch.randn_like(x)
    _, vjp = torch.func.vjp(ref.adaln_modulate, x, shift, scale)
    mean, rstd = ref.layer_norm_stats(x, 1e-6)
    for got, e in zip(ref.adaln_modulate_backward(gh, x, scale, mean, rstd, scale.dtype), vjp(gh)):
        assert_close(got, e, torch.float64)
    x_new, _, mean, rstd = ref.gated_residual_adaln_fwd(x, y, gate, shift, scale)
    _, vjp = torch.func.vjp(ref.gated_residual_adaln, x, y, gate, shift, scale)
    got = ref.gated_residual_adaln_backward(gx, gh, x_new, y, gate, scale, mean, rstd, scale.dtype)
    for g, e in zip(got, vjp((gx, gh))):
        assert_close(g, e, torch.float64)


def test_reference_jvp_formulas_match_autograd():
    B, T, N, D = 2, 3, 5, 16
    prim = [t.double() for t in _tokens(B, T, N, D, torch.float32) + _mods(B, T, D, torch.float32)]
    tan = [torch.randn_like(t) for t in prim]
    x, y, gate, shift, scale = prim
    tx, ty, tgate, tshift, tscale = tan
    _, e = torch.func.jvp(ref.adaln_modulate, (x, shift, scale), (tx, tshift, tscale))
    assert_close(ref.adaln_modulate_jvp(x, scale, tx, tshift, tscale), e, torch.float64)
    _, e = torch.func.jvp(ref.gated_residual_adaln, tuple(prim), tuple(tan))
    got = ref.gated_residual_adaln_jvp(x, y, gate, scale, tx, ty, tgate, tshift, tscale)
    for g, ee in zip(got, e):
        assert_close(g, ee, torch.float64)


# ---------------------------------------------------------------------------------------------
# forward mode: torch.func.jvp through the ops, float64 on the reference, fp32 on the kernels
# ---------------------------------------------------------------------------------------------
def _jvp_inputs(backend, n_tokens):
    B, T, N, D = 2, 3, 5, 40
    dt = torch.float64 if backend == "torch" else torch.float32
    return [t.to(dt) for t in _tokens(B, T, N, D, torch.float32, n_tokens) + _mods(B, T, D, torch.float32)]


@pytest.mark.parametrize("backend", runnable_backends("adaln_modulate"))
def test_adaln_modulate_jvp(backend):
    x, _, shift, scale = _jvp_inputs(backend, 1)
    prim = (x, shift, scale)
    tan = tuple(torch.randn_like(t) for t in prim)
    _, t_out = torch.func.jvp(lambda *a: ck.adaln_modulate(*a, backend=backend), prim, tan)
    _, t_ref = torch.func.jvp(ref.adaln_modulate, prim, tan)
    assert_close(t_out, t_ref, x.dtype, grad=True, name="tangent")


@pytest.mark.parametrize("backend", runnable_backends("gated_residual_adaln"))
def test_gated_residual_adaln_jvp(backend):
    prim = tuple(_jvp_inputs(backend, 2))
    tan = tuple(torch.randn_like(t) for t in prim)
    _, t_out = torch.func.jvp(lambda *a: ck.gated_residual_adaln(*a, backend=backend), prim, tan)
    _, t_ref = torch.func.jvp(ref.gated_residual_adaln, prim, tan)
    for name, o, e in zip(("x_new", "h"), t_out, t_ref):
        assert_close(o, e, prim[0].dtype, grad=True, name=f"tangent of {name}")


@pytest.mark.parametrize("backend", runnable_backends("gated_residual_adaln"))
def test_jvp_with_some_tangents_absent(backend):
    """forward_ad with only some inputs dual: the absent tangents are zeros."""
    x, y, gate, shift, scale = _jvp_inputs(backend, 2)
    tx, tscale = torch.randn_like(x), torch.randn_like(scale)
    with fwAD.dual_level():
        out = ck.gated_residual_adaln(fwAD.make_dual(x, tx), y, gate, shift, fwAD.make_dual(scale, tscale),
                                      backend=backend)
        got = [fwAD.unpack_dual(o).tangent for o in out]
        h = ck.adaln_modulate(x, fwAD.make_dual(shift, torch.ones_like(shift)), scale, backend=backend)
        got_h = fwAD.unpack_dual(h).tangent
    zeros = [torch.zeros_like(t) for t in (y, gate, shift)]
    _, e = torch.func.jvp(ref.gated_residual_adaln, (x, y, gate, shift, scale), (tx, *zeros, tscale))
    for g, ee in zip(got, e):
        assert_close(g, ee, x.dtype, grad=True)
    assert_close(got_h, ref.expand_frames(torch.ones_like(shift), x.shape[1]), x.dtype, grad=True)


# ---------------------------------------------------------------------------------------------
# custom-op registration: opcheck, torch.compile
# ---------------------------------------------------------------------------------------------
def _opcheck_cases():
    B, T, N, D = 2, 3, 4, 16
    x, y, dx, dh = _tokens(B, T, N, D, torch.float32, 4)
    gate, shift, scale = _mods(B, T, D, torch.float32)
    _, _, mean, rstd = ref.gated_residual_adaln_fwd(x, y, gate, shift, scale)
    ops = torch.ops.cosmos_kernels
    grad_in = [t.clone().requires_grad_() for t in (x, y, gate, shift, scale)]
    return [
        (ops.gated_residual, (grad_in[0], grad_in[1], grad_in[2])),
        (ops.gated_residual_bwd, (dx, y, gate)),
        (ops.adaln_modulate, (grad_in[0], grad_in[3], grad_in[4], 1e-6)),
        (ops.adaln_modulate_bwd, (dh, x, scale, mean, rstd)),
        (ops.adaln_modulate_jvp, (x, scale, dx, shift, scale, 1e-6)),
        (ops.gated_residual_adaln, (*grad_in, 1e-6)),
        (ops.gated_residual_adaln_bwd, (dx, dh, x, y, gate, scale, mean, rstd)),
        (ops.gated_residual_adaln_jvp, (x, y, gate, scale, dx, dh, gate, shift, scale, 1e-6)),
    ]


@pytest.mark.parametrize("backend", runnable_backends("adaln_modulate"))
def test_opcheck_every_custom_op(backend):
    for op, args in _opcheck_cases():
        torch.library.opcheck(op, (*args, backend))


def test_compile_fullgraph_block():
    """The block's three ops in one torch.compile(fullgraph=True) graph, forward and backward."""
    B, T, N, D = 2, 3, 4, 16

    def block(x, y, gate, shift, scale, ops):
        h = ops["adaln_modulate"](x, shift, scale)
        x, h = ops["gated_residual_adaln"](x, h * y, gate, shift, scale)
        return ops["gated_residual"](x, h, gate).square().sum()

    ours = {n: (lambda *a, n=n: getattr(ck, n)(*a, backend="torch")) for n in OPS}
    refs = {n: getattr(ref, n) for n in OPS}
    inputs = _tokens(B, T, N, D, torch.float32) + _mods(B, T, D, torch.float32)
    args, ref_args = _leaf(inputs), _leaf(inputs)
    loss = torch.compile(lambda *a: block(*a, ours), fullgraph=True)(*args)
    loss.backward()
    expect = block(*ref_args, refs)
    expect.backward()
    assert_close(loss.detach(), expect.detach(), torch.float32)
    for a, e in zip(args, ref_args):
        assert_close(a.grad, e.grad, torch.float32, grad=True)


def test_host_extension_is_built():
    """CI must run the cuda backend's source on the CPU, never skip it silently."""
    if os.environ.get("COSMOS_KERNELS_ALLOW_NO_EXT") == "1":
        pytest.skip("COSMOS_KERNELS_ALLOW_NO_EXT=1")
    assert _ext.host_available(), f"cosmos_kernels._C is not built: {_ext.IMPORT_ERROR}"
    for op in OPS:
        assert "cuda" in runnable_backends(op)


def test_compile_report_of_the_triton_kernels():
    """The family's Triton kernels compile for sm_90a at their H100 configs without spilling (a
    subprocess: this one runs Triton as the interpreter). The nvcc rows of csrc/adaln.cu are left
    to `python -m cosmos_kernels.aot --only adaln` (about 20 s of nvcc)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "cosmos_kernels.aot", "--only", "adaln:", "--no-cuda"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "adaln:gated_residual_adaln_bwd[bf16,mod=fp32,D=5120]" in res.stdout


def test_defaults_do_not_prefer_cuda():
    """No GPU timing yet: CUDA tensors default to Triton for this family."""
    from cosmos_kernels import dispatch

    assert not any(dispatch.registered_ops()[op].prefer_cuda for op in OPS)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def _bad_inputs():
    x, y = _tokens(2, 3, 4, 16, torch.float32)
    g, sh, sc = _mods(2, 3, 16, torch.float32)
    return x, y, g, sh, sc


GR_BAD = [  # make(x, y, g) -> args [, backend]
    (lambda x, y, g: (x[0], y, g), ValueError, "x must have 3 dimensions"),
    (lambda x, y, g: (x, y[:, :-1], g), ValueError, "y has shape"),
    (lambda x, y, g: (x, y, g[:, :, :-1]), ValueError, "gate has shape"),
    (lambda x, y, g: (x, y, torch.randn(2, 5, 16)), ValueError, "multiple of T"),
    (lambda x, y, g: (x, y.double(), g), TypeError, "must match"),
    (lambda x, y, g: (x.double(), y.double(), g.double(), "triton"), TypeError, "only by backend 'torch'"),
    (lambda x, y, g: (x, y.half(), g), TypeError, "must match"),
    (lambda x, y, g: (x.int(), y, g), TypeError, "x has dtype torch.int32"),
    (lambda x, y, g: (x, y.transpose(1, 2).contiguous().transpose(1, 2), g), ValueError, "contiguous in its last"),
    (lambda x, y, g: (x, "y", g), TypeError, "y must be a torch.Tensor"),
    (lambda x, y, g: (x.bfloat16(), y.bfloat16(), g.half()), TypeError, "x's dtype or float32"),
    (lambda x, y, g: (x[:, :0], y[:, :0], g), ValueError, "zero-size dimension"),
    (lambda x, y, g: (x, y, g, "cudnn"), ValueError, "unknown backend"),
]


@pytest.mark.parametrize("make, exc, words", GR_BAD)
def test_gated_residual_bad_input(make, exc, words):
    x, y, g, _, _ = _bad_inputs()
    with pytest.raises(exc, match=words):
        args = make(x, y, g)
        ck.gated_residual(*args[:3], backend=args[3] if len(args) > 3 else None)


AM_BAD = [  # make(x, shift, scale) -> args [, eps [, backend]]
    (lambda x, sh, sc: (x[0], sh, sc), ValueError, "x must have 3 dimensions"),
    (lambda x, sh, sc: (x, sh[:, :, :-1], sc), ValueError, "shift has shape"),
    (lambda x, sh, sc: (x, sh, sc[:1]), ValueError, "scale has shape"),
    (lambda x, sh, sc: (x, sh, torch.randn(2, 5, 16)), ValueError, "multiple of T"),
    (lambda x, sh, sc: (x, sh, sc[:, :1]), ValueError, "same T"),
    (lambda x, sh, sc: (x, sh.double(), sc), TypeError, "must match"),
    (lambda x, sh, sc: (x.half(), sh.bfloat16(), sc.bfloat16()), TypeError, "x's dtype or float32"),
    (lambda x, sh, sc: (x.double(), sh.double(), sc.double(), 1e-6, "cuda"), TypeError, "only by backend 'torch'"),
    (lambda x, sh, sc: (x.long(), sh, sc), TypeError, "x has dtype torch.int64"),
    (lambda x, sh, sc: (x, sh, sc.transpose(1, 2).contiguous().transpose(1, 2)), ValueError, "contiguous in its last"),
    (lambda x, sh, sc: (x, None, sc), TypeError, "shift must be a torch.Tensor"),
    (lambda x, sh, sc: (x, sh, sc, 0.0), ValueError, "eps must be > 0"),
    (lambda x, sh, sc: (x, sh, sc, "1e-6"), TypeError, "eps must be a real number"),
    (lambda x, sh, sc: (x[:, :, :0], sh[:, :, :0], sc[:, :, :0]), ValueError, "zero-size dimension"),
    (lambda x, sh, sc: (torch.randn(1, 1, 8200), torch.randn(1, 1, 8200), torch.randn(1, 1, 8200), 1e-6, "triton"),
     ValueError, "supports D <= 8192"),
    (lambda x, sh, sc: (torch.randn(1, 1, 4099), torch.randn(1, 1, 4099), torch.randn(1, 1, 4099), 1e-6, "cuda"),
     ValueError, "unless D is a multiple of 4"),
]


@pytest.mark.parametrize("make, exc, words", AM_BAD)
def test_adaln_modulate_bad_input(make, exc, words):
    x, _, _, sh, sc = _bad_inputs()
    with pytest.raises(exc, match=words):
        args = make(x, sh, sc)
        ck.adaln_modulate(*args[:3], *args[3:4], backend=args[4] if len(args) > 4 else None)


GRA_BAD = [  # make(x, y, g, sh, sc) -> args [, eps [, backend]]
    (lambda x, y, g, sh, sc: (x, y[:1], g, sh, sc), ValueError, "y has shape"),
    (lambda x, y, g, sh, sc: (x, y.half(), g, sh, sc), TypeError, "must match"),
    (lambda x, y, g, sh, sc: (x, y, g.double(), sh, sc), TypeError, "must match"),
    (lambda x, y, g, sh, sc: (x, y, g[:, :, 1:], sh, sc), ValueError, "gate has shape"),
    (lambda x, y, g, sh, sc: (x, y, g, sh[:, :1], sc), ValueError, "same T"),
    (lambda x, y, g, sh, sc: (x, y, g, sh, sc.cpu().numpy()), TypeError, "scale must be a torch.Tensor"),
    (lambda x, y, g, sh, sc: (x.bfloat16(), y.bfloat16(), g.half(), sh.half(), sc.half()), TypeError,
     "x's dtype or float32"),
    (lambda x, y, g, sh, sc: (x, y, g, sh, sc, -1.0), ValueError, "eps must be > 0"),
    (lambda x, y, g, sh, sc: (x.double(), y.double(), g.double(), sh.double(), sc.double(), 1e-6, "triton"),
     TypeError, "only by backend 'torch'"),
    (lambda x, y, g, sh, sc: (x, y, g, sh, sc, 1e-6, "nccl"), ValueError, "unknown backend"),
]


@pytest.mark.parametrize("make, exc, words", GRA_BAD)
def test_gated_residual_adaln_bad_input(make, exc, words):
    with pytest.raises(exc, match=words):
        args = make(*_bad_inputs())
        ck.gated_residual_adaln(*args[:5], *args[5:6], backend=args[6] if len(args) > 6 else None)
