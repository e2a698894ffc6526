"""`cosmos mfu record|check`: MFU baselines of training-step configurations (cosmos_models.perf).

    cosmos mfu record --config NAME [--resolution 480p --frames 93 --sac POLICY ...] --out FILE [--append]
    cosmos mfu check --baseline FILE [--tolerance 3%]        exit 1 when a step time regressed
"""
from __future__ import annotations

import argparse
import sys

import cosmos_models as cm
from cosmos_models.cli.run_flags import add_kernel_backend
from cosmos_models.perf import baselines, mfu
from cosmos_models.perf.mfu import PRECISIONS, StepSettings
from cosmos_models.perf.report import print_table, write_json
from cosmos_models.perf.timing import environment
from cosmos_models.training import sac
from cosmos_models.devices import resolve_device


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="model config: " + ", ".join(cm.configs()))
    p.add_argument("--resolution", default=None, help="256p, 480p, 720p or HxW pixels (default: the config's)")
    p.add_argument("--frames", type=int, default=None, help="pixel frames, 4k+1 (default: the config's)")
    p.add_argument("--batch", type=int, default=1, help="samples per rank")
    p.add_argument("--cp", type=int, default=1, help="context-parallel size (torchrun with that many processes)")
    p.add_argument("--sac", default="none", choices=sorted(sac.POLICIES),
                   help="selective activation checkpointing policy (cosmos_models/training/sac.py)")
    p.add_argument("--text-len", type=int, default=None, help="text tokens per prompt (default: the config's)")
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="default: bf16 on GPU, fp32 on CPU")
    add_kernel_backend(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads while measuring (default: torch's)")
    p.add_argument("--lora", default=None, metavar="RANK[:ALPHA]",
                   help="time the LoRA step (adapters on the block projections, the rest frozen)")
    p.add_argument("--peak", default="auto", help="h100 | measured | TFLOP/s number (default: h100 on GPU, "
                                                    "measured fp32 matmul on CPU)")


def settings_from_args(args) -> StepSettings:
    return StepSettings(config=args.config, resolution=args.resolution, frames=args.frames, batch=args.batch,
                        cp=args.cp, sac=args.sac, text_len=args.text_len, precision=args.precision,
                        backend=args.kernel_backend, steps=args.steps, warmup=args.warmup, threads=args.threads,
                        lora=args.lora)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    rec = sub.add_parser("record", allow_abbrev=False, help="measure configurations and write (or extend) a baseline")
    add_step_arguments(rec)
    rec.add_argument("--repeats", type=int, default=3, help="measurement repeats (median of their medians)")
    rec.add_argument("--out", required=True, help="baseline JSON (e.g. bench/baselines/<device>.json)")
    rec.add_argument("--append", action="store_true", help="add to the configurations already in --out")
    chk = sub.add_parser("check", allow_abbrev=False, help="re-measure every configuration of a baseline; exit 1 on regression")
    chk.add_argument("--baseline", required=True)
    chk.add_argument("--tolerance", default="3%", help="allowed step-time increase (3%% or 0.03)")
    chk.add_argument("--device", default=None)
    chk.add_argument("--repeats", type=int, default=None, help="default: the baseline's")
    chk.add_argument("--allow-device-mismatch", action="store_true",
                     help="compare even if the baseline was recorded on another device")
    chk.add_argument("--out", default=None, help="write the check's measurements as JSON")


def _is_main_process() -> bool:
    import torch.distributed as dist
    return not dist.is_initialized() or dist.get_rank() == 0


def record(args) -> int:
    device = resolve_device(args.device)
    result = mfu.measure(settings_from_args(args), device, repeats=args.repeats, peak=args.peak)
    if _is_main_process():
        n = baselines.record(result, args.repeats, args.out, append=args.append)
        mfu.print_result(result)
        print(f"wrote baseline {args.out} ({n} configuration(s))")
    return 0


def check(args) -> int:
    tolerance = baselines.parse_tolerance(args.tolerance)
    baseline = baselines.load(args.baseline)
    device = resolve_device(args.device)
    env = environment(device)

    def remeasure(entry: dict) -> dict:
        return mfu.measure(StepSettings(**entry["settings"]), device, repeats=args.repeats or entry.get("repeats", 3),
                           peak="auto")

    rows, results = baselines.check(baseline, env, remeasure, tolerance, allow_device_mismatch=args.allow_device_mismatch)
    if _is_main_process():
        print(f"device: {env['device']}  ({env['figures']})  tolerance {100 * tolerance:.1f}%  "
              f"(MFU after: the baseline's peak, so both columns compare)")
        print_table(rows, baselines.COLUMNS)
        if args.out:
            write_json(args.out, {"environment": env, "baseline": args.baseline, "tolerance": tolerance,
                                  "rows": rows, "results": results})
    regressions = [r for r in rows if r["status"] == "REGRESSION"]
    if regressions:
        print(f"{len(regressions)} configuration(s) regressed beyond {100 * tolerance:.1f}%", file=sys.stderr)
        return 1
    return 0


def run(args) -> int:
    try:
        return record(args) if args.action == "record" else check(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cosmos mfu: error: {exc}", file=sys.stderr)
        return 2
