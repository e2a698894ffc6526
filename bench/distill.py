"""rCM distillation step benchmark: one student iteration of the sCM objective (the teacher's CFG
pair of forwards, the student's forward + JVP through the whole DiT, the loss, the backward) timed
with its peak memory, in these arrangements, all measured in the same run:

    ours:<backend>             torch.func.jvp through the DiT; attention takes its forward-AD rule,
                               the fused flash_attention_jvp kernel (Triton on GPU; on CPU the
                               reference rule); one pass gives F_θ with its graph and the tangent
    ours:<backend>:separate    the JVP under no_grad, then a forward with grad (rCM's arrangement,
                               the one activation checkpointing needs)
    func.jvp(sdpa-math)        the same one-pass step with every attention replaced by PyTorch SDPA
                               pinned to the math backend (torch's own forward-AD formulas, which
                               materialize the S×S scores and their tangents)

Columns: ms (median step), peak_MiB (CUDA peak allocation above the models; None on CPU),
saved_MiB (bytes of the tensors autograd keeps for the backward, distinct storages: the activation
memory of the step on any device), rel_err (our tangent ∂F against the sdpa-math arm's; the
threshold of a tangent in that dtype), vs_peer (sdpa-math ms / ours ms).

Shapes: quick (CPU) the tiny config at 256 tokens; full (GPU) the 2B at 256p, 93 frames (24×12×20 =
5760 tokens, 512 text tokens), bf16, where the math-SDPA arm still has a chance to fit.
CPU figures say nothing about H100 performance.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import cosmos_kernels as ck
import cosmos_models as cm
from bench.common import environment, peak_memory, print_table, time_fn, write_json
from cosmos_kernels.testing import rel_err, threshold
from cosmos_models.distill import rcm as distill  # (config, B, latent T, H, W, text tokens)
from cosmos_models.nets import dit
QUICK_SHAPES = [("tiny", 1, 4, 16, 16, 8)]
FULL_SHAPES = [("predict2.5-2b", 1, 24, 24, 40, 512)]
COLUMNS = ["op", "shape", "dtype", "impl", "ms", "peak_MiB", "saved_MiB", "vs_peer", "rel_err", "ok"]


@contextlib.contextmanager
def math_sdpa_attention():
    """Every flash_attention call of the DiT becomes SDPA with the math backend."""
    def attention(q, k, v, softmax_scale=None, backend=None):
        with sdpa_kernel(SDPBackend.MATH):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 scale=softmax_scale)
        return out.transpose(1, 2)

    original = dit.ck
    dit.ck = SimpleNamespace(**{name: getattr(ck, name) for name in dir(ck) if not name.startswith("__")})
    dit.ck.flash_attention = attention
    try:
        yield
    finally:
        dit.ck = original


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for the backward while fn() runs."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # a wrapper without storage: count its size
            seen[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _models(name: str, device, dtype):
    torch.manual_seed(0)
    teacher = cm.build(name, device=device, dtype=dtype)
    with torch.no_grad():
        for p in teacher.parameters():
            if p.abs().sum() == 0:  # zero-initialized projections: give every path signal
                p.normal_(0, 0.02)
    student = copy.deepcopy(teacher).requires_grad_(True)
    return teacher.requires_grad_(False), student


def _step(student, teacher, batch, draws, cfg):
    """One student iteration's loss and backward; returns the tangent (for the accuracy check)."""
    captured = {}
    original = distill.student_jvp

    def spy(*args, **kw):
        F_, dF = original(*args, **kw)
        captured["dF"] = dF
        return F_, dF

    distill.student_jvp = spy
    try:
        loss, _ = distill.student_loss(student, teacher, None, batch, draws, cfg, iteration=cfg.tangent_warmup)
        loss.mean().backward()
    finally:
        distill.student_jvp = original
    student.zero_grad(set_to_none=True)
    return captured["dF"]


def _bench_shape(shape, device: torch.device, quick: bool) -> list[dict]:
    name, B, T, H, W, text = shape
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    label = f"{name} B{B} {T}x{H}x{W} ({B * T * H * W // 4} tok, {text} text)"
    common = dict(op="rcm_student_step", shape=label, dtype=str(dtype).replace("torch.", ""))
    try:
        teacher, student = _models(name, device, dtype)
    except torch.OutOfMemoryError as exc:
        return [dict(common, impl="all", ms=None, ok=None, note=f"OOM building the models: {exc}")]
    cfg_model = teacher.config
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(B, cfg_model.latent_channels, T, H, W, generator=g).to(device)
    ctx = torch.randn(B, text, cfg_model.crossattn_emb_channels, generator=g).to(device, dtype)
    rows = []
    arms = [("func.jvp(sdpa-math)", True, math_sdpa_attention)]
    backend = ck.backend_for("flash_attention", x0)
    arms += [(f"ours:{backend}", True, contextlib.nullcontext), (f"ours:{backend}:separate", False,
                                                                   contextlib.nullcontext)]
    expect_t, peer_ms = None, None
    for impl, one_pass, context in arms:
        cfg = distill.RCMConfig(teacher_guidance=5.0, tangent_warmup=1, loss_scale_dmd=0.0, one_pass_jvp=one_pass)
        draws = distill.draw([torch.Generator().manual_seed(i) for i in range(B)], x0.shape[1:], cfg, device=device)
        batch = distill.Batch(x0, ctx, torch.zeros_like(ctx))
        fn = lambda: _step(student, teacher, batch, draws, cfg)  # noqa: E731
        try:
            with context():
                tangent = fn()
                ms = time_fn(fn, device, warmup=1, iters=3) * 1e3
                peak = peak_memory(fn, device)
                saved = saved_bytes(fn)
        except torch.OutOfMemoryError as exc:
            rows.append(dict(common, impl=impl, ms=None, ok=None, note=f"OOM: {str(exc).splitlines()[0]}"))
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        row = dict(common, impl=impl, ms=ms, peak_MiB=None if peak is None else peak / 2**20,
                   saved_MiB=saved / 2**20)
        if impl.startswith("func.jvp"):
            expect_t, peer_ms = tangent.float(), ms
        else:
            if expect_t is not None:
                err = rel_err(tangent, expect_t)
                # the two paths round attention differently; in fp32 the DiT's long reductions apply
                tol = threshold(dtype, grad=True, long_reduction=True)
                row.update(rel_err=err, ok=err <= tol, ref="func.jvp(sdpa-math)")
            if peer_ms is not None:
                row["vs_peer"] = peer_ms / ms
        rows.append(row)
    return rows


def run(device: torch.device, quick: bool, rows: list | None = None) -> list[dict]:
    """This family's rows, appended to `rows` (if given) as each shape finishes."""
    rows = [] if rows is None else rows
    for shape in QUICK_SHAPES if quick else FULL_SHAPES:
        rows += _bench_shape(shape, device, quick)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distill", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", default=None, help="small shapes (the default on CPU)")
    p.add_argument("--out", default=None, help="JSON output (default bench/results/distill-<device>.json on GPU)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    quick = args.quick if args.quick is not None else device.type != "cuda"
    env = environment(device)
    print(f"device: {env['device']}  ({env['figures']})")
    rows = run(device, quick)
    print_table(rows, COLUMNS)
    out = args.out or (f"bench/results/distill-{device.type}.json" if device.type == "cuda" else None)
    if out:
        print(f"wrote {write_json(out, {'environment': env, 'quick': quick, 'rows': rows})}")
    return 1 if any(r.get("ok") is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
