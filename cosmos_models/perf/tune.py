"""Tuning the attention kernels at the model's real shapes (`cosmos tune`).

The named shapes are the 2B/14B DiT's attention problems, (B, S_q, S_k, heads, head dim):
self-attention over the 93-frame latent token grid (24 latent frames of 30x52 tokens at 480p,
44x80 at 720p after the 1x2x2 patchify) and cross-attention over the 512 text tokens. Any other
problem is written BxS_qxS_kxHxD. The winners go to the tuning cache (cosmos_kernels.tuning),
which the kernels read at launch.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

TOKENS = {"480p": 24 * 30 * 52, "720p": 24 * 44 * 80}
HEADS = {"2b": 16, "14b": 40}
NAMED_SHAPES = {f"{m}-{r}{'-cross' if cross else ''}": (1, n, 512 if cross else n, h, 128)
                for m, h in HEADS.items() for r, n in TOKENS.items() for cross in (False, True)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    """A named shape (NAMED_SHAPES) or BxS_qxS_kxHxD."""
    if text in NAMED_SHAPES:
        return NAMED_SHAPES[text]
    parts = text.lower().split("x")
    if len(parts) != 5 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--shapes: {text!r} is neither a named shape ({', '.join(NAMED_SHAPES)}) nor "
                         "BxS_qxS_kxHxD with positive integers (e.g. 1x8192x8192x16x128)")
    return tuple(int(p) for p in parts)


def wall_timer(fn: Callable[[], object], iters: int = 3) -> float:
    """Median milliseconds by perf_counter: the CPU (interpreter) stand-in for CUDA events; it
    tests the tuner, it says nothing about GPU speed (and its entries are keyed to "cpu")."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def tune_flash_attention(shapes, kernels, dtype: torch.dtype, device, *, max_candidates: int | None = None,
                         timer=None, report: Callable[[str], None] = print) -> dict:
    """Tune each kernel on each shape; returns {cache key: tuning.Entry} (not yet written)."""
    from cosmos_kernels.triton import flash_attention as fa

    entries = {}
    for shape in shapes:
        for kernel in kernels:
            if kernel == "bwd_fused" and not fa.one_pass_backward(shape[-1], dtype):
                report(f"{kernel} {shape}: skipped (no one-pass backward for {dtype} at D={shape[-1]})")
                continue
            outcome = fa.tune(kernel, shape, dtype, device, timer=timer, max_candidates=max_candidates)
            e = outcome.entry
            gain = f", {e.default_ms / e.ms:.2f}x the built-in table ({e.default_ms:.3f} ms)" if e.default_ms else ""
            report(f"{kernel} {shape}: {len(outcome.times)} candidates ran, {len(e.rejected)} dropped; "
                   f"best {fa.tuning.label_of(outcome.winner)} at {e.ms:.3f} ms{gain}")
            entries[outcome.key] = e
    return entries
