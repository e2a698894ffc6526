"""Ulysses context parallelism: the packing kernels against the reference layout (one process),
then real gloo groups of 2 and 4 processes on CPU (spawned by the test) checking the all-to-all,
its autograd and JVP, UlyssesAttention over several attention ops against the single-process op,
the overlapped head chunks against one exchange, torch.compile(fullgraph=True) of a context-parallel
layer, the error paths, and that a rank which raises makes the others fail fast instead of hanging."""
from __future__ import annotations

import functools
import importlib
import multiprocessing as mp
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import cosmos_kernels as ck
from cosmos_kernels import ulysses
from cosmos_kernels.reference import ulysses as ref
from cosmos_kernels.testing import assert_close
from tests.helpers import DTYPES, runnable_backends

BACKENDS = runnable_backends("ulysses_all_to_all")
GROUP_TIMEOUT_S = 60       # process-group timeout of the test groups (any hang fails in this)
FAIL_FAST_TIMEOUT_S = 3    # the subgroup of the fail-fast check


def plain_attention(q, k, v, softmax_scale=None):
    """Softmax attention on (B, S, H, D), written out (forward- and reverse-mode differentiable)."""
    scale = softmax_scale or q.shape[-1] ** -0.5
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)


def plain_attention_jvp(q, k, v, q_t, k_t, v_t):
    """(out, out_t) like flash_attention_jvp, from torch.func.jvp of plain_attention."""
    return torch.func.jvp(plain_attention, (q, k, v), (q_t, k_t, v_t))


def _optional(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ModuleNotFoundError, AttributeError):
        return None


# ---------------------------------------------------------------------------------------------
# one process: pack / unpack against the definition of the exchange
# ---------------------------------------------------------------------------------------------
def _simulate(impl, per_rank, scatter_dim, gather_dim):
    """Run pack -> (rows swapped as all_to_all_single would) -> unpack for every rank in one process."""
    world = len(per_rank)
    sends = [impl.pack(xs, scatter_dim, world) for xs in per_rank]
    shapes = [ref.exchanged_shape(x.shape, scatter_dim, gather_dim, world) for x in per_rank[0]]
    return [impl.unpack(torch.stack([sends[src][r] for src in range(world)]), shapes, gather_dim, world)
            for r in range(world)]


def _impl(backend):
    if backend == "triton":
        from cosmos_kernels.triton import ulysses as tri
        return tri
    return ref


CASES = [  # (world, per-rank shapes, scatter_dim, gather_dim)
    (2, [(2, 3, 4, 8)] * 3, 2, 1),                         # q, k, v seq -> heads
    (4, [(1, 5, 8, 16), (1, 5, 4, 6), (1, 5, 12, 16)], 2, 1),  # different heads/head dims in one buffer
    (2, [(2, 6, 2, 8), (2, 6, 2, 8)], 1, 2),               # out, out_t heads -> seq
    (4, [(3, 8, 1, 5)] * 4, 1, 2),                         # 4 tensors: two launches of the kernel
    (2, [(2, 6, 10)], 2, 0),                               # any dims: 3-d, gather before scatter
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"P{c[0]}-{len(c[1])}x{c[1][0]}-s{c[2]}g{c[3]}")
def test_pack_unpack_match_the_exchange(backend, case):
    world, shapes, sd, gd = case
    per_rank = [[torch.randn(s) for s in shapes] for _ in range(world)]
    got = _simulate(_impl(backend), per_rank, sd, gd)
    expect = ref.all_to_all_emulated(per_rank, sd, gd)
    for r in range(world):
        for g, e in zip(got[r], expect[r]):
            assert torch.equal(g, e), f"rank {r}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_strided_inputs_and_dtypes(backend, dtype):
    # q, k, v as views of a fused qkv projection (B, S, 3, H, D) and a (B, H, S, D) transpose
    world = 2
    per_rank = []
    for _ in range(world):
        qkv = torch.randn(2, 5, 3, 4, 8).to(dtype)
        bhsd = torch.randn(2, 4, 5, 8).to(dtype)
        per_rank.append([qkv[:, :, 0], qkv[:, :, 1], bhsd.transpose(1, 2)])
    impl = _impl(backend)
    got = _simulate(impl, per_rank, 2, 1)
    expect = ref.all_to_all_emulated(per_rank, 2, 1)
    for r in range(world):
        for g, e in zip(got[r], expect[r]):
            assert g.dtype == dtype and torch.equal(g, e)
    buf = impl.pack(per_rank[0], 2, world)
    assert buf.shape == (world, 3 * 2 * 5 * 2 * 8) and torch.equal(buf, ref.pack(per_rank[0], 2, world))


def test_pack_ops_opcheck():
    xs = [torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)]
    torch.library.opcheck(torch.ops.cosmos_kernels.ulysses_pack, (xs, 2, 2, "torch"))
    buf = ref.pack(xs, 2, 2)
    shapes = [2, 6, 2, 8] * 2
    torch.library.opcheck(torch.ops.cosmos_kernels.ulysses_unpack, (buf, shapes, 4, 1, 2, "torch"))


def test_no_group_is_the_identity_and_a_plain_call():
    q, k, v = (torch.randn(1, 6, 4, 8) for _ in range(3))
    assert ck.ulysses_all_to_all(q, None, 2, 1) is q
    assert all(a is b for a, b in zip(ck.ulysses_all_to_all([q, k, v], None, 2, 1), (q, k, v)))
    attn = ck.UlyssesAttention(plain_attention, None)
    assert not attn.active()
    assert torch.equal(attn(q, k, v), plain_attention(q, k, v))


@pytest.mark.parametrize("make, exc, words", [
    (lambda q: ("q",), TypeError, "x must be a tensor or a non-empty list"),
    (lambda q: ([],), TypeError, "x must be a tensor or a non-empty list"),
    (lambda q: ([q, q[0]],), ValueError, "x\\[1\\] has 3 dimensions"),
    (lambda q: ([q, q.double()],), TypeError, "must match"),
    (lambda q: (q, None, 4, 1), ValueError, "scatter_dim=4 is not a dimension"),
    (lambda q: (q, None, 2, True), ValueError, "gather_dim=True is not a dimension"),
    (lambda q: (q, None, 1, 1), ValueError, "must differ"),
    (lambda q: (q.int(),), TypeError, "x has dtype torch.int32"),
])
def test_bad_input(make, exc, words):
    q = torch.randn(1, 6, 4, 8)
    args = make(q)
    args = args + (None, 2, 1)[len(args) - 1:]
    with pytest.raises(exc, match=words):
        ck.ulysses_all_to_all(*args)


def test_disabled_switch_is_scoped():
    attn = ck.UlyssesAttention(plain_attention, None)
    with ulysses.disabled():
        with ulysses.disabled():
            assert ulysses.is_disabled()
        assert ulysses.is_disabled()
    assert not ulysses.is_disabled()
    attn.enabled = False
    assert not attn.active()


# ---------------------------------------------------------------------------------------------
# process groups: a spawned gloo group per test, every rank runs the same checks
# ---------------------------------------------------------------------------------------------
def _launch(world: int, scenario, tmp_path, deadline_s: float = 150, **kw) -> dict:
    """Run scenario(rank, world, **kw) -> dict on `world` spawned ranks (a fork of a process that ran
    the Triton interpreter or autograd can crash on CUDA builds of torch); return {rank: (status, value)}.
    A rank that raises reports its traceback; the parent kills (its own) ranks still alive at the
    deadline, so a hang fails the test instead of stalling it."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    store = f"file://{tmp_path}/store"
    procs = [ctx.Process(target=_rank_main, args=(r, world, store, queue, scenario, kw), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    results, end = {}, time.monotonic() + deadline_s
    try:
        while len(results) < world and time.monotonic() < end:
            try:
                rank, status, value = queue.get(timeout=max(0.1, end - time.monotonic()))
            except Exception:  # noqa: BLE001 - queue.Empty at the deadline
                break
            results[rank] = (status, value)
            if kw.get("release") is not None and rank == 0:
                kw["release"].set()
    finally:
        for p in procs:
            p.join(timeout=max(1.0, end - time.monotonic()))
        alive = [p for p in procs if p.is_alive()]
        for p in alive:
            p.kill()
    assert not alive and len(results) == world, (
        f"ranks hung: {len(alive)} still alive, results from {sorted(results)}: {results}")
    return results


def _rank_main(rank, world, store, queue, scenario, kw):
    torch.set_num_threads(1)  # world ranks share 2 cores
    torch.manual_seed(1234)   # every rank draws the same "replicated" inputs from the global stream
    try:
        dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=GROUP_TIMEOUT_S))
        value = scenario(rank, world, **kw)
        queue.put((rank, "ok", value))
    except BaseException:  # noqa: BLE001 - the parent reports it
        queue.put((rank, "error", traceback.format_exc()))
        return
    dist.destroy_process_group()


def _assert_all_ok(results):
    errors = {r: v for r, (s, v) in results.items() if s != "ok"}
    assert not errors, "\n".join(f"--- rank {r} ---\n{v}" for r, v in errors.items())


def _shard(t, rank, world, dim=1):
    return t.chunk(world, dim=dim)[rank]


def _check_all_to_all(rank, world, report):
    """Exact (pure data movement) against the emulated exchange of every rank's inputs: forward,
    the inverse, the gradient (autograd through the emulation) and the tangent."""
    gen = torch.Generator().manual_seed(7)
    for backend in BACKENDS:
        for dtype in (torch.float32, torch.bfloat16):
            shapes = [(2, 3, 2 * world, 8), (2, 3, 2 * world, 8), (2, 3, world, 4)]
            per_rank = [[torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(world)]
            mine = [t.clone().requires_grad_() for t in per_rank[rank]]
            out = ck.ulysses_all_to_all(mine, _GROUP[0], 2, 1, backend=backend)
            expect = ref.all_to_all_emulated(per_rank, 2, 1)[rank]
            assert isinstance(out, tuple) and all(torch.equal(o, e) for o, e in zip(out, expect))
            back = ck.ulysses_all_to_all(out, _GROUP[0], 1, 2, backend=backend)
            assert all(torch.equal(b, x) for b, x in zip(back, per_rank[rank]))
            # gradient: every rank weights its outputs; d/dx of the sum over ranks
            weights = [[torch.randn(o.shape, generator=gen).to(dtype) for o in expect] for _ in range(world)]
            sum(((o.float() * w.float()).sum() for o, w in zip(out, weights[rank]))).backward()
            full = [[t.clone().requires_grad_() for t in ts] for ts in per_rank]
            emulated = ref.all_to_all_emulated(full, 2, 1)
            sum((o.float() * w.float()).sum() for os_, ws in zip(emulated, weights) for o, w in zip(os_, ws)).backward()
            for x, f in zip(mine, full[rank]):
                assert torch.equal(x.grad, f.grad), f"grad {backend} {dtype}"
        # an expanded (stride-0) incoming gradient, as .sum() produces
        x = torch.randn(1, 2, world, 8, generator=gen).requires_grad_()
        ck.ulysses_all_to_all(x, _GROUP[0], 2, 1, backend=backend).sum().backward()
        assert torch.equal(x.grad, torch.ones_like(x))
    # a single tensor, and the tangent (forward mode) of the exchange
    per_rank = [torch.randn(2, 2 * world, world, 4, generator=gen) for _ in range(world)]
    tangents = [torch.randn(t.shape, generator=gen) for t in per_rank]  # the same on every rank
    single = ck.ulysses_all_to_all(per_rank[rank], _GROUP[0], 1, 2)
    assert isinstance(single, torch.Tensor)
    assert torch.equal(single, ref.all_to_all_emulated([[t] for t in per_rank], 1, 2)[rank][0])
    _, t_out = torch.func.jvp(lambda x: ck.ulysses_all_to_all(x, _GROUP[0], 1, 2), (per_rank[rank],), (tangents[rank],))
    assert torch.equal(t_out, ref.all_to_all_emulated([[t] for t in tangents], 1, 2)[rank][0])
    report["all_to_all"] = BACKENDS


def _attention_cases(world):
    """(name, attn_fn, B, S, H, D, kwargs) run through UlyssesAttention and compared with one process."""
    cases = [("plain", plain_attention, 2, 4 * world, 2 * world, 16, {})]
    flash = _optional("cosmos_kernels.flash_attention", "flash_attention")
    if flash is not None:
        cases.append(("flash_attention", functools.partial(flash, backend="torch"), 1, 4 * world, world, 16, {}))
    na3d = _optional("cosmos_kernels.neighborhood_attention", "neighborhood_attention_3d")
    if na3d is not None:
        T, Hh, W = 2 * world, 3, 4  # t-major grid split along T: 2 frames per rank
        cases.append(("neighborhood_attention_3d", functools.partial(na3d, backend="torch"), 1, T * Hh * W, world, 16,
                      dict(grid=(T, Hh, W), kernel_size=(3, 3, 3))))
    return cases


def _check_attention(rank, world, report, backend):
    """Outputs and gradients of q, k, v shards equal the shards of the single-process op."""
    group = _GROUP[0]
    covered = []
    for name, fn, B, S, H, D, kw in _attention_cases(world):
        torch.manual_seed(11)
        q, k, v, g = (torch.randn(B, S, H, D) for _ in range(4))
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        expect = fn(*full, **kw)
        (expect * g).sum().backward()
        attn = ck.UlyssesAttention(fn, group, backend=backend)
        mine = [_shard(t, rank, world).clone().requires_grad_() for t in (q, k, v)]
        out = attn(*mine, **kw)
        (out * _shard(g, rank, world)).sum().backward()
        assert_close(out, _shard(expect, rank, world), torch.float32, name=f"{name} out")
        for n, m, f in zip("qkv", mine, full):
            assert_close(m.grad, _shard(f.grad, rank, world), torch.float32, grad=True, name=f"{name} d{n}")
        covered.append(name)
    report[f"attention[{backend}]"] = covered


def _check_cross_attention(rank, world, report):
    """k, v replicated (text tokens on every rank): out shard and q grads match; the k/v gradients
    summed over ranks (the reduction data/context parallel training does) equal the full ones."""
    group = _GROUP[0]
    B, S, L, H, D = 1, 2 * world, 5, 2 * world, 8
    torch.manual_seed(12)
    q, g = torch.randn(B, S, H, D), torch.randn(B, S, H, D)
    k, v = torch.randn(B, L, H, D), torch.randn(B, L, H, D)
    full = [t.clone().requires_grad_() for t in (q, k, v)]
    expect = plain_attention(*full)
    (expect * g).sum().backward()
    mine = [_shard(q, rank, world).clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_()]
    out = ck.UlyssesAttention(plain_attention, group, replicated=(1, 2))(*mine)
    (out * _shard(g, rank, world)).sum().backward()
    assert_close(out, _shard(expect, rank, world), torch.float32, name="cross out")
    assert_close(mine[0].grad, _shard(full[0].grad, rank, world), torch.float32, grad=True, name="cross dq")
    for n, m, f in zip("kv", mine[1:], full[1:]):
        dist.all_reduce(m.grad, group=group)
        assert_close(m.grad, f.grad, torch.float32, grad=True, name=f"cross d{n}")
    # the local (no exchange) path of dense cross-attention gives the same rows
    assert_close(plain_attention(_shard(q, rank, world), k, v), out.detach(), torch.float32, name="local cross")
    report["cross"] = True


def _check_jvp(rank, world, report):
    """Forward mode: torch.func.jvp through UlyssesAttention, and an attention op that returns
    (out, out_t) itself (the flash_attention_jvp signature), equal the single-process tangent."""
    group = _GROUP[0]
    B, S, H, D = 1, 3 * world, world, 16
    torch.manual_seed(13)
    prim = [torch.randn(B, S, H, D, dtype=torch.float64) for _ in range(3)]
    tang = [torch.randn_like(t) for t in prim]
    out_full, t_full = torch.func.jvp(plain_attention, tuple(prim), tuple(tang))
    sh = lambda ts: tuple(_shard(t, rank, world) for t in ts)  # noqa: E731
    through = [("plain_attention", plain_attention)]
    flash = _optional("cosmos_kernels.flash_attention", "flash_attention")
    if flash is not None:  # its forward-AD rule, inside torch.func.jvp of the wrapper
        through.append(("flash_attention", functools.partial(flash, backend="torch")))
    for name, fn in through:
        out, t_out = torch.func.jvp(ck.UlyssesAttention(fn, group, backend="torch"), sh(prim), sh(tang))
        assert_close(out, _shard(out_full, rank, world), torch.float64, name=f"{name} out")
        assert_close(t_out, _shard(t_full, rank, world), torch.float64, grad=True, name=f"{name} tangent")
    fused = [("plain_attention_jvp", plain_attention_jvp)]
    flash_jvp = _optional("cosmos_kernels.flash_attention", "flash_attention_jvp")
    if flash_jvp is not None:
        fused.append(("flash_attention_jvp", functools.partial(flash_jvp, backend="torch")))
    for name, fn in fused:
        o, to = ck.UlyssesAttention(fn, group, backend="torch")(*sh(prim), *sh(tang))
        assert_close(o, _shard(out_full, rank, world), torch.float64, name=f"{name} out")
        assert_close(to, _shard(t_full, rank, world), torch.float64, grad=True, name=f"{name} tangent")
    report["jvp"] = [n for n, _ in through] + [n for n, _ in fused]


def _check_errors_and_switch(rank, world, report):
    group = _GROUP[0]
    # heads not divisible: raised locally on every rank, before any collective
    bad_heads = 2 * world - 1
    q = torch.randn(1, 2, bad_heads, 8)
    words = f"{bad_heads} heads, which is not divisible by the context-parallel group size {world}"
    with pytest.raises(ValueError, match=words):
        ck.UlyssesAttention(plain_attention, group)(q, q, q)
    words = f"size {bad_heads} \\(heads\\) along scatter_dim=2, which is not divisible by the group size {world}"
    with pytest.raises(ValueError, match=words):
        ck.ulysses_all_to_all(q, group, 2, 1)
    # uneven sequence shards: rank 0 holds one token more; every rank raises the same error
    q = torch.randn(1, 3 if rank == 0 else 2, world, 8)
    with pytest.raises(ValueError, match=r"rank 0: \[\(1, 3, .*rank 1: \[\(1, 2, .*equal, contiguous shard"):
        ck.UlyssesAttention(plain_attention, group)(q, q, q)
    # the group is still in step after the errors
    x = torch.randn(1, 2, world, 8)
    back = ck.ulysses_all_to_all(ck.ulysses_all_to_all(x, group, 2, 1), group, 1, 2)
    assert torch.equal(back, x)
    # switched off (an image batch): every rank holds the whole sequence, a plain call
    attn = ck.UlyssesAttention(plain_attention, group)
    full = torch.randn(1, 5, world + 1, 8)  # neither divisible: proves no exchange happens
    with ulysses.disabled():
        assert torch.equal(attn(full, full, full), plain_attention(full, full, full))
    attn.enabled = False
    assert torch.equal(attn(full, full, full), plain_attention(full, full, full))
    report["errors"] = True


def _check_overlap(rank, world, report):
    """overlap_chunks=2 (head chunks pipelined) gives what one exchange gives: outputs, gradients,
    replicated cross-attention inputs and, through torch.func.jvp, tangents."""
    group = _GROUP[0]
    covered = []
    for name, fn, B, S, _, D, kw in _attention_cases(world):
        H = 2 * world  # two chunks of one head per rank
        torch.manual_seed(14)
        q, k, v, g = (torch.randn(B, S, H, D) for _ in range(4))
        results = []
        for chunks in (1, 2):
            mine = [_shard(t, rank, world).clone().requires_grad_() for t in (q, k, v)]
            out = ck.UlyssesAttention(fn, group, overlap_chunks=chunks)(*mine, **kw)
            (out * _shard(g, rank, world)).sum().backward()
            results.append((out.detach(), *(m.grad for m in mine)))
        for what, a, b in zip(("out", "dq", "dk", "dv"), *results):
            assert_close(b, a, torch.float32, grad=what != "out", name=f"overlap {name} {what}")
        covered.append(name)
    # replicated k, v (cross-attention): each chunk slices its own heads of them
    q, k, v = torch.randn(1, 2 * world, 4 * world, 8), torch.randn(1, 5, 4 * world, 8), torch.randn(1, 5, 4 * world, 8)
    outs = [ck.UlyssesAttention(plain_attention, group, replicated=(1, 2), overlap_chunks=c)(_shard(q, rank, world), k, v)
            for c in (1, 4)]
    assert_close(outs[1], outs[0], torch.float32, name="overlap cross")
    # forward mode: the chunks exchange with the tangent rule, and a fused (out, out_t) attn_fn
    prim = [_shard(torch.randn(1, 2 * world, 2 * world, 8, dtype=torch.float64), rank, world) for _ in range(3)]
    tang = [torch.randn_like(t) for t in prim]
    jvps = [torch.func.jvp(ck.UlyssesAttention(plain_attention, group, overlap_chunks=c), tuple(prim), tuple(tang))
            for c in (1, 2)]
    for a, b, what in zip(*jvps, ("out", "tangent")):
        assert_close(b, a, torch.float64, name=f"overlap jvp {what}")
    fused = [ck.UlyssesAttention(plain_attention_jvp, group, overlap_chunks=c)(*prim, *tang) for c in (1, 2)]
    assert isinstance(fused[1], tuple)
    for a, b, what in zip(*fused, ("out", "tangent")):
        assert_close(b, a, torch.float64, name=f"overlap fused jvp {what}")
    # heads that the chunks cannot split: a clear error before any collective
    x = torch.randn(1, 2, 2 * world, 8)
    with pytest.raises(ValueError, match=f"overlap_chunks=3 cannot split: heads must be divisible by .* = {3 * world}"):
        ck.UlyssesAttention(plain_attention, group, overlap_chunks=3)(x, x, x)
    report["overlap"] = covered


_GROUP = [None]  # the group the checks use (set in the scenario: the default group of the ranks)


def _scenario_main(rank, world):
    _GROUP[0] = dist.group.WORLD
    report = {}
    _check_all_to_all(rank, world, report)
    for backend in BACKENDS:
        _check_attention(rank, world, report, backend)
    _check_cross_attention(rank, world, report)
    _check_jvp(rank, world, report)
    _check_overlap(rank, world, report)
    _check_errors_and_switch(rank, world, report)
    return report


@pytest.mark.timeout(170)
@pytest.mark.parametrize("world", [2, 4])
def test_process_group(world, tmp_path):
    results = _launch(world, _scenario_main, tmp_path)
    _assert_all_ok(results)
    report = results[0][1]
    expected = [c[0] for c in _attention_cases(world)]
    for backend in BACKENDS:
        assert report[f"attention[{backend}]"] == expected
    assert report["all_to_all"] == BACKENDS and report["cross"] and report["errors"]
    assert report["overlap"] == expected
    print(f"world {world}: {report}")


class _ContextParallelLayer(torch.nn.Module):
    """Projections around a context-parallel attention: what a DiT block compiles."""

    def __init__(self, attn, heads: int, dim: int):
        super().__init__()
        self.heads, self.attn = heads, attn
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x):
        B, S, _ = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, -1).unbind(2)
        return self.out(self.attn(q, k, v).flatten(2))


def _scenario_compile(rank, world):
    """torch.compile(fullgraph=True) of a layer around UlyssesAttention (one exchange, and the
    overlapped chunks) and of the bare all-to-all: no graph break, and the compiled forward and
    gradients equal eager ones."""
    flash = functools.partial(ck.flash_attention, backend="torch")
    group = dist.group.WORLD
    heads, dim = 2 * world, 32 * world
    x_full = torch.randn(1, 4 * world, dim)
    report = {}
    for chunks in (1, 2):
        torch.manual_seed(21)
        layer = _ContextParallelLayer(ck.UlyssesAttention(flash, group, overlap_chunks=chunks), heads, dim)
        results = []
        for run in (layer, torch.compile(layer, fullgraph=True, backend="aot_eager")):
            layer.zero_grad()
            x = _shard(x_full, rank, world).clone().requires_grad_()
            out = run(x)
            out.square().sum().backward()
            results.append([out.detach(), x.grad] + [p.grad.clone() for p in layer.parameters()])
        for i, (a, b) in enumerate(zip(*results)):
            assert_close(b, a, torch.float32, grad=i > 0, name=f"compiled chunks={chunks} [{i}]")
        report[f"layer[{chunks}]"] = True
    # the bare exchange: exact, forward and backward
    y = torch.randn(2, 2 * world, world, 4).requires_grad_()
    fn = torch.compile(lambda t: ck.ulysses_all_to_all(t, group, 2, 1) * 2, fullgraph=True, backend="aot_eager")
    out = fn(y)
    assert torch.equal(out, ck.ulysses_all_to_all(y.detach(), group, 2, 1) * 2)
    out.backward(torch.ones_like(out))
    assert torch.equal(y.grad, torch.full_like(y, 2.0))
    report["all_to_all"] = True
    return report


@pytest.mark.timeout(240)
def test_compiled_context_parallel_has_no_graph_break(tmp_path):
    results = _launch(2, _scenario_compile, tmp_path, deadline_s=220)
    _assert_all_ok(results)
    assert results[0][1] == {"layer[1]": True, "layer[2]": True, "all_to_all": True}


def _scenario_fail_fast(rank, world, release):
    """Rank 1 raises just before the attention call and stays alive (not in the collective);
    rank 0 must get an error within the group's timeout rather than wait forever."""
    group = dist.new_group(list(range(world)), timeout=timedelta(seconds=FAIL_FAST_TIMEOUT_S))
    q = torch.randn(1, 2, world, 8)
    if rank == 1:
        try:
            raise RuntimeError("rank 1 failed before the exchange")
        except RuntimeError as exc:
            release.wait(timeout=60)  # alive, but never joins the collective
            return {"raised": str(exc)}
    start = time.monotonic()
    try:
        ck.UlyssesAttention(plain_attention, group)(q, q, q)
    except RuntimeError as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}", "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


@pytest.mark.timeout(60)
def test_a_rank_that_raises_fails_the_group_fast(tmp_path):
    release = mp.get_context("spawn").Event()
    results = _launch(2, _scenario_fail_fast, tmp_path, deadline_s=40, release=release)
    _assert_all_ok(results)
    r0, r1 = results[0][1], results[1][1]
    assert r1["raised"]
    assert r0["error"] and "Timed out" in r0["error"], r0
    assert r0["seconds"] < FAIL_FAST_TIMEOUT_S + 5, r0


def _scenario_rank_dies(rank, world):
    """Rank 1 raises out of its training step (its process ends); rank 0, inside the exchange,
    sees the connection close and raises at once, long before the 60 s group timeout."""
    q = torch.randn(1, 2, world, 8)
    if rank == 1:
        time.sleep(0.5)  # let rank 0 enter the collective first
        raise RuntimeError("rank 1 died")
    start = time.monotonic()
    try:
        ck.UlyssesAttention(plain_attention, dist.group.WORLD)(q, q, q)
    except RuntimeError as exc:
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}", "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


@pytest.mark.timeout(60)
def test_a_rank_that_dies_fails_the_group_fast(tmp_path):
    results = _launch(2, _scenario_rank_dies, tmp_path, deadline_s=40)
    assert results[1][0] == "error" and "rank 1 died" in results[1][1]
    status, r0 = results[0]
    assert status == "ok" and r0["error"], r0
    assert r0["seconds"] < 10 < GROUP_TIMEOUT_S, r0
