"""Training-step throughput and MFU of a DiT config (`cosmos bench train-step`).

    cosmos bench train-step --config predict2.5-2b --resolution 480p|720p --frames 93 [--cp N]
        [--sac POLICY] [--batch B] [--steps N] [--warmup N] [--peak h100|measured|TFLOPs]
        [--breakdown-steps N] [--nvtx] [--trace DIR] [--out FILE]

Prints and writes JSON: step time, tokens/s, achieved TFLOP/s, MFU with the peak used (and the
other one), memory peak, versions, device, and a per-part time breakdown (patch embed, self-/cross-
attention, MLP, final layer, control branch, forward/backward/recompute, loss, optimizer, the rest).
On a CPU: `--config tiny` runs in seconds; its figures are CPU figures (peak: a measured fp32 matmul).
Context parallel: `torchrun --nproc-per-node N -m cosmos_models.cli bench train-step --cp N ...`.
The measurement itself is cosmos_models.perf.mfu (shared with `cosmos mfu record|check`).
"""
from __future__ import annotations

import argparse

from cosmos_models.cli.mfu import _is_main_process, add_step_arguments, settings_from_args
from cosmos_models.perf import mfu
from cosmos_models.perf.report import write_json
from cosmos_models.devices import resolve_device
def add_arguments(p: argparse.ArgumentParser) -> None:
    add_step_arguments(p)
    p.add_argument("--repeats", type=int, default=1, help="measurement repeats (median of their medians)")
    p.add_argument("--breakdown-steps", type=int, default=2,
                   help="extra instrumented steps for the per-part breakdown (0: none)")
    p.add_argument("--nvtx", action="store_true", help="NVTX ranges around the parts during the timed steps")
    p.add_argument("--trace", default=None, help="directory for a torch.profiler trace of two extra steps")
    p.add_argument("--out", default=None,
                   help="JSON output (default on GPU: bench/results/train_step-<config>-<resolution>.json)")


def run(args) -> int:
    settings = settings_from_args(args)
    device = resolve_device(args.device)
    result = mfu.measure(settings, device, repeats=args.repeats, peak=args.peak,
                         breakdown_steps=args.breakdown_steps, trace=args.trace, nvtx=args.nvtx)
    if not _is_main_process():
        return 0
    mfu.print_result(result)
    out = args.out
    if out is None and device.type == "cuda":
        frames, h, w = settings.pixels()
        out = f"bench/results/train_step-{settings.config}-{h}x{w}x{frames}-cp{settings.cp}-{settings.sac}.json"
    if out:
        print(f"wrote {write_json(out, result)}")
    return 0
