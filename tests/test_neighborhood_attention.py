"""3D neighborhood attention: the spec (NATTEN na3d semantics), the fused Triton kernels against
it (forward, gradients, JVP, tile skipping), opcheck, compile, the DiT window helper, bad input."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import cosmos_kernels as ck
from cosmos_kernels.neighborhood_attention import NeighborhoodWindow, attended_pairs
from cosmos_kernels.reference import neighborhood_attention as ref
from cosmos_kernels.testing import assert_close
from cosmos_kernels.triton.neighborhood_attention import _win_end, _win_start
from tests.helpers import runnable_backends

BACKENDS = runnable_backends("neighborhood_attention_3d")
TRITON = pytest.mark.skipif("triton" not in BACKENDS, reason="triton backend not runnable here")

# (grid, kernel_size, dilation, stride, is_causal): odd grids, windows at borders, even kernels,
# dilation (grid not a multiple of it), stride groups, causal time, dense along an axis
CASES = {
    "odd-borders": ((3, 5, 7), 3, 1, 1, False),
    "even-kernel-stride": ((3, 5, 7), (2, 4, 4), 1, (1, 2, 2), False),
    "dilation": ((4, 6, 9), (2, 3, 3), (1, 2, 3), 1, False),
    "causal-time-dilated-strided": ((4, 6, 9), (2, 3, 3), (1, 2, 2), (2, 3, 2), (True, False, False)),
    "dense-time-official-like": ((3, 8, 10), (3, 4, 4), 1, (1, 2, 4), False),
}


def _qkv(grid, dtype=torch.float32, B=1, H=1, D=16):
    S = math.prod(grid)
    return [torch.randn(B, S, H, D, dtype=dtype) for _ in range(3)]


def _full(kernel_size, dilation, stride, is_causal):
    return ck.neighborhood_attention.resolve_geometry((99, 99, 99), kernel_size, dilation, stride, is_causal)[1:]


def _ref(q, k, v, grid, kernel_size, dilation=1, stride=1, is_causal=False, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return ref.neighborhood_attention_3d(q, k, v, grid, *_full(kernel_size, dilation, stride, is_causal), scale)[0]


# ---------------------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------------------
def _keys(length, kernel, dilation=1, stride=1, causal=False):
    m = ref.axis_mask(length, kernel, dilation, stride, causal)
    return [torch.nonzero(row).flatten().tolist() for row in m]


def test_spec_hand_examples():
    # window of 3 shifted inwards at both borders (always full)
    assert _keys(5, 3) == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [2, 3, 4]]
    # even kernel: one more key on the left
    assert _keys(5, 2) == [[0, 1], [0, 1], [1, 2], [2, 3], [3, 4]]
    # dilation 2 on 7: groups {0,2,4,6} and {1,3,5}, windows of 3 inside each group
    assert _keys(7, 3, dilation=2) == [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [2, 4, 6], [1, 3, 5], [2, 4, 6]]
    # stride 2: queries {0,1}, {2,3}, ... share the window of the right-centre leader (1, 3, 5)
    assert _keys(6, 3, stride=2) == [[0, 1, 2], [0, 1, 2], [2, 3, 4], [2, 3, 4], [3, 4, 5], [3, 4, 5]]
    # causal: the last kernel_size keys up to the query itself
    assert _keys(5, 3, causal=True) == [[0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    # causal + stride 2: leader is the last of the group; no key after the query
    assert _keys(6, 3, stride=2, causal=True) == [[0], [0, 1], [1, 2], [1, 2, 3], [3, 4], [3, 4, 5]]


@pytest.mark.parametrize("length", [1, 2, 5, 8, 11])
def test_spec_properties(length):
    for kernel in range(1, length + 1):
        for dilation in range(1, length // kernel + 1):
            for stride in range(1, kernel + 1):
                m = ref.axis_mask(length, kernel, dilation, stride, False)
                assert (m.sum(1) == kernel).all()                        # always full
                pos = torch.arange(length)
                assert (m == m & ((pos[:, None] % dilation) == (pos[None, :] % dilation))).all()
                groups = (pos // dilation) // stride                    # same stride group, same window
                for g in range(dilation):
                    idx = pos[pos % dilation == g]
                    for sg in groups[idx].unique():
                        rows = m[idx[groups[idx] == sg]]
                        assert (rows == rows[0]).all()
                c = ref.axis_mask(length, kernel, dilation, stride, True)
                assert not (c & (pos[None, :] > pos[:, None])).any()     # never a future key
                assert c.sum(1).max() <= kernel
    assert ref.axis_mask(length, length, 1, 1, False).all()             # kernel = length: dense


@triton.jit
def _window_bounds(N, KS, ST, START, END, CAUSAL: tl.constexpr, P: tl.constexpr):
    c = tl.program_id(0)
    n, ks, st = tl.load(N + c), tl.load(KS + c), tl.load(ST + c)
    x = tl.minimum(tl.arange(0, P), n - 1)
    tl.store(START + c * P + tl.arange(0, P), _win_start(x, n, ks, st, CAUSAL))
    tl.store(END + c * P + tl.arange(0, P), _win_end(x, n, ks, st, CAUSAL))


def test_window_formula_in_triton_matches_spec():
    """The @triton.jit window bounds, for every (n, kernel, stride, causal) with n <= 12, equal
    the reference's (one interpreter launch evaluates them all)."""
    combos = [(n, k, s) for n in range(1, 13) for k in range(1, n + 1) for s in range(1, k + 1)]
    n, ks, st = (torch.tensor(c, dtype=torch.int32) for c in zip(*combos))
    for causal in (False, True):
        start = torch.empty(len(combos), 16, dtype=torch.int32)
        end = torch.empty_like(start)
        _window_bounds[(len(combos),)](n, ks, st, start, end, CAUSAL=causal, P=16)
        for i, (ni, ki, si) in enumerate(combos):
            es, ee = ref.axis_window(torch.arange(ni), ni, ki, si, causal)
            assert start[i, :ni].tolist() == es.tolist() and end[i, :ni].tolist() == ee.tolist(), (ni, ki, si, causal)


def test_attended_pairs_and_density():
    for grid, kernel_size, dilation, stride, is_causal in CASES.values():
        geom = _full(kernel_size, dilation, stride, is_causal)
        expect = int(ref.neighborhood_mask(grid, *geom).sum())
        assert attended_pairs(grid, kernel_size, dilation, stride, is_causal) == expect
    assert attended_pairs((2, 3, 4), (2, 3, 4)) == 24 ** 2
    assert attended_pairs((24, 44, 80), (24, 12, 24), stride=(1, 4, 8)) == (24 * 24) * (44 * 12) * (80 * 24)


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------
@TRITON
@pytest.mark.parametrize("case", CASES)
def test_forward_triton(case):
    grid, *window = CASES[case]
    q, k, v = _qkv(grid)
    out = ck.neighborhood_attention_3d(q, k, v, grid, *window, backend="triton")
    assert_close(out, _ref(q, k, v, grid, *window), torch.float32)


@TRITON
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_forward_triton_half(dtype):
    grid, *window = CASES["even-kernel-stride"]
    q, k, v = _qkv(grid, dtype, D=32)
    out = ck.neighborhood_attention_3d(q, k, v, grid, *window, backend="triton")
    assert out.dtype == dtype
    assert_close(out, _ref(q, k, v, grid, *window), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_heads_strided_inputs_scale(backend):
    """B, heads > 1, q/k/v as views of one packed qkv tensor (non-contiguous), D not a power of 2,
    an explicit softmax_scale."""
    grid, B, H, D = (2, 3, 4), 2, 3, 24
    qkv = torch.randn(B, math.prod(grid), 3, H, D)
    q, k, v = qkv.unbind(2)
    out = ck.neighborhood_attention_3d(q, k, v, grid, (2, 2, 3), is_causal=(True, False, False), softmax_scale=0.3,
                                       backend=backend)
    assert_close(out, _ref(q, k, v, grid, (2, 2, 3), is_causal=(True, False, False), scale=0.3), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    q, k, v = (torch.randn(0, 30, 2, 16, requires_grad=True) for _ in range(3))
    out = ck.neighborhood_attention_3d(q, k, v, (2, 3, 5), (2, 2, 3), backend=backend)
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_grid_equals_dense_attention(backend):
    grid = (2, 3, 5)
    q, k, v = _qkv(grid, B=1, H=2)
    out = ck.neighborhood_attention_3d(q, k, v, grid, grid, backend=backend)
    dense = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert_close(out, dense, torch.float32)
    # dense along one axis only: the time axis never restricts
    out_t = ck.neighborhood_attention_3d(q, k, v, grid, (2, 1, 1), backend=backend)
    per_pos = ref.neighborhood_mask(grid, (2, 1, 1), (1,) * 3, (1,) * 3, (False,) * 3)
    assert (per_pos.sum(1) == 2).all()
    assert_close(out_t, _ref(q, k, v, grid, (2, 1, 1)), torch.float32)


# ---------------------------------------------------------------------------------------------
# tile skipping
# ---------------------------------------------------------------------------------------------
@TRITON
def test_tile_skipping_visits_fewer_key_tiles():
    from cosmos_kernels.triton import neighborhood_attention as tri

    grid = (4, 8, 16)
    q, k, v = _qkv(grid)

    def visited(kernel_size, stride=1, run=True):
        geom = tri.Geometry(grid, *_full(kernel_size, 1, stride, False))
        p = tri.plan(geom, tri.INTERPRETER_CONFIG.block_outer, tri.INTERPRETER_CONFIG.block_inner, True)
        if run:
            counts = torch.full((2, p.programs), -1, dtype=torch.int32)
            out, _ = tri.forward(q, k, v, geom, 0.25, visits=counts)
            assert_close(out, _ref(q, k, v, grid, kernel_size, stride=stride, scale=0.25), torch.float32)
            # the host's plan counts exactly what the kernel walked, and masked
            assert counts.sum(1).tolist() == [p.visits, p.masked]
        return p.visits

    dense = visited(grid, run=False)
    assert dense == (math.prod(grid) // 16) ** 2          # dense: every query tile x every key tile
    small = visited((2, 3, 3))
    assert small <= dense // 8, (small, dense)
    strided = visited((2, 4, 8), stride=(1, 4, 8))        # stride-aligned tiles: union = one window
    assert strided <= dense // 4, (strided, dense)


def test_padded_tiles_of_whole_stride_groups_are_counted_exactly(monkeypatch):
    """Stride (1, 3, 5), as the 480p window has: the plan picks 1×3×5 tiles (one stride group, one
    window) padded to 16 rows; the kernel walks exactly the planned tiles, and the result is exact."""
    from cosmos_kernels.triton import neighborhood_attention as tri

    grid, kernel, stride = (2, 6, 10), (2, 3, 5), (1, 3, 5)
    geom = tri.Geometry(grid, kernel, (1, 1, 1), stride, (False,) * 3)
    cfg = tri.INTERPRETER_CONFIG
    monkeypatch.setenv(tri.PADDED_TILES_ENV, "1")  # opt-in (no GPU measurement yet)
    p = tri.plan(geom, cfg.block_outer, cfg.block_inner, True)
    assert p.outer_tile == p.inner_tile == (1, 3, 5) and p.masked == 0, p
    q, k, v = _qkv(grid, H=2)
    counts = torch.full((2, p.programs), -1, dtype=torch.int32)
    out, _ = tri.forward(q, k, v, geom, 0.25, visits=counts)
    assert counts.sum(1).tolist() == [p.visits, 0]
    # every real (query, key) row pair of every visited tile is an attended pair: no waste but the padding
    assert p.visits * 15 * 15 == attended_pairs(grid, kernel, (1, 1, 1), stride, (False,) * 3)
    assert_close(out, _ref(q, k, v, grid, kernel, stride=stride, scale=0.25), torch.float32)


@pytest.mark.parametrize("kernel", [(24, 8, 16), (24, 15, 13)])
def test_plan_480p_strides(monkeypatch, kernel):
    """At 480p (grid 24×30×52, stride (1, 3, 5): the official window scaled, and a narrower one)
    the query-tile kernels' plans compute at most ~1.2× the attended pairs with the opt-in tiles of
    whole stride groups, against 1.3-1.5× for the best power-of-two boxes (the default until a GPU
    measurement); dk/dv keeps power-of-two tiles; the default is the power-of-two plan."""
    from cosmos_kernels.triton import neighborhood_attention as tri

    grid, stride = (24, 30, 52), (1, 3, 5)
    geom = tri.Geometry(grid, kernel, (1, 1, 1), stride, (False,) * 3)
    pairs = attended_pairs(grid, kernel, (1, 1, 1), stride, (False,) * 3)

    def work(name, padded):
        cfg = tri.GPU_CONFIGS[name]
        monkeypatch.setenv(tri.PADDED_TILES_ENV, "1" if padded else "0")
        p = tri.plan(geom, cfg.block_outer, cfg.block_inner, name != "dkdv")
        return p, p.visits * cfg.block_outer * cfg.block_inner / pairs

    for name in ("fwd", "dq", "jvp"):
        p, padded = work(name, True)
        _, pow2 = work(name, False)
        assert padded <= 1.21 and padded < pow2 - 0.1, (name, padded, pow2, p)
        assert math.prod(p.outer_tile) < tri.GPU_CONFIGS[name].block_outer, p   # the padded path is the one used
    p, dkdv = work("dkdv", True)
    assert all(n & (n - 1) == 0 for n in (*p.outer_tile, *p.inner_tile)) and dkdv == work("dkdv", False)[1]
    monkeypatch.delenv(tri.PADDED_TILES_ENV)
    assert not tri.padded_tiles() and tri.plan(geom, 128, 64, True) == work("fwd", False)[0]


def test_plan_official_720p_window():
    """At 720p with the official window, the plan visits close to the attended pairs (little
    waste from tile edges), counted for the H100 tile sizes."""
    from cosmos_kernels.triton import neighborhood_attention as tri

    grid, kernel, stride = (24, 44, 80), (24, 12, 24), (1, 4, 8)
    geom = tri.Geometry(grid, kernel, (1, 1, 1), stride, (False,) * 3)
    cfg = tri.GPU_CONFIGS["fwd"]
    p = tri.plan(geom, cfg.block_outer, cfg.block_inner, True)
    computed = p.visits * cfg.block_outer * cfg.block_inner
    pairs = attended_pairs(grid, kernel, stride=stride)
    assert pairs <= computed <= 1.5 * pairs, (computed / pairs, p)


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
def _grads(fn, args, grad):
    args = [a.detach().clone().requires_grad_() for a in args]
    fn(*args).backward(grad)
    return [a.grad for a in args]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, dtype", [("causal-time-dilated-strided", torch.float32),
                                         ("even-kernel-stride", torch.bfloat16)])
def test_gradients(backend, case, dtype):
    grid, *window = CASES[case]
    q, k, v = _qkv(grid, dtype)
    grad = torch.randn(q.shape, dtype=dtype)
    got = _grads(lambda a, b, c: ck.neighborhood_attention_3d(a, b, c, grid, *window, backend=backend), (q, k, v), grad)
    expect = _grads(lambda a, b, c: _ref(a, b, c, grid, *window), [t.float() for t in (q, k, v)], grad.float())
    for name, g, e in zip("qkv", got, expect):
        assert g.dtype == dtype
        assert_close(g, e.to(dtype), dtype, grad=True, name=f"d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_through_lse(backend, monkeypatch):
    """The op's second output (log-sum-exp) is differentiable too (dlse enters as delta − dlse);
    B, heads > 1, D not a power of two, and the int64-offset kernel variants."""
    if backend == "triton":
        from cosmos_kernels.triton import neighborhood_attention as tri
        monkeypatch.setattr(tri, "INT32_OFFSETS", 0)
    grid, kernel = (2, 4, 5), (2, 3, 3)
    q, k, v = _qkv(grid, B=2, H=2, D=24)
    g_out, g_lse = torch.randn_like(q), torch.randn(2, 2, math.prod(grid))
    geometry = [list(x) for x in ck.neighborhood_attention.resolve_geometry(grid, kernel)]
    op = torch.ops.cosmos_kernels.neighborhood_attention_3d

    def loss(fn, args):
        out, lse = fn(*args)
        return (out.float() * g_out).sum() + (lse * g_lse).sum()

    args = [t.clone().requires_grad_() for t in (q, k, v)]
    loss(lambda a, b, c: op(a, b, c, *geometry, 0.25, backend), args).backward()
    ref_args = [t.clone().requires_grad_() for t in (q, k, v)]
    loss(lambda a, b, c: ref.neighborhood_attention_3d(a, b, c, *geometry, 0.25), ref_args).backward()
    for name, a, r in zip("qkv", args, ref_args):
        assert_close(a.grad, r.grad, torch.float32, grad=True, name=f"d{name}")


def test_backward_formula_matches_autograd():
    grid, *window = CASES["causal-time-dilated-strided"]
    geom = _full(*window)
    q, k, v = _qkv(grid, torch.float64, H=2)
    g_out, g_lse = torch.randn_like(q), torch.randn(1, 2, math.prod(grid), dtype=torch.float64)
    dq, dk, dv = ref.neighborhood_attention_3d_backward(g_out, g_lse, q, k, v, grid, *geom, 0.3)
    _, vjp = torch.func.vjp(lambda a, b, c: ref.neighborhood_attention_3d(a, b, c, grid, *geom, 0.3), q, k, v)
    for got, expect in zip((dq, dk, dv), vjp((g_out, g_lse))):
        assert_close(got, expect, torch.float64)


# ---------------------------------------------------------------------------------------------
# forward-mode JVP
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, dtype", [("causal-time-dilated-strided", torch.float32), ("odd-borders", torch.bfloat16)])
def test_jvp(backend, case, dtype):
    grid, *window = CASES[case]
    dtype = torch.float64 if backend == "torch" and dtype == torch.float32 else dtype
    primals = _qkv(grid, dtype)
    tangents = _qkv(grid, dtype)
    out, t_out = torch.func.jvp(lambda a, b, c: ck.neighborhood_attention_3d(a, b, c, grid, *window, backend=backend),
                                tuple(primals), tuple(tangents))
    up = torch.float64 if dtype == torch.float64 else torch.float32
    e_out, e_t = torch.func.jvp(lambda a, b, c: _ref(a, b, c, grid, *window),
                                tuple(t.to(up) for t in primals), tuple(t.to(up) for t in tangents))
    assert_close(out, e_out.to(dtype), dtype)
    assert_close(t_out, e_t.to(dtype), dtype, grad=True, name="tangent")


def test_jvp_formula_matches_func_jvp():
    grid, *window = CASES["even-kernel-stride"]
    geom = _full(*window)
    primals, tangents = _qkv(grid, torch.float64, H=2), _qkv(grid, torch.float64, H=2)
    t_out, t_lse = ref.neighborhood_attention_3d_jvp(*primals, *tangents, grid, *geom, 0.3)
    _, (e_out, e_lse) = torch.func.jvp(lambda a, b, c: ref.neighborhood_attention_3d(a, b, c, grid, *geom, 0.3),
                                       tuple(primals), tuple(tangents))
    assert_close(t_out, e_out, torch.float64)
    assert_close(t_lse, e_lse, torch.float64)


# ---------------------------------------------------------------------------------------------
# custom-op plumbing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    grid, kernel = (2, 3, 4), (2, 2, 3)
    geometry = [list(x) for x in ck.neighborhood_attention.resolve_geometry(grid, kernel, stride=(1, 2, 1),
                                                                             is_causal=(True, False, False))]
    q, k, v = _qkv(grid, H=2)
    ops = torch.ops.cosmos_kernels
    tests = ("test_schema", "test_faketensor")  # the others re-run the op many times: reference only
    if backend == "torch":
        tests += ("test_autograd_registration", "test_aot_dispatch_dynamic")
    torch.library.opcheck(ops.neighborhood_attention_3d, (*(t.clone().requires_grad_() for t in (q, k, v)),
                                                          *geometry, 0.25, backend), test_utils=tests)
    out, lse = ops.neighborhood_attention_3d(q, k, v, *geometry, 0.25, backend)
    torch.library.opcheck(ops.neighborhood_attention_3d_bwd, (torch.randn_like(out), torch.randn_like(lse), q, k, v,
                                                              out, lse, *geometry, 0.25, backend), test_utils=tests)
    torch.library.opcheck(ops.neighborhood_attention_3d_jvp, (q, k, v, *_qkv(grid, H=2), out, lse, *geometry, 0.25,
                                                              backend), test_utils=tests)


def test_compile_fullgraph():
    grid, *window = CASES["even-kernel-stride"]
    q, k, v = (t.requires_grad_() for t in _qkv(grid))
    fn = torch.compile(lambda a, b, c: ck.neighborhood_attention_3d(a, b, c, grid, *window, backend="torch").square().sum(),
                       fullgraph=True)
    loss = fn(q, k, v)
    loss.backward()
    ref_args = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ref_loss = _ref(*ref_args, grid, *window).square().sum()
    ref_loss.backward()
    assert_close(loss.detach(), ref_loss.detach(), torch.float32)
    for a, r in zip((q, k, v), ref_args):
        assert_close(a.grad, r.grad, torch.float32, grad=True)


# ---------------------------------------------------------------------------------------------
# the DiT's per-block window
# ---------------------------------------------------------------------------------------------
def test_window_official_720p_and_scaling():
    w = NeighborhoodWindow(kernel_size=(-1, 12, 24), stride=(1, 4, 8), base_grid=(-1, 44, 80))
    assert w.resolve((24, 44, 80)) == dict(kernel_size=(24, 12, 24), dilation=(1, 1, 1), stride=(1, 4, 8),
                                           is_causal=(False, False, False))
    # 480p grid: sizes scaled by 30/44 and 52/80 as the official code does (Python round)
    assert w.resolve((24, 30, 52))["kernel_size"] == (24, round(12 * 30 / 44), round(24 * 52 / 80))
    assert w.resolve((24, 30, 52))["stride"] == (1, round(4 * 30 / 44), round(8 * 52 / 80))
    assert w.resolve((1, 44, 80)) is None                       # images attend densely
    assert w.density((1, 44, 80)) == 1.0
    assert abs(w.density((24, 44, 80)) - (12 / 44) * (24 / 80)) < 1e-12
    dilated = NeighborhoodWindow((-1, 4, 16), dilation=(1, 11, 5), base_grid=(-1, 44, 80))
    assert dilated.resolve((24, 44, 80))["dilation"] == (1, 11, 5)
    with pytest.raises(ValueError, match="kernel_size \\* dilation"):
        NeighborhoodWindow((2, 12, 24), dilation=(1, 4, 1)).resolve((4, 44, 80))


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_attention(backend):
    q, k, v = _qkv((1, 4, 6))
    dense = NeighborhoodWindow((-1, 2, 2)).attention(q, k, v, (1, 4, 6), backend=backend)   # image: dense
    assert_close(dense, _ref(q, k, v, (1, 4, 6), (1, 4, 6)), torch.float32)
    q, k, v = _qkv((2, 4, 6))
    w = NeighborhoodWindow((-1, 2, 4), stride=(1, 2, 2))
    assert_close(w.attention(q, k, v, (2, 4, 6), backend=backend), _ref(q, k, v, (2, 4, 6), (2, 2, 4), stride=(1, 2, 2)),
                 torch.float32)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, exc, words", [
    (dict(kernel_size=(3, 6, 3)), ValueError, "axis h: kernel_size=6 \\* dilation=1 > grid size 5"),
    (dict(kernel_size=(3, 3, 3), dilation=(1, 2, 1)), ValueError, "kernel_size=3 \\* dilation=2 > grid size 5"),
    (dict(kernel_size=3, stride=(1, 4, 1)), ValueError, "stride=4 > kernel_size=3"),
    (dict(kernel_size=0), ValueError, "kernel_size=\\(0, 0, 0\\) must be >= 1"),
    (dict(kernel_size=(3, 3)), TypeError, "kernel_size=\\(3, 3\\) must be an int or a sequence of 3"),
    (dict(kernel_size=3.0), TypeError, "kernel_size=3.0 must be an int"),
    (dict(kernel_size=3, is_causal=1), TypeError, "is_causal=1 must be a bool"),
    (dict(grid=(3, 5, 8)), ValueError, "grid=\\(3, 5, 8\\) has 120 tokens but q has S=105"),
    (dict(q=lambda q: q[0]), ValueError, "q must have 4 dimensions"),
    (dict(k=lambda k: k[:, :-1]), ValueError, "k has shape"),
    (dict(v=lambda v: v.double()), TypeError, "v has dtype torch.float64 but q has torch.float32"),
    (dict(q=lambda q: q.int()), TypeError, "q has dtype torch.int32"),
    (dict(q=lambda q: q[..., :0], k=lambda k: k[..., :0], v=lambda v: v[..., :0]), ValueError,
     "q has head dim D=0"),
    (dict(q=lambda q: torch.stack([q, q], -1)[..., 0]), ValueError, "contiguous in its last"),
    (dict(softmax_scale=-1.0), ValueError, "softmax_scale must be > 0"),
    (dict(backend="cuda"), ck.BackendUnavailable, "no 'cuda' backend"),
])
def test_bad_input(change, exc, words):
    grid = change.pop("grid", (3, 5, 7))
    q, k, v = _qkv((3, 5, 7))
    q = change.pop("q", lambda t: t)(q)
    k = change.pop("k", lambda t: t)(k)
    v = change.pop("v", lambda t: t)(v)
    kwargs = dict(kernel_size=3) | change
    with pytest.raises(exc, match=words):
        ck.neighborhood_attention_3d(q, k, v, grid, **kwargs)


def test_bad_input_triton_only():
    q, k, v = _qkv((3, 5, 7), torch.float64)
    with pytest.raises(TypeError, match="only by backend 'torch'"):
        ck.neighborhood_attention_3d(q, k, v, (3, 5, 7), 3, backend="triton")
    q, k, v = (torch.randn(1, 105, 1, 160) for _ in range(3))
    if "triton" in BACKENDS:
        with pytest.raises(ValueError, match="D=160 is not supported by backend 'triton'"):
            ck.neighborhood_attention_3d(q, k, v, (3, 5, 7), 3, backend="triton")


# ---------------------------------------------------------------------------------------------
# the H100 launch configurations
# ---------------------------------------------------------------------------------------------
@TRITON
@pytest.mark.parametrize("grid, window", [
    ((4, 8, 16), dict(kernel_size=(4, 4, 8), stride=(1, 4, 8))),                                # official-like: no mask
    ((4, 8, 16), dict(kernel_size=(2, 5, 7), dilation=(1, 1, 2), is_causal=(True, False, False))),
    ((4, 9, 20), dict(kernel_size=(4, 6, 10), stride=(1, 3, 5))),     # 480p-like: padded tiles in fwd, dq and jvp
])
def test_h100_tiles_in_the_interpreter(monkeypatch, grid, window):
    """Forward, gradients and JVP with the tile shapes and block sizes the H100 launches use."""
    from cosmos_kernels.triton import neighborhood_attention as tri

    monkeypatch.setattr(tri, "launch_config", lambda kernel, device: tri.GPU_CONFIGS[kernel])
    if window.get("stride") == (1, 3, 5):  # the opt-in padded tiles
        monkeypatch.setenv(tri.PADDED_TILES_ENV, "1")
        geom = tri.Geometry(grid, window["kernel_size"], (1, 1, 1), window["stride"], (False,) * 3)
        for name in ("fwd", "dq", "jvp"):
            cfg = tri.GPU_CONFIGS[name]
            p = tri.plan(geom, cfg.block_outer, cfg.block_inner, True)
            assert math.prod(p.outer_tile) < cfg.block_outer and math.prod(p.inner_tile) < cfg.block_inner, (name, p)
    q, k, v = _qkv(grid, torch.bfloat16, D=64)
    geom = _full(window["kernel_size"], window.get("dilation", 1), window.get("stride", 1), window.get("is_causal", False))
    fn = lambda a, b, c: ck.neighborhood_attention_3d(a, b, c, grid, *geom, backend="triton")  # noqa: E731
    ref_fn = lambda a, b, c: _ref(a, b, c, grid, *geom)  # noqa: E731
    grad = torch.randn_like(q)
    for name, got, expect in zip("qkv", _grads(fn, (q, k, v), grad),
                                 _grads(ref_fn, [t.float() for t in (q, k, v)], grad.float())):
        assert_close(got, expect.to(got.dtype), torch.bfloat16, grad=True, name=f"d{name}")
    tangents = _qkv(grid, torch.bfloat16, D=64)
    out, t_out = torch.func.jvp(fn, (q, k, v), tuple(tangents))
    e_out, e_t = torch.func.jvp(ref_fn, tuple(t.float() for t in (q, k, v)), tuple(t.float() for t in tangents))
    assert_close(out, e_out.to(out.dtype), torch.bfloat16)
    assert_close(t_out, e_t.to(out.dtype), torch.bfloat16, grad=True, name="tangent")


def test_compile_report_of_the_triton_kernels():
    """The family's kernels compile for sm_90a at their H100 launches (the official 720p window,
    its 480p scaling) without spilling and with wgmma (a subprocess: this one runs the interpreter)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "cosmos_kernels.aot", "--only", "neighborhood_attention", "--no-cuda"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    for kernel in ("fwd", "bwd_dq", "bwd_dkdv", "jvp"):
        assert f"neighborhood_attention_{kernel}[bf16,D=128,24x44x80]" in res.stdout
        assert f"neighborhood_attention_{kernel}[bf16,D=128,24x30x52]" in res.stdout
    for kernel in ("fwd", "bwd_dq", "jvp"):  # the opt-in padded tiles of whole stride groups
        assert f"neighborhood_attention_{kernel}[bf16,D=128,24x30x52,padded]" in res.stdout
