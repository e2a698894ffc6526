"""3D RoPE family against its reference and the official formula: the angle table, forward,
backward, JVP for every runnable backend, opcheck, torch.compile, bad input."""
import pytest
import torch

import cosmos_kernels as ck
from cosmos_kernels import rope as rope_mod
from cosmos_kernels.reference import rope as ref
from cosmos_kernels.testing import assert_close
from tests.helpers import DTYPES, runnable_backends

ROPE_BACKENDS = runnable_backends("apply_rope3d")
QK_BACKENDS = runnable_backends("qk_norm_rope")

# (B, grid (T, H, W), heads, D): S = T*H*W never a multiple of a block; D = 20 pads its half (10)
ROPE_SHAPES = [
    (2, (1, 3, 5), 3, 64),
    (1, (1, 2, 7), 5, 128),
    (2, (1, 3, 4), 2, 20),
]


# ---------------------------------------------------------------------------------------------
# the angle table against a line-by-line transcription of the official VideoRopePosition3DEmb
# ---------------------------------------------------------------------------------------------
def official_freqs(T, H, W, head_dim, h_ratio=1.0, w_ratio=1.0, t_ratio=1.0, fps=None, base_fps=24,
                   enable_fps_modulation=False):
    dim_h = head_dim // 6 * 2
    dim_w = dim_h
    dim_t = head_dim - 2 * dim_h
    seq = torch.arange(max(H, W, T)).float()
    spatial_range = torch.arange(0, dim_h, 2)[: (dim_h // 2)].float() / dim_h
    temporal_range = torch.arange(0, dim_t, 2)[: (dim_t // 2)].float() / dim_t
    h_theta = 10000.0 * h_ratio ** (dim_h / (dim_h - 2))
    w_theta = 10000.0 * w_ratio ** (dim_w / (dim_w - 2))
    t_theta = 10000.0 * t_ratio ** (dim_t / (dim_t - 2))
    h_freqs = 1.0 / (h_theta ** spatial_range)
    w_freqs = 1.0 / (w_theta ** spatial_range)
    t_freqs = 1.0 / (t_theta ** temporal_range)
    emb_h = torch.outer(seq[:H], h_freqs)
    emb_w = torch.outer(seq[:W], w_freqs)
    if enable_fps_modulation and fps is not None:
        emb_t = torch.outer(seq[:T] / fps[:1] * base_fps, t_freqs)
    else:
        emb_t = torch.outer(seq[:T], t_freqs)
    blocks = [emb_t[:, None, None, :].expand(T, H, W, -1),
              emb_h[None, :, None, :].expand(T, H, W, -1),
              emb_w[None, None, :, :].expand(T, H, W, -1)]
    return torch.cat(blocks * 2, dim=-1).reshape(T * H * W, head_dim).float()


@pytest.mark.parametrize("grid, head_dim, ratios, fps", [
    ((3, 4, 5), 128, (3.0, 3.0, 1.0), None),     # the 2B 720p run: h/w ratio 3, no fps modulation
    ((4, 2, 3), 128, (1.0, 1.0, 1.0), 16.0),     # fps modulation: time scaled by 24/16
    ((2, 3, 2), 64, (2.0, 1.5, 0.5), 30.0),
    ((1, 5, 6), 128, (3.0, 3.0, 1.0), None),     # an image
])
def test_freqs_match_official_formula(grid, head_dim, ratios, fps):
    T, H, W = grid
    h, w, t = ratios
    ours = ck.rope3d_freqs(grid, head_dim, h_extrapolation_ratio=h, w_extrapolation_ratio=w,
                           t_extrapolation_ratio=t, enable_fps_modulation=fps is not None, fps=fps)
    expect = official_freqs(T, H, W, head_dim, h, w, t, None if fps is None else torch.tensor([fps]),
                            enable_fps_modulation=fps is not None)
    assert ours.dtype == torch.float32 and ours.shape == (T * H * W, head_dim)
    assert torch.equal(ours, expect)


def test_freqs_layout_split_42_42_44():
    assert ref.axis_dims(128) == (44, 42, 42)
    T, H, W = 3, 4, 5
    f = ck.rope3d_freqs((T, H, W), 128, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0)
    table = f.reshape(T, H, W, 128)
    assert torch.equal(table[..., :64], table[..., 64:])  # [t, h, w, t, h, w]
    t_part, h_part, w_part = table[..., :22], table[..., 22:43], table[..., 43:64]
    assert torch.equal(t_part[0], torch.zeros_like(t_part[0]))       # position 0 on every axis
    assert torch.equal(h_part[:, 0], torch.zeros_like(h_part[:, 0]))
    assert torch.equal(w_part[:, :, 0], torch.zeros_like(w_part[:, :, 0]))
    assert torch.equal(t_part[2, 1, 3], 2 * t_part[1, 1, 3])         # linear in the position
    # NTK: ratio 3 on h gives theta = 10000 * 3^(42/40); frequency j = theta^(-2j/42)
    theta_h = 10000.0 * 3.0 ** (42 / 40)
    assert torch.allclose(h_part[0, 1, 0], theta_h ** (-torch.arange(0, 42, 2).double() / 42).float(), rtol=1e-6)
    # time frequencies unscaled (ratio 1): 10000^(-2j/44)
    assert torch.allclose(t_part[1, 0, 0], 10000.0 ** (-torch.arange(0, 44, 2).double() / 44).float(), rtol=1e-6)


def test_freqs_t_offset_and_fps_tensor():
    full = ck.rope3d_freqs((5, 2, 3), 64)
    chunk = ck.rope3d_freqs((3, 2, 3), 64, t_offset=2)
    assert torch.equal(chunk, full[2 * 6:])
    as_float = ck.rope3d_freqs((3, 2, 2), 64, enable_fps_modulation=True, fps=12.0)
    as_tensor = ck.rope3d_freqs((3, 2, 2), 64, enable_fps_modulation=True, fps=torch.tensor([12.0, 12.0]))
    assert torch.equal(as_float, as_tensor)
    doubled = ck.rope3d_freqs((3, 2, 2), 64)
    assert torch.allclose(as_float[:, :11], 2 * doubled[:, :11])  # 24 / 12: time positions doubled


# ---------------------------------------------------------------------------------------------
# apply_rope3d
# ---------------------------------------------------------------------------------------------
def _freqs(grid, D):
    return ck.rope3d_freqs(grid, D, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0)


@pytest.mark.parametrize("backend", ROPE_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROPE_SHAPES)
def test_apply_rope3d_forward_backward(backend, dtype, shape):
    B, grid, heads, D = shape
    freqs = _freqs(grid, D)
    x = torch.randn(B, freqs.shape[0], heads, D, dtype=dtype)
    xa = x.clone().requires_grad_()
    out = ck.apply_rope3d(xa, freqs, backend=backend)
    assert out.dtype == dtype and out.is_contiguous()
    xr = x.float().requires_grad_()
    expect = ref.rope(xr, freqs)
    assert_close(out, expect.to(dtype), dtype)
    grad = torch.randn_like(out)
    out.backward(grad)
    expect.backward(grad.float())
    assert_close(xa.grad, xr.grad.to(dtype), dtype, grad=True, name="dx")


@pytest.mark.parametrize("backend", ROPE_BACKENDS)
def test_apply_rope3d_matches_transformer_engine_formula(backend):
    # out[i] = x[i] cos - x[i + D/2] sin, out[i + D/2] = x[i + D/2] cos + x[i] sin (non-interleaved)
    freqs = _freqs((2, 2, 3), 32)
    x = torch.randn(1, 12, 2, 32)
    out = ck.apply_rope3d(x, freqs, backend=backend)
    c, s = freqs.cos()[None, :, None, :16], freqs.sin()[None, :, None, :16]
    x1, x2 = x[..., :16], x[..., 16:]
    assert_close(out, torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1), torch.float32)


@pytest.mark.parametrize("backend", ROPE_BACKENDS)
def test_apply_rope3d_jvp(backend):
    dtype = torch.float64 if backend == "torch" else torch.float32
    freqs = _freqs((2, 3, 2), 64)
    x = torch.randn(2, 12, 3, 64, dtype=dtype)
    tx = torch.randn_like(x)
    _, t_out = torch.func.jvp(lambda a: ck.apply_rope3d(a, freqs, backend=backend), (x,), (tx,))
    _, t_ref = torch.func.jvp(lambda a: ref.rope(a, freqs), (x,), (tx,))
    assert_close(t_out, t_ref, dtype, grad=True, name="tangent")


@pytest.mark.parametrize("backend", ROPE_BACKENDS)
def test_apply_rope3d_strided_input_and_official_layout(backend):
    freqs = _freqs((1, 3, 5), 64)
    qkv = torch.randn(2, 15, 3, 4, 64)
    x = qkv[:, :, 1]  # (B, S, H, D) view with a non-standard token stride
    out = ck.apply_rope3d(x, freqs[:, None, None, :], backend=backend)  # official (S, 1, 1, D) table
    assert_close(out, ref.rope(x, freqs), torch.float32)


# ---------------------------------------------------------------------------------------------
# qk_norm_rope
# ---------------------------------------------------------------------------------------------
def _qk_inputs(B, grid, heads, D, dtype, w_dtype=None):
    freqs = _freqs(grid, D)
    S = freqs.shape[0]
    q = torch.randn(B, S, heads, D, dtype=dtype) * 3
    k = torch.randn(B, S, heads, D, dtype=dtype)
    qw = (1 + 0.5 * torch.randn(D)).to(w_dtype or dtype)
    kw = (1 + 0.5 * torch.randn(D)).to(w_dtype or dtype)
    return q, k, qw, kw, freqs


def _check_qk_grads(backend, q, k, qw, kw, freqs, eps=1e-6):
    dtype = q.dtype
    args = [t.clone().requires_grad_() for t in (q, k, qw, kw)]
    q_out, k_out = ck.qk_norm_rope(*args, freqs, eps, backend=backend)
    assert q_out.dtype == dtype and k_out.shape == k.shape
    ref_args = [t.float().requires_grad_() for t in (q, k, qw, kw)]
    eq, ek = ref.qk_norm_rope(*ref_args, freqs, eps)
    assert_close(q_out, eq.to(dtype), dtype, name="q_out")
    assert_close(k_out, ek.to(dtype), dtype, name="k_out")
    gq, gk = torch.randn_like(q_out), torch.randn_like(k_out)
    torch.autograd.backward((q_out, k_out), (gq, gk))
    torch.autograd.backward((eq, ek), (gq.float(), gk.float()))
    for name, a, r in zip(("q", "k", "q_weight", "k_weight"), args, ref_args):
        assert a.grad.dtype == a.dtype
        assert_close(a.grad, r.grad.to(a.dtype), a.dtype, grad=True, long_reduction="weight" in name,
                     name=f"d{name}")


@pytest.mark.parametrize("backend", QK_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROPE_SHAPES)
def test_qk_norm_rope_forward_backward(backend, dtype, shape):
    _check_qk_grads(backend, *_qk_inputs(*shape, dtype))


@pytest.mark.parametrize("backend", QK_BACKENDS)
def test_qk_norm_rope_fp32_weights_bf16_activations(backend):
    _check_qk_grads(backend, *_qk_inputs(2, (1, 3, 5), 2, 128, torch.bfloat16, w_dtype=torch.float32))


@pytest.mark.parametrize("backend", QK_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_only_cross_attention(backend, dtype):
    # freqs=None: RMSNorm only; k holds text tokens (other S, other head count)
    q = torch.randn(2, 15, 4, 64, dtype=dtype)
    k = torch.randn(2, 7, 3, 64, dtype=dtype).transpose(1, 2).contiguous().transpose(1, 2)  # strided
    qw, kw = torch.randn(64, dtype=dtype), torch.randn(64, dtype=dtype)
    _check_qk_grads(backend, q, k, qw, kw, None, eps=1e-5)


@pytest.mark.parametrize("backend", [b for b in QK_BACKENDS if b != "torch"])
def test_qk_norm_rope_many_tokens_per_program(backend, monkeypatch):
    # production grids give each program/warp many tokens; force that (with a remainder) here
    from cosmos_kernels.triton import rope as triton_rope
    monkeypatch.setattr(triton_rope, "FWD_PROGRAMS", 3)
    monkeypatch.setattr(triton_rope, "BWD_PROGRAMS", 2)
    monkeypatch.setattr(rope_mod._Cuda, "PARTS_FWD", 5)
    monkeypatch.setattr(rope_mod._Cuda, "PARTS_BWD", 3)
    _check_qk_grads(backend, *_qk_inputs(2, (1, 3, 5), 3, 64, torch.float32))
    x = torch.randn(2, 15, 3, 64).requires_grad_()
    freqs = _freqs((1, 3, 5), 64)
    out = ck.apply_rope3d(x, freqs, backend=backend)
    assert_close(out, ref.rope(x.detach(), freqs), torch.float32)


@pytest.mark.parametrize("backend", QK_BACKENDS)
@pytest.mark.parametrize("with_rope", [True, False])
def test_qk_norm_rope_jvp(backend, with_rope):
    dtype = torch.float64 if backend == "torch" else torch.float32
    q, k, qw, kw, freqs = _qk_inputs(2, (1, 3, 4), 3, 64, dtype)
    freqs = freqs if with_rope else None
    primals = (q, k, qw, kw)
    tangents = tuple(torch.randn_like(t) for t in primals)
    out, t_out = torch.func.jvp(lambda *a: ck.qk_norm_rope(*a, freqs, 1e-6, backend=backend), primals, tangents)
    expect, t_ref = torch.func.jvp(lambda *a: ref.qk_norm_rope(*a, freqs, 1e-6), primals, tangents)
    for o, e in zip(out, expect):
        assert_close(o, e, dtype)
    for name, o, e in zip(("q", "k"), t_out, t_ref):
        assert_close(o, e, dtype, grad=True, name=f"tangent {name}")
    # tangents on q only (weights and k constant)
    _, t_q_only = torch.func.jvp(lambda a: ck.qk_norm_rope(a, k, qw, kw, freqs, 1e-6, backend=backend),
                                 (q,), (tangents[0],))
    _, t_q_ref = torch.func.jvp(lambda a: ref.qk_norm_rope(a, k, qw, kw, freqs, 1e-6), (q,), (tangents[0],))
    assert_close(t_q_only[0], t_q_ref[0], dtype, grad=True)
    assert not t_q_only[1].abs().max() > 0


def test_reference_backward_and_jvp_formulas_match_autograd():
    q, k, qw, kw, freqs = _qk_inputs(2, (2, 2, 3), 3, 32, torch.float64)
    grads = torch.randn_like(q), torch.randn_like(k)
    _, vjp = torch.func.vjp(lambda *a: ref.qk_norm_rope(*a, freqs, 1e-6), q, k, qw, kw)
    for ours, auto in zip(ref.qk_norm_rope_backward(*grads, q, k, qw, kw, freqs, 1e-6), vjp(grads)):
        assert_close(ours, auto, torch.float64)
    tangents = [torch.randn_like(t) for t in (q, k, qw, kw)]
    _, t_auto = torch.func.jvp(lambda *a: ref.qk_norm_rope(*a, freqs, 1e-6), (q, k, qw, kw), tuple(tangents))
    for ours, auto in zip(ref.qk_norm_rope_jvp(q, k, qw, kw, *tangents, freqs, 1e-6), t_auto):
        assert_close(ours, auto, torch.float64)
    g = torch.randn_like(q)
    _, vjp_rope = torch.func.vjp(lambda a: ref.rope(a, freqs), q)
    assert_close(ref.apply_rope3d_backward(g, freqs), vjp_rope(g)[0], torch.float64)


@pytest.mark.parametrize("backend", QK_BACKENDS)
def test_opcheck(backend):
    q, k, qw, kw, freqs = _qk_inputs(1, (1, 2, 3), 2, 16, torch.float32)
    for t in (q, k, qw, kw):
        t.requires_grad_()
    ops = torch.ops.cosmos_kernels
    torch.library.opcheck(ops.apply_rope3d, (q, freqs, backend))
    torch.library.opcheck(ops.apply_rope3d_bwd, (q.detach(), freqs, backend))
    torch.library.opcheck(ops.qk_norm_rope, (q, k, qw, kw, freqs, 1e-6, backend))
    torch.library.opcheck(ops.qk_norm_rope, (q, k[:, :4], qw, kw, None, 1e-6, backend))
    d = [t.detach() for t in (q, k, qw, kw)]
    torch.library.opcheck(ops.qk_norm_rope_bwd, (d[0], d[1], *d, freqs, 1e-6, backend))
    torch.library.opcheck(ops.qk_norm_rope_jvp, (*d, d[0], d[1], d[2], None, freqs, 1e-6, backend))


def test_compile_fullgraph():
    q, k, qw, kw, freqs = _qk_inputs(1, (1, 2, 3), 2, 16, torch.float32)
    args = [t.clone().requires_grad_() for t in (q, k, qw, kw)]

    def block(q, k, qw, kw):
        qn, kn = ck.qk_norm_rope(q, k, qw, kw, freqs, backend="torch")
        return (ck.apply_rope3d(qn, freqs, backend="torch") * kn).sum()

    loss = torch.compile(block, fullgraph=True)(*args)
    loss.backward()
    ref_args = [t.clone().requires_grad_() for t in (q, k, qw, kw)]
    qn, kn = ref.qk_norm_rope(*ref_args, freqs, 1e-6)
    expect = (ref.rope(qn, freqs) * kn).sum()
    expect.backward()
    assert_close(loss.detach(), expect.detach(), torch.float32)
    for a, r in zip(args, ref_args):
        assert_close(a.grad, r.grad, torch.float32, grad=True)


def test_default_backend_on_cpu_is_reference():
    x = torch.randn(1, 2, 1, 16)
    assert ck.backend_for("apply_rope3d", x) == "torch"
    assert ck.backend_for("qk_norm_rope", x) == "torch"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_720p_slice_bf16(backend):
    freqs = ck.rope3d_freqs((2, 44, 80), 128, h_extrapolation_ratio=3.0, w_extrapolation_ratio=3.0, device="cuda")
    q, k = (torch.randn(1, freqs.shape[0], 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    qw, kw = (torch.randn(128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    _check_qk_grads(backend, q, k, qw, kw, freqs)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def _good():
    q, k, qw, kw, freqs = _qk_inputs(1, (1, 2, 3), 2, 16, torch.float32)
    return dict(q=q, k=k, q_weight=qw, k_weight=kw, freqs=freqs)


@pytest.mark.parametrize("change, exc, words", [
    (dict(q=torch.randn(1, 6, 2, 15), k=torch.randn(1, 6, 2, 15)), ValueError, "head dim D=15"),
    (dict(q=torch.randn(1, 6, 2, 258), k=torch.randn(1, 6, 2, 258)), ValueError, "2 <= D <= 256"),
    (dict(q=torch.randn(6, 2, 16)), ValueError, "q must have 4 dimensions"),
    (dict(k=torch.randn(1, 6, 2, 32)), ValueError, "k has head dim 32 but q has 16"),
    (dict(freqs=torch.randn(5, 16)), ValueError, r"expected \(S, D\) = \(6, 16\)"),
    (dict(freqs=torch.randn(6, 18)), ValueError, r"expected \(S, D\) = \(6, 16\)"),
    (dict(freqs=torch.randn(6, 2, 1, 16)), ValueError, r"expected \(S, D\) or \(S, 1, 1, D\)"),
    (dict(freqs=torch.randn(6, 16).bfloat16()), TypeError, "freqs has dtype torch.bfloat16"),
    (dict(freqs=torch.randn(6, 16).double(), backend="cuda"), TypeError, "freqs has dtype float64"),
    (dict(freqs=torch.randn(6, 16, requires_grad=True)), ValueError, "freqs requires grad"),
    (dict(freqs=torch.randn(16, 6).t()), ValueError, "freqs must be contiguous in its last"),
    (dict(k=torch.randn(1, 4, 2, 16)), ValueError, "need the same S"),
    (dict(q_weight=torch.randn(8)), ValueError, r"q_weight has shape \(8,\), expected \(16\)"),
    (dict(k_weight=torch.randn(16, 1)), ValueError, r"k_weight has shape \(16, 1\)"),
    (dict(k=torch.randn(1, 6, 2, 16).half()), TypeError, "k has dtype torch.float16 but q has"),
    (dict(q=torch.randn(1, 6, 2, 16).int()), TypeError, "q has dtype torch.int32"),
    (dict(k_weight=torch.randn(16, device="meta")), ValueError, "k_weight is on meta but q is on cpu"),
    (dict(q=torch.randn(1, 6, 2, 16).double(), k=torch.randn(1, 6, 2, 16).double(), backend="cuda"),
     TypeError, "only by backend 'torch'"),
    (dict(q_weight=torch.randn(16).double(), backend="cuda"), TypeError, "q_weight has dtype torch.float64"),
    (dict(q=torch.randn(1, 6, 2, 32)[..., ::2], ), ValueError, "q must be contiguous in its last"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(q_weight="w"), TypeError, "q_weight must be a torch.Tensor"),
    (dict(backend="tpu"), ValueError, "unknown backend"),
])
def test_qk_norm_rope_bad_input(change, exc, words):
    args = _good() | {"eps": 1e-6, "backend": None} | change
    if args["backend"] == "cuda" and "cuda" not in QK_BACKENDS:
        pytest.skip("cuda backend (host build of _C) is not available")
    with pytest.raises(exc, match=words):
        ck.qk_norm_rope(**args)


@pytest.mark.parametrize("make, exc, words", [
    (lambda x, f: (x[..., :15], f[:, :15]), ValueError, "head dim D=15"),
    (lambda x, f: (x, f[:-1]), ValueError, r"expected \(S, D\) = \(6, 16\)"),
    (lambda x, f: (x[0], f), ValueError, "x must have 4 dimensions"),
    (lambda x, f: (x, f.to("meta")), ValueError, "freqs is on meta but x is on cpu"),
    (lambda x, f: (x, "f"), TypeError, "freqs must be a torch.Tensor"),
])
def test_apply_rope3d_bad_input(make, exc, words):
    x, f = torch.randn(1, 6, 2, 16), _freqs((1, 2, 3), 16)
    with pytest.raises(exc, match=words):
        ck.apply_rope3d(*make(x, f))


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(grid=(2, 3)), ValueError, r"grid must be \(T, H, W\)"),
    (dict(grid=(2, 0, 3)), ValueError, r"grid must be \(T, H, W\)"),
    (dict(head_dim=127), ValueError, "head_dim must be an even int >= 12"),
    (dict(head_dim=10), ValueError, "head_dim must be an even int >= 12"),
    (dict(h_extrapolation_ratio=0.0), ValueError, "h_extrapolation_ratio must be > 0"),
    (dict(enable_fps_modulation=True), ValueError, "needs fps for a video"),
    (dict(enable_fps_modulation=True, fps=torch.tensor([24.0, 30.0])), ValueError, "several values"),
    (dict(enable_fps_modulation=True, fps=-1.0), ValueError, "fps must be a positive number"),
    (dict(t_offset="1"), TypeError, "t_offset must be a number"),
])
def test_rope3d_freqs_bad_input(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        ck.rope3d_freqs(**({"grid": (2, 3, 4), "head_dim": 64} | kwargs))
