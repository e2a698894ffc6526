"""Flash-attention benchmark: forward, backward and forward+JVP TFLOP/s against PyTorch SDPA
(each backend that runs here: cuDNN, flash, efficient), and the JVP against torch.func.jvp over
the math SDPA (time and peak memory), all measured in the same run.

FLOPs (useful work only, recomputation not counted): forward 4·B·H·S_q·S_k·D (QKᵀ and PV);
backward 2.5× the forward (five S_q×S_k×D matmuls: QKᵀ recomputed is not counted); forward+JVP
3× the forward: six S_q×S_k×D matmuls (QKᵀ, tQ·Kᵀ, Q·tKᵀ, P·V, P·tV, (P⊙tS)·V), 12·B·H·S_q·S_k·D.
Targets on H100: forward ≥ 0.9× the best SDPA backend, backward ≥ 0.8×, forward+JVP ≤ 2× our
own forward (`x_fwd` column).

Side by side (issue 19): each forward variant of the Triton backend (fa2, the default; tma; tma_ws)
as `ours:triton:<variant>`, the one-pass backward as `ours:triton:one-pass`, the JVP pass and the
backward kernels per variant launched directly (`ours:triton:jvp:<variant>`, `ours:triton:bwd:<variant>`,
`ours:triton:one-pass:<variant>`, FA2 among them as the same-run baseline), FlexAttention (compiled,
GPU only) as a peer, and GB/s: the compulsory HBM bytes (q, k, v read and o written once; the
backward reads q, k, v, o, dO and writes dq, dk, dv) over the time.

References for rel_err: the materializing fp32 reference where the score matrix is small; at the
paper's shapes (where it does not fit) the best SDPA backend for out/grads, and for the tangent
a central difference of fp32 SDPA along the tangent direction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import cosmos_kernels as ck
from bench.common import backward_only, ours_backends, peak_memory, time_fn
from cosmos_models.perf.tune import NAMED_SHAPES
from cosmos_kernels.reference import flash_attention as ref
from cosmos_kernels.testing import rel_err, threshold

# (B, S_q, S_k, H, D): 480p and 720p self-attention (93 frames), their cross-attention over 512
# text tokens, and an 8k self-attention where the math-SDPA JVP peer still fits in memory.
FULL_SHAPES = [NAMED_SHAPES["2b-480p"], NAMED_SHAPES["2b-720p"], NAMED_SHAPES["2b-480p-cross"],
               NAMED_SHAPES["2b-720p-cross"], (1, 8192, 8192, 16, 128)]
QUICK_SHAPES = [(1, 256, 256, 2, 64), (1, 256, 64, 2, 64)]
SDPA_PEERS = {"sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
              "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION}
MATERIALIZE_LIMIT = 1 << 28  # score elements (B·H·S_q·S_k) up to which the plain reference runs
FD_TOLERANCE = 1e-3  # the central difference's own error (fp32, ε = 1e-3) is ~1e-4


def _sdpa(backend):
    """SDPA on our (B, S, H, D) layout, pinned to one backend."""
    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return fn


def _finite_difference_tangent(q, k, v, tangents, eps=1e-3):
    """(f(x + εt) − f(x − εt)) / 2ε in fp32 with SDPA (any memory-lean backend): O(S) memory."""
    q, k, v, *tangents = (t.float() for t in (q, k, v, *tangents))
    attn = lambda *a: F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in a)).transpose(1, 2)  # noqa: E731
    plus = attn(*(x + eps * t for x, t in zip((q, k, v), tangents)))
    minus = attn(*(x - eps * t for x, t in zip((q, k, v), tangents)))
    return (plus - minus) / (2 * eps)


def _timed(fn, device, quick, large):
    warmup, iters = (1, 3) if quick else ((2, 5) if large else (5, 20))
    return time_fn(fn, device, warmup=warmup, iters=iters) * 1e3


def _row(op, shape, dtype, impl, ms, flops, **extra):
    B, S_q, S_k, H, D = shape
    tensors = 2 * S_q + 2 * S_k if op.endswith("fwd") else (4 * S_q + 4 * S_k if op.endswith("bwd") else 0)
    nbytes = B * H * D * tensors * torch.empty((), dtype=dtype).element_size()
    return dict(op=op, shape=str(shape), dtype=str(dtype).replace("torch.", ""), impl=impl, ms=ms,
                **{"TFLOP/s": flops / (ms * 1e-3) / 1e12 if ms else None,
                   "GB/s": nbytes / (ms * 1e-3) / 1e9 if ms and nbytes else None}, **extra)


def _failed(op, shape, dtype, impl, exc):
    if isinstance(exc, torch.OutOfMemoryError):
        torch.cuda.empty_cache()
    return dict(op=op, shape=str(shape), dtype=str(dtype).replace("torch.", ""), impl=impl, ms=None, ok=None,
                note=f"{type(exc).__name__}: {exc}"[:120])


def _bench_shape(shape, dtype, device, quick) -> list[dict]:
    B, S_q, S_k, H, D = shape
    q = torch.randn(B, S_q, H, D, dtype=dtype, device=device)
    k = torch.randn(B, S_k, H, D, dtype=dtype, device=device)
    v = torch.randn(B, S_k, H, D, dtype=dtype, device=device)
    tangents = [torch.randn_like(t) for t in (q, k, v)]
    grad = torch.randn_like(q)
    fwd_flops = 4 * B * H * S_q * S_k * D
    large = B * H * S_q * S_k > MATERIALIZE_LIMIT
    rows = []

    # peers first: their times are the baseline of vs_peer, and the best one is the reference at scale
    peer_ms = {"fwd": {}, "bwd": {}}
    peer_out = {}
    for name, backend in SDPA_PEERS.items():
        fn = _sdpa(backend)
        try:
            peer_out[name] = fn(q, k, v)
            ms = _timed(lambda: fn(q, k, v), device, quick, large)
            peer_ms["fwd"][name] = ms
            rows.append(_row("flash_attention.fwd", shape, dtype, name, ms, fwd_flops))
            ms = _timed(backward_only(fn, (q, k, v), grad), device, quick, large)
            peer_ms["bwd"][name] = ms
            rows.append(_row("flash_attention.bwd", shape, dtype, name, ms, 2.5 * fwd_flops))
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run this case is reported
            rows.append(_failed("flash_attention", shape, dtype, name, exc))

    if not large:
        expect_out, expect_t, _, _ = ref.attention_jvp(q, k, v, *tangents, ref.default_scale(D))
        args = [t.detach().float().requires_grad_() for t in (q, k, v)]
        ref.attention(*args).backward(grad.float())
        expect_grads, ref_name = [a.grad for a in args], "reference"
        t_ref = "reference"
    elif peer_out:
        best = min(peer_ms["bwd"], key=peer_ms["bwd"].get)
        expect_out = peer_out[best]
        args = [t.detach().requires_grad_() for t in (q, k, v)]
        _sdpa(SDPA_PEERS[best])(*args).backward(grad)
        expect_grads, ref_name = [a.grad for a in args], best
        expect_t, t_ref = _finite_difference_tangent(q, k, v, tangents), "central-difference(sdpa fp32)"
    else:
        expect_out = expect_grads = expect_t = None
        ref_name = t_ref = None

    def best(kind):
        return min(peer_ms[kind].values()) if peer_ms[kind] else None

    for backend in ours_backends("flash_attention", device):
        impl = f"ours:{backend}"
        if backend == "torch" and large:
            rows.append(dict(op="flash_attention", shape=str(shape), dtype=str(dtype).replace("torch.", ""),
                             impl=impl, ms=None, ok=None, note="skipped: the reference materializes S_q×S_k"))
            continue
        fa = lambda a, b, c, backend=backend: ck.flash_attention(a, b, c, backend=backend)  # noqa: E731
        fwd_ms = None
        try:
            out = fa(q, k, v)
            fwd_ms = _timed(lambda: fa(q, k, v), device, quick, large)
            err = rel_err(out, expect_out) if expect_out is not None else None
            rows.append(_row("flash_attention.fwd", shape, dtype, impl, fwd_ms, fwd_flops, rel_err=err,
                             ok=None if err is None else err <= threshold(dtype),
                             vs_peer=best("fwd") / fwd_ms if best("fwd") else None, ref=ref_name,
                             peak_MB=_mb(peak_memory(lambda: fa(q, k, v), device))))
            args = [t.detach().requires_grad_() for t in (q, k, v)]
            got = torch.autograd.grad(fa(*args), args, grad)
            err = max(rel_err(g, e) for g, e in zip(got, expect_grads)) if expect_grads is not None else None
            ms = _timed(backward_only(fa, (q, k, v), grad), device, quick, large)
            rows.append(_row("flash_attention.bwd", shape, dtype, impl, ms, 2.5 * fwd_flops, rel_err=err,
                             ok=None if err is None else err <= threshold(dtype, grad=True),
                             vs_peer=best("bwd") / ms if best("bwd") else None, ref=ref_name))
        except Exception as exc:  # noqa: BLE001
            rows.append(_failed("flash_attention", shape, dtype, impl, exc))
        rows += _jvp_rows(shape, dtype, device, quick, large, backend, q, k, v, tangents, expect_t, t_ref,
                          fwd_ms, fwd_flops)

    rows += _variant_rows(shape, dtype, device, quick, large, q, k, v, grad, expect_out, expect_grads, ref_name,
                          peer_ms, fwd_flops)
    rows += _kernel_variant_rows(shape, dtype, device, quick, large, q, k, v, grad, tangents, expect_grads, ref_name,
                                 expect_t, t_ref, fwd_flops)
    rows += _flex_rows(shape, dtype, device, quick, large, q, k, v, grad, fwd_flops)
    rows += _jvp_peer_rows(shape, dtype, device, quick, large, q, k, v, tangents, fwd_flops)
    return rows


def _variant_rows(shape, dtype, device, quick, large, q, k, v, grad, expect_out, expect_grads, ref_name,
                  peer_ms, fwd_flops) -> list[dict]:
    """The Triton backend's other forward variants and its one-pass backward, beside the defaults."""
    if "triton" not in ours_backends("flash_attention", device):
        return []
    import importlib
    fa = importlib.import_module("cosmos_kernels.triton.flash_attention")
    D = shape[-1]
    scale = ref.default_scale(D)
    best = {kind: min(ms.values()) if ms else None for kind, ms in peer_ms.items()}
    rows = []
    for variant in fa.variants("fwd", dtype)[1:]:
        cfg = fa.config("fwd", D, dtype, variant)
        fn = lambda cfg=cfg: fa.forward(q, k, v, scale, cfg)  # noqa: E731
        impl = f"ours:triton:{variant}"
        try:
            out, _ = fn()
            ms = _timed(fn, device, quick, large)
            err = rel_err(out, expect_out) if expect_out is not None else None
            rows.append(_row("flash_attention.fwd", shape, dtype, impl, ms, fwd_flops, rel_err=err,
                             ok=None if err is None else err <= threshold(dtype),
                             vs_peer=best["fwd"] / ms if best["fwd"] else None, ref=ref_name))
        except Exception as exc:  # noqa: BLE001
            rows.append(_failed("flash_attention.fwd", shape, dtype, impl, exc))
    if fa.one_pass_backward(D, dtype):
        attend = lambda a, b, c: ck.flash_attention(a, b, c, backend="triton", deterministic=False)  # noqa: E731
        impl = "ours:triton:one-pass"
        try:
            args = [t.detach().requires_grad_() for t in (q, k, v)]
            got = torch.autograd.grad(attend(*args), args, grad)
            err = max(rel_err(g, e) for g, e in zip(got, expect_grads)) if expect_grads is not None else None
            ms = _timed(backward_only(attend, (q, k, v), grad), device, quick, large)
            rows.append(_row("flash_attention.bwd", shape, dtype, impl, ms, 2.5 * fwd_flops, rel_err=err,
                             ok=None if err is None else err <= threshold(dtype, grad=True),
                             vs_peer=best["bwd"] / ms if best["bwd"] else None, ref=ref_name))
        except Exception as exc:  # noqa: BLE001
            rows.append(_failed("flash_attention.bwd", shape, dtype, impl, exc))
    return rows


def _kernel_variant_rows(shape, dtype, device, quick, large, q, k, v, grad, tangents, expect_grads, ref_name,
                         expect_t, t_ref, fwd_flops) -> list[dict]:
    """The JVP pass and the backward kernels per variant, launched directly (no autograd around
    them), FA2 included so each TMA row has its baseline measured the same way in the same run:
    `ours:triton:jvp:<variant>`, `ours:triton:bwd:<variant>` (dK/dV and dQ kernels) and
    `ours:triton:one-pass:<variant>`."""
    if "triton" not in ours_backends("flash_attention", device):
        return []
    import importlib
    fa = importlib.import_module("cosmos_kernels.triton.flash_attention")
    D = shape[-1]
    scale = ref.default_scale(D)
    out, lse = fa.forward(q, k, v, scale)
    tangent = None if expect_t is None else (expect_t,)
    runs = [("flash_attention_jvp", f"ours:triton:jvp:{variant}", 3 * fwd_flops, tangent, t_ref,
             lambda cfg=fa.config("jvp", D, dtype, variant): fa.forward_jvp(q, k, v, *tangents, scale, cfg)[1:2])
            for variant in fa.variants("jvp", dtype)]
    runs += [("flash_attention.bwd", f"ours:triton:bwd:{variant}", 2.5 * fwd_flops, expect_grads, ref_name,
              lambda cfgs={"dkdv": fa.config("dkdv", D, dtype, variant), "dq": fa.config("dq", D, dtype, variant)}:
              fa.backward(grad, q, k, v, out, lse, scale, None, True, cfgs))
             for variant in fa.variants("dkdv", dtype)]
    if fa.one_pass_backward(D, dtype):
        runs += [("flash_attention.bwd", f"ours:triton:one-pass:{variant}", 2.5 * fwd_flops, expect_grads, ref_name,
                  lambda cfgs={"bwd_fused": fa.config("bwd_fused", D, dtype, variant)}:
                  fa.backward(grad, q, k, v, out, lse, scale, None, False, cfgs))
                 for variant in fa.variants("bwd_fused", dtype)]
    rows = []
    for op, impl, flops, expect, ref_label, fn in runs:
        try:
            got = fn()
            err = max(rel_err(g, e) for g, e in zip(got, expect)) if expect is not None else None
            tol = threshold(dtype, grad=True)
            if ref_label and ref_label.startswith("central"):
                tol = max(tol, FD_TOLERANCE)
            ms = _timed(fn, device, quick, large)
            rows.append(_row(op, shape, dtype, impl, ms, flops, rel_err=err, ok=None if err is None else err <= tol,
                             ref=ref_label))
        except Exception as exc:  # noqa: BLE001 - reported as a row, the other variants still run
            rows.append(_failed(op, shape, dtype, impl, exc))
    return rows


def _flex_rows(shape, dtype, device, quick, large, q, k, v, grad, fwd_flops) -> list[dict]:
    """FlexAttention (no mask), compiled as its docs require for speed: a GPU peer only (its CPU
    path compiles C++ per shape and says nothing about the GPU)."""
    if device.type != "cuda":
        return []
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return []
    flex = torch.compile(flex_attention, dynamic=False)
    fn = lambda a, b, c: flex(a.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2)).transpose(1, 2)  # noqa: E731
    rows = []
    try:
        fn(q, k, v)
        rows.append(_row("flash_attention.fwd", shape, dtype, "flex_attention", _timed(lambda: fn(q, k, v), device,
                                                                                     quick, large), fwd_flops))
        rows.append(_row("flash_attention.bwd", shape, dtype, "flex_attention",
                         _timed(backward_only(fn, (q, k, v), grad), device, quick, large), 2.5 * fwd_flops))
    except Exception as exc:  # noqa: BLE001
        rows.append(_failed("flash_attention", shape, dtype, "flex_attention", exc))
    return rows


def _jvp_rows(shape, dtype, device, quick, large, backend, q, k, v, tangents, expect_t, ref_name,
              fwd_ms, fwd_flops) -> list[dict]:
    impl = f"ours:{backend}"
    tol = threshold(dtype, grad=True)
    if ref_name and ref_name.startswith("central"):
        tol = max(tol, FD_TOLERANCE)
    fused = lambda: ck.flash_attention_jvp(q, k, v, *tangents, backend=backend)  # noqa: E731
    # torch.func.jvp of flash_attention: the same one fused pass (the op reads the tangents)
    func_jvp = lambda: torch.func.jvp(  # noqa: E731
        lambda a, b, c: ck.flash_attention(a, b, c, backend=backend), (q, k, v), tuple(tangents))
    rows = []
    for label, fn in ((impl, fused), (f"{impl}:func.jvp", func_jvp)):
        try:
            _, out_t = fn()
            err = rel_err(out_t, expect_t) if expect_t is not None else None
            ms = _timed(fn, device, quick, large)
            rows.append(_row("flash_attention_jvp", shape, dtype, label, ms, 3 * fwd_flops, rel_err=err,
                             ok=None if err is None else err <= tol, ref=ref_name, x_fwd=ms / fwd_ms if fwd_ms else None, peak_MB=_mb(peak_memory(fn, device))))
        except Exception as exc:  # noqa: BLE001
            rows.append(_failed("flash_attention_jvp", shape, dtype, label, exc))
    return rows


def _jvp_peer_rows(shape, dtype, device, quick, large, q, k, v, tangents, fwd_flops) -> list[dict]:
    if shape[2] == 512 and large:
        return []  # the cross-attention shapes add nothing to the math-JVP comparison
    math = _sdpa(SDPBackend.MATH)
    fn = lambda: torch.func.jvp(math, (q, k, v), tuple(tangents))  # noqa: E731
    try:
        peak = peak_memory(fn, device)
        ms = _timed(fn, device, quick, large)
        return [_row("flash_attention_jvp", shape, dtype, "func.jvp(sdpa-math)", ms, 3 * fwd_flops, peak_MB=_mb(peak))]
    except Exception as exc:  # noqa: BLE001 - the math path materializes S_q×S_k: OOM at the paper's shapes
        return [_failed("flash_attention_jvp", shape, dtype, "func.jvp(sdpa-math)", exc)]


def _mb(nbytes):
    return None if nbytes is None else nbytes / 2**20


def run(device: torch.device, quick: bool, rows: list | None = None) -> list[dict]:
    """This family's rows, appended to `rows` (if given) as each shape finishes."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = [] if rows is None else rows
    for shape in QUICK_SHAPES if quick else FULL_SHAPES:
        rows += _bench_shape(shape, dtype, device, quick)
    return rows
