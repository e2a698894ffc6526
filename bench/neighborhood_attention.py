"""Neighborhood-attention benchmark: our fused kernels against our dense flash attention (the
speedup a sparse window buys) and against PyTorch FlexAttention given the same neighborhood as a
BlockMask, forward and backward, measured in the same run.

FLOPs count the attended (query, key) pairs only: forward 4·B·H·pairs·D, backward 2.5× that
(the flash-attention bench's convention). `flop_ratio` = S² / pairs (the ideal speedup over dense)
and `ideal_frac` = (dense ms / ours ms) / flop_ratio; `vs_peer` = FlexAttention ms / ours ms.
Targets on H100: ideal_frac ≥ 0.7 and vs_peer ≥ 1.3. `tile_eff` = attended pairs / pairs our
tiles compute (1.0 = no wasted tile work).

Correctness: against the reference (brute-force mask) on small shapes; at the paper's shapes the
forward is checked on 256 sampled query rows against the reference restricted to those rows, and
the gradients against FlexAttention's.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings

import torch

import cosmos_kernels as ck
from bench.common import backward_only, ours_backends, time_fn
from cosmos_kernels.neighborhood_attention import attended_pairs, resolve_geometry
from cosmos_kernels.reference import neighborhood_attention as ref
from cosmos_kernels.testing import rel_err, threshold

# (grid, kernel_size, stride): the 720p and 480p token grids (93 frames, patchified), windows full
# along time giving ≈ 1/4 and ≈ 1/8 of the pairs, with the official stride (1, 4, 8) at 720p and
# its 480p scaling (1, 3, 5)
FULL_CASES = [((24, 44, 80), (24, 22, 40), (1, 4, 8)), ((24, 44, 80), (24, 22, 20), (1, 4, 8)),
              ((24, 30, 52), (24, 15, 26), (1, 3, 5)), ((24, 30, 52), (24, 15, 13), (1, 3, 5))]
# quick: small grids; the last has a stride of 3 and 5 (as 480p), so the padded-tiles row runs too
QUICK_CASES = [((3, 8, 12), (3, 4, 6), (1, 2, 2)), ((3, 8, 12), (3, 4, 3), (1, 2, 1)), ((2, 6, 10), (2, 3, 5), (1, 3, 5))]
HEADS, HEAD_DIM = 16, 128
SAMPLED_ROWS = 256


def _timed(fn, device, quick):
    warmup, iters = (1, 3) if quick else (3, 10)
    return time_fn(fn, device, warmup=warmup, iters=iters) * 1e3


def _flex(geometry, S: int, device, quick: bool):
    """FlexAttention over our (B, S, H, D) layout with the neighborhood as a BlockMask (the mask
    function looks up the reference's per-axis masks), or (None, reason). Compiled (its real
    kernels) except on the quick CPU run, where eager keeps the run to seconds."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as exc:
        return None, f"flex_attention unavailable: {exc}"[:120]
    grid, kernel_size, dilation, stride, is_causal = geometry
    T, H, W = grid
    mt, mh, mw = (ref.axis_mask(grid[i], kernel_size[i], dilation[i], stride[i], is_causal[i], device) for i in range(3))

    def mask_mod(b, h, q_idx, kv_idx):
        return (mt[q_idx // (H * W), kv_idx // (H * W)] & mh[(q_idx // W) % H, (kv_idx // W) % H]
                & mw[q_idx % W, kv_idx % W])

    try:
        # on GPU the mask is built by a compiled, blockwise pass (eagerly it would materialise S×S)
        block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=S, KV_LEN=S, device=device,
                                       _compile=device.type == "cuda")
        compiled = flex_attention if quick and device.type != "cuda" else torch.compile(flex_attention, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - reported as a row note
        return None, f"flex_attention: {type(exc).__name__}: {exc}"[:120]

    def fn(q, k, v):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = compiled(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
        return out.transpose(1, 2)
    return fn, None


def _row(op, shape, dtype, impl, ms, flops, **extra):
    return dict(op=op, shape=shape, dtype=str(dtype).replace("torch.", ""), impl=impl, ms=ms,
                **{"TFLOP/s": flops / (ms * 1e-3) / 1e12 if ms else None}, **extra)


def _note(op, shape, dtype, impl, note):
    return dict(op=op, shape=shape, dtype=str(dtype).replace("torch.", ""), impl=impl, ms=None, ok=None, note=note)


def _reference_rows(q, k, v, geometry, rows: torch.Tensor) -> torch.Tensor:
    """Reference output for the query tokens `rows` only: (B, len(rows), H, D) in fp32."""
    mask = ref.neighborhood_mask(*geometry, device=q.device, rows=rows)
    s = torch.einsum("bqhd,bkhd->bhqk", q[:, rows].float(), k.float()) * q.shape[-1] ** -0.5
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v.float())


def _bench_case(case, dtype, device, quick) -> list[dict]:
    grid, kernel_size, stride = case
    geometry = resolve_geometry(grid, kernel_size, 1, stride, False)
    S = math.prod(grid)
    heads, D = (2, 32) if quick else (HEADS, HEAD_DIM)
    B = 1
    q, k, v = (torch.randn(B, S, heads, D, dtype=dtype, device=device) for _ in range(3))
    grad = torch.randn_like(q)
    pairs = attended_pairs(*geometry)
    flop_ratio = S * S / pairs
    fwd_flops = 4 * B * heads * pairs * D
    dense_flops = 4 * B * heads * S * S * D
    shape = f"grid={grid} k={kernel_size} s={stride} B={B} H={heads} D={D}"
    common = dict(density=1 / flop_ratio, flop_ratio=flop_ratio)
    rows = []

    def na(backend):
        return lambda a, b, c: ck.neighborhood_attention_3d(a, b, c, grid, kernel_size, stride=stride, backend=backend)

    # dense baseline: our flash attention on the same tokens
    dense_ms = {}
    dense = ck.flash_attention
    try:
        dense_ms["fwd"] = _timed(lambda: dense(q, k, v), device, quick)
        rows.append(_row("dense.fwd", shape, dtype, "ours:flash_attention", dense_ms["fwd"], dense_flops))
        dense_ms["bwd"] = _timed(backward_only(dense, (q, k, v), grad), device, quick)
        rows.append(_row("dense.bwd", shape, dtype, "ours:flash_attention", dense_ms["bwd"], 2.5 * dense_flops))
    except Exception as exc:  # noqa: BLE001 - reported, the rest of the case still runs
        rows.append(_note("dense", shape, dtype, "ours:flash_attention", f"{type(exc).__name__}: {exc}"[:120]))

    # references
    if quick:
        sample = None
        ref_args = [t.detach().float().requires_grad_() for t in (q, k, v)]
        expect_out, _ = ref.neighborhood_attention_3d(*ref_args, *geometry, D ** -0.5)
        expect_out.backward(grad.float())
        expect_grads = [a.grad for a in ref_args]
        grads_ref = "reference"
    else:
        sample = torch.randperm(S, device=device)[:SAMPLED_ROWS].sort().values
        expect_out = _reference_rows(q, k, v, geometry, sample)
        expect_grads, grads_ref = None, None  # FlexAttention's, once it has run

    # FlexAttention with the same mask (its output error also checks that the masks agree)
    flex_ms = {}
    flex, why = _flex(geometry, S, device, quick)
    if flex is None:
        rows.append(_note("neighborhood_attention_3d", shape, dtype, "flex_attention", why))
    else:
        try:
            out = flex(q, k, v)
            flex_ms["fwd"] = _timed(lambda: flex(q, k, v), device, quick)
            rows.append(_row("neighborhood_attention_3d.fwd", shape, dtype, "flex_attention", flex_ms["fwd"],
                             fwd_flops, **common, rel_err=rel_err(out if sample is None else out[:, sample], expect_out)))
            args = [t.detach().requires_grad_() for t in (q, k, v)]
            flex_grads = torch.autograd.grad(flex(*args), args, grad)
            if expect_grads is None:
                expect_grads, grads_ref = flex_grads, "flex_attention"
            flex_ms["bwd"] = _timed(backward_only(flex, (q, k, v), grad), device, quick)
            rows.append(_row("neighborhood_attention_3d.bwd", shape, dtype, "flex_attention", flex_ms["bwd"],
                             2.5 * fwd_flops, **common))
        except Exception as exc:  # noqa: BLE001
            rows.append(_note("neighborhood_attention_3d", shape, dtype, "flex_attention", f"{type(exc).__name__}: {exc}"[:120]))

    # ours, and the triton kernels with the opt-in padded tiles where their plan differs (480p)
    case = dict(q=q, k=k, v=v, grad=grad, device=device, quick=quick, sample=sample, expect_out=expect_out,
                expect_grads=expect_grads, grads_ref=grads_ref, dense_ms=dense_ms, flex_ms=flex_ms, shape=shape,
                dtype=dtype, common=common, fwd_flops=fwd_flops, flop_ratio=flop_ratio)
    for backend in ours_backends("neighborhood_attention_3d", device):
        if backend == "torch" and not quick:
            rows.append(_note("neighborhood_attention_3d", shape, dtype, f"ours:{backend}",
                              "skipped: the reference materializes S×S"))
            continue
        plans = [(f"ours:{backend}", "0")]
        if backend == "triton" and _tile_efficiency(geometry, device, "0") != _tile_efficiency(geometry, device, "1"):
            plans.append(("ours:triton:padded-tiles", "1"))
        for impl, padded in plans:
            with _padded_tiles(padded):
                eff = _tile_efficiency(geometry, device, padded) if backend == "triton" else None
                rows += _ours_rows(impl, na(backend), eff, **case)
    return rows


@contextlib.contextmanager
def _padded_tiles(value: str):
    """The tile plan in force inside the block: "0" power-of-two boxes (the default), "1" the opt-in
    padded tiles of whole stride groups (cosmos_kernels/triton/neighborhood_attention.py, plan)."""
    from cosmos_kernels.triton import neighborhood_attention as tri

    before = os.environ.get(tri.PADDED_TILES_ENV)
    os.environ[tri.PADDED_TILES_ENV] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[tri.PADDED_TILES_ENV]
        else:
            os.environ[tri.PADDED_TILES_ENV] = before


def _ours_rows(impl, fn, tile_eff, *, q, k, v, grad, device, quick, sample, expect_out, expect_grads, grads_ref,
               dense_ms, flex_ms, shape, dtype, common, fwd_flops, flop_ratio) -> list[dict]:
    """Forward and backward rows of one of our implementations on one case."""
    rows = []
    try:
        out = fn(q, k, v)
        err = rel_err(out if sample is None else out[:, sample], expect_out)
        ms = _timed(lambda: fn(q, k, v), device, quick)
        rows.append(_row("neighborhood_attention_3d.fwd", shape, dtype, impl, ms, fwd_flops, rel_err=err,
                         ok=err <= threshold(dtype), **common, tile_eff=tile_eff,
                         ideal_frac=dense_ms["fwd"] / ms / flop_ratio if "fwd" in dense_ms else None,
                         vs_peer=flex_ms["fwd"] / ms if "fwd" in flex_ms else None,
                         ref="reference" if sample is None else f"reference on {len(sample)} rows"))
        args = [t.detach().requires_grad_() for t in (q, k, v)]
        got = torch.autograd.grad(fn(*args), args, grad)
        err = max(rel_err(g, e) for g, e in zip(got, expect_grads)) if expect_grads is not None else None
        ms = _timed(backward_only(fn, (q, k, v), grad), device, quick)
        rows.append(_row("neighborhood_attention_3d.bwd", shape, dtype, impl, ms, 2.5 * fwd_flops, rel_err=err,
                         ok=None if err is None else err <= threshold(dtype, grad=True), **common,
                         ideal_frac=dense_ms["bwd"] / ms / flop_ratio if "bwd" in dense_ms else None,
                         vs_peer=flex_ms["bwd"] / ms if "bwd" in flex_ms else None, ref=grads_ref))
    except Exception as exc:  # noqa: BLE001 - reported as a row, the other implementations still run
        rows.append(_note("neighborhood_attention_3d", shape, dtype, impl, f"{type(exc).__name__}: {exc}"[:120]))
    return rows


def _tile_efficiency(geometry, device, padded: str = "0") -> float:
    """Attended pairs / pairs the forward's tiles compute, for the H100 launch configuration
    (padded: the plan, as _padded_tiles)."""
    from cosmos_kernels.triton import neighborhood_attention as tri

    geom = tri.Geometry(*geometry)
    cfg = tri.GPU_CONFIGS["fwd"] if device.type == "cuda" else tri.INTERPRETER_CONFIG
    with _padded_tiles(padded):
        p = tri.plan(geom, cfg.block_outer, cfg.block_inner, True)
    return attended_pairs(*geometry) / (p.visits * cfg.block_outer * cfg.block_inner)


def run(device: torch.device, quick: bool, rows: list | None = None) -> list[dict]:
    """This family's rows, appended to `rows` (if given) as each shape finishes."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = [] if rows is None else rows
    for case in QUICK_CASES if quick else FULL_CASES:
        rows += _bench_case(case, dtype, device, quick)
    return rows
