"""Sampling-step time of a DiT config (`cosmos bench sample-step`).

    cosmos bench sample-step --config predict2.5-2b --resolution 720p --frames 93 [--guidance 7]
        [--steps 35] [--iters N] [--warmup N] [--out FILE]

One solver step is one network evaluation (NFE) with classifier-free guidance: the conditional and
the unconditional forward of `Sampler.sample_latents` (official form cond + g·(cond − uncond); g = 0
runs the conditional pass alone). Reported: the step's time (CUDA events, median), the projected
time of a `--steps`-step run (steps × the step; the VAE and the text encoder are not included),
TFLOP/s and MFU from the analytic forward FLOPs (cosmos_models.nets.flops; the peak used is printed),
and the peak memory. The weights are random (the time does not depend on them) in bf16 on a GPU.
On a CPU `--config tiny` runs in seconds; its figures are CPU figures.
"""
from __future__ import annotations

import argparse

import torch

import cosmos_models as cm
from cosmos_kernels import use_backend
from cosmos_models.cli.run_flags import add_kernel_backend
from bench.common import environment, time_fn, write_json
from cosmos_models.nets import flops
from cosmos_models.nets.flops import H100_SXM_BF16_DENSE
from cosmos_models.data.clips import resolve_resolution
from cosmos_models.devices import resolve_device
from cosmos_models.sampling.sampler import Sampler
from cosmos_models.nets.vae import SPATIAL_COMPRESSION, latent_frames


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="model config: " + ", ".join(cm.configs()))
    p.add_argument("--resolution", default=None, help="256p, 480p, 720p or HxW pixels (default: the config's)")
    p.add_argument("--frames", type=int, default=None, help="pixel frames, 4k+1 (default: the config's)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the config's; 0: no CFG)")
    p.add_argument("--steps", type=int, default=None, help="solver steps of the projected run (default: the config's)")
    p.add_argument("--iters", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps (Triton compiles here)")
    add_kernel_backend(p)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", default=None, help="JSON output")


def measure(config: str, resolution: str | None = None, frames: int | None = None, *, guidance: float | None = None,
            steps: int | None = None, iters: int = 3, warmup: int = 1, backend: str | None = None,
            device: str | torch.device | None = None) -> dict:
    device = resolve_device(device)
    cfg = cm.get_config(config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    frames = cfg.num_frames if frames is None else frames
    height, width = cfg.resolution if resolution is None else resolve_resolution(resolution)
    guidance = cfg.guidance if guidance is None else guidance
    steps = cfg.sample_steps if steps is None else steps
    if cfg.variant != "predict":
        raise ValueError(f"sample-step measures the predict (Text2World) step; {config} is a {cfg.variant} model")
    if iters < 1 or warmup < 0 or steps < 1:
        raise ValueError("--iters and --steps must be >= 1, --warmup >= 0")
    grid = (latent_frames(frames), height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION)
    model = cm.build(cfg, device=device, dtype=dtype)
    sampler = Sampler(model, None, device=device, dtype=dtype)
    context = torch.randn(1, cfg.text_len, cfg.text_channels, device=device, dtype=dtype)
    negative = torch.randn_like(context) if guidance > 0 else None
    generator = torch.Generator().manual_seed(1)

    def step():
        with use_backend(backend):
            return sampler.sample_latents(grid, context=context, negative_context=negative, guidance=guidance,
                                          generator=generator, num_steps=1)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_fn(step, device, warmup=warmup, iters=iters)
    out = step()
    if not bool(torch.isfinite(out).all()):
        raise RuntimeError(f"sample-step {config}: the sampled latents are not finite")
    forwards = 2 if guidance > 0 else 1
    count = flops.count(cfg, batch=1, frames=frames, height=height, width=width)
    useful = forwards * count["total_forward"]
    memory = ({"peak_allocated_bytes": torch.cuda.max_memory_allocated(device), "kind": "CUDA allocator peak"}
              if device.type == "cuda" else {"peak_allocated_bytes": None, "kind": "not measured on CPU"})
    return {
        "config": cfg.name, "frames": frames, "height": height, "width": width, "grid": list(count["grid"]),
        "tokens": count["tokens"], "dtype": str(dtype).removeprefix("torch."), "guidance": guidance,
        "forwards_per_step": forwards, "backend": backend or "dispatch default",
        "environment": environment(device),
        "step_time_s": seconds, "projected_steps": steps, "projected_run_s": steps * seconds,
        "flops_per_step": useful, "tflops": useful / seconds / 1e12,
        "mfu_h100": useful / seconds / H100_SXM_BF16_DENSE, "peak": "H100 SXM bf16 dense 989.4 TFLOP/s",
        "memory": memory,
    }


def run(args) -> int:
    result = measure(args.config, args.resolution, args.frames, guidance=args.guidance, steps=args.steps,
                     iters=args.iters, warmup=args.warmup, backend=args.kernel_backend, device=args.device)
    mem = result["memory"]["peak_allocated_bytes"]
    print(f"device: {result['environment']['device']}  ({result['environment']['figures']})")
    print(f"{result['config']} {result['height']}x{result['width']}x{result['frames']} ({result['tokens']} tokens), "
          f"{result['dtype']}, guidance {result['guidance']} ({result['forwards_per_step']} forwards/step): "
          f"{result['step_time_s'] * 1e3:.1f} ms/step, {result['tflops']:.4g} TFLOP/s "
          f"(MFU {100 * result['mfu_h100']:.2f}% of {result['peak']}); {result['projected_steps']} steps: "
          f"{result['projected_run_s']:.1f} s; memory peak "
          + (f"{mem / 2**30:.2f} GiB" if mem is not None else "not measured (CPU)"))
    if args.out:
        print(f"wrote {write_json(args.out, result)}")
    return 0
