"""`cosmos tune`: measure the attention kernels' candidate tiles and variants at the model's shapes
and keep the fastest accurate ones in the tuning cache, which the kernels then read at launch.

    cosmos tune --shapes 2b-480p,2b-720p,2b-720p-cross --kernels fwd,jvp,dkdv,dq --dtype bf16
    cosmos tune --shapes 1x8192x8192x16x128 --cache tuned.json

Shapes: 2b|14b - 480p|720p [-cross], or BxS_qxS_kxHxD. Every candidate is checked against the
reference (or the built-in tile's output where the reference does not fit) before it is timed;
the built-in tile is always measured too, so each entry records what tuning gained. The cache is
keyed by device name and Triton version: another GPU or Triton falls back to the built-in tables.
--device cpu runs the Triton interpreter (TRITON_INTERPRET=1) with a wall-clock timer: a test of
the tuner, not a measurement (its entries are keyed to "cpu").
"""
from __future__ import annotations

import argparse

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cosmos_models.perf.tune import DTYPES, NAMED_SHAPES

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    a = parser.add_argument
    a("--ops", default="flash_attention", help="kernel families to tune (flash_attention)")
    a("--kernels", default="fwd,jvp,dkdv,dq,bwd_fused", help="flash_attention kernels: fwd,jvp,dkdv,dq,bwd_fused")
    a("--shapes", default="2b-480p,2b-720p", help="comma-separated: " + ", ".join(NAMED_SHAPES) + ", or BxS_qxS_kxHxD")
    a("--dtype", default="bf16", choices=sorted(DTYPES))
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--cache", default=None, help="cache file to write (default: the user cache, cosmos_kernels.tuning.cache_path())")
    a("--max-candidates", type=int, default=None, help="try at most this many candidates per kernel (after the built-in one)")


def run(args) -> int:
    import os

    from cosmos_kernels import tuning
    from cosmos_models.perf.tune import DTYPES, parse_shape, tune_flash_attention, wall_timer

    ops = [o for o in args.ops.split(",") if o]
    if ops != ["flash_attention"]:
        raise ValueError(f"--ops: {args.ops!r}; the tuner covers flash_attention (the other kernels keep "
                         "their built-in tables)")
    kernels = [k for k in args.kernels.split(",") if k]
    from cosmos_kernels.triton import flash_attention as fa
    bad = [k for k in kernels if k not in fa.KERNELS]
    if bad or not kernels:
        raise ValueError(f"--kernels: {bad or args.kernels!r} not among {', '.join(fa.KERNELS)}")
    shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    device = torch.device(args.device)
    timer = None
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("--device cpu runs the Triton interpreter: set TRITON_INTERPRET=1 "
                             "(on a GPU machine, tune with --device cuda)")
        print("cosmos tune: CPU interpreter, wall-clock timer: a test of the tuner, not a GPU measurement")
        timer = wall_timer
    elif device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: tuning measures on a CUDA GPU (or the CPU interpreter)")
    entries = tune_flash_attention(shapes, kernels, DTYPES[args.dtype], device, timer=timer,
                                   max_candidates=args.max_candidates,
                                   report=lambda line: print(f"cosmos tune: {line}"))
    path = tuning.write_entries(entries, args.cache)
    print(f"cosmos tune: {len(entries)} entries written to {path}")
    if args.cache and os.path.abspath(args.cache) != os.path.abspath(tuning.cache_path()):
        print(f"cosmos tune: the kernels read {tuning.cache_path()}; set COSMOS_KERNELS_TUNE_CACHE={path} to use these")
    return 0
