"""AdaLN family against its reference: forward, backward, JVP, opcheck, compile, bad input."""
import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels.reference import adaln as ref
from cosmos_kernels.testing import assert_close
from tests.helpers import DTYPES, runnable_backends

SHAPES = [  # (B, T, N, D): odd sizes, D not a multiple of the block
    (2, 3, 5, 64),
    (1, 4, 7, 200),
    (2, 1, 33, 130),
]


def _inputs(B, T, N, D, dtype, gate_rows=None):
    x = torch.randn(B, T * N, D, dtype=dtype)
    y = torch.randn(B, T * N, D, dtype=dtype)
    gate = torch.randn(B, gate_rows or T, D, dtype=dtype)
    return x, y, gate


@pytest.mark.parametrize("backend", runnable_backends("gated_residual"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gated_residual_forward_backward(backend, dtype, shape):
    x, y, gate = _inputs(*shape, dtype)
    args = [t.clone().requires_grad_() for t in (x, y, gate)]
    out = ck.gated_residual(*args, backend=backend)
    expect = ref.gated_residual(x, y, gate)
    assert_close(out, expect, dtype)
    grad = torch.randn_like(out)
    out.backward(grad)
    # gradient reference: autograd through the fp32 reference
    ref_args = [t.float().requires_grad_() for t in (x, y, gate)]
    ref.gated_residual(*ref_args).backward(grad.float())
    for name, a, r in zip(("x", "y", "gate"), args, ref_args):
        assert_close(a.grad, r.grad.to(dtype), dtype, grad=True, name=f"d{name}")


@pytest.mark.parametrize("backend", runnable_backends("gated_residual"))
def test_gated_residual_broadcast_rows(backend):
    B, T, N, D = 2, 3, 4, 32
    x, y, _ = _inputs(B, T, N, D, torch.float32)
    gate = torch.randn(B, D)
    out = ck.gated_residual(x, y, gate, backend=backend)
    assert_close(out, x + gate[:, None, :] * y, torch.float32)


@pytest.mark.parametrize("backend", runnable_backends("gated_residual"))
def test_gated_residual_jvp(backend):
    x, y, gate = [t.double() if backend == "torch" else t for t in _inputs(2, 3, 5, 48, torch.float32)]
    tangents = tuple(torch.randn_like(t) for t in (x, y, gate))
    _, t_out = torch.func.jvp(lambda a, b, c: ck.gated_residual(a, b, c, backend=backend), (x, y, gate), tangents)
    _, t_ref = torch.func.jvp(ref.gated_residual, (x, y, gate), tangents)
    assert_close(t_out, t_ref, x.dtype, grad=True, name="tangent")


def test_gated_residual_backward_formula_matches_autograd():
    x, y, gate = [t.double() for t in _inputs(2, 3, 5, 16, torch.float32)]
    grad = torch.randn_like(x)
    dy, dgate = ref.gated_residual_backward(grad, y, gate)
    _, vjp = torch.func.vjp(ref.gated_residual, x, y, gate)
    _, ey, eg = vjp(grad)
    assert_close(dy, ey, torch.float64)
    assert_close(dgate, eg, torch.float64)


def test_gated_residual_opcheck():
    x, y, gate = _inputs(2, 3, 4, 16, torch.float32)
    for t in (x, y, gate):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.cosmos_kernels.gated_residual, (x, y, gate, "torch"))
    torch.library.opcheck(torch.ops.cosmos_kernels.gated_residual_bwd, (x.detach(), y.detach(), gate.detach(), "torch"))


def test_gated_residual_compile_fullgraph():
    x, y, gate = [t.requires_grad_() for t in _inputs(2, 3, 4, 16, torch.float32)]
    fn = torch.compile(lambda a, b, c: ck.gated_residual(a, b, c, backend="torch").square().sum(), fullgraph=True)
    loss = fn(x, y, gate)
    loss.backward()
    ref_args = [t.detach().clone().requires_grad_() for t in (x, y, gate)]
    ref.gated_residual(*ref_args).square().sum().backward()
    assert_close(loss.detach(), ref.gated_residual(*ref_args).square().sum().detach(), torch.float32)
    assert_close(gate.grad, ref_args[2].grad, torch.float32, grad=True)


@pytest.mark.parametrize("make, exc, words", [
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
])
def test_gated_residual_bad_input(make, exc, words):
    x, y, gate = _inputs(2, 3, 4, 16, torch.float32)
    with pytest.raises(exc, match=words):
        args = make(x, y, gate)
        ck.gated_residual(*args[:3], backend=args[3] if len(args) > 3 else None)
