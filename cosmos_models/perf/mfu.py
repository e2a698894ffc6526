"""MFU of the training step `cosmos train` runs, and its measurement.

    StepSettings(config, resolution, frames, batch, cp, sac, ...)   one configuration (a baseline entry)
    TrainerStep(settings, device)          the trainer's own step (cosmos_models.training.trainer:
                                           FSDP2, Ulysses CP, SAC, the flow-matching loss, clipping,
                                           AdamW, EMA) on random latents of that shape
    measure(settings, device, ...)         warm-up, timed steps -> step time, tokens/s, TFLOP/s, MFU
    (named part ranges: cosmos_models.perf.ranges; baselines: cosmos_models.perf.baselines)

MFU = useful FLOPs per second / peak. Useful FLOPs are `cosmos_models.nets.flops.count` of a training
step (recomputation by activation checkpointing is not useful work), per rank under context
parallel. The peak used is printed with every number: H100 SXM bf16 dense 989.4 TFLOP/s by default
on a GPU, or `peak="measured"`: a large matmul timed in the step's precision on this device (bf16 on
the GPU; on a CPU an fp32 matmul, the only peak that means anything there; CPU figures say nothing
about GPU performance).

What is timed is Trainer.train_step itself, so an MFU regression in the real trainer shows here: the
batch comes from cosmos_models.data.prepare.RandomLatents (cached-latent batches drawn in memory, the
variant's own inputs included) instead of a data folder; the weights are fp32 masters with the
trainer's compute copy (bf16 on a GPU), the optimizer its AdamW, and the EMA update is part of the step.

Timing: CUDA events around each step (perf_counter on a CPU), after warm-up; the step time is the
median over steps, and with repeats the median of the per-repeat medians (robust on a loaded host).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

import cosmos_models as cm
from cosmos_kernels import dispatch
from cosmos_models.data.clips import RESOLUTIONS, resolve_resolution
from cosmos_models.data.prepare import RandomLatents
from cosmos_models.nets import flops as flop_count
from cosmos_models.nets.flops import H100_SXM_BF16_DENSE
from cosmos_models.nets.vae import SPATIAL_COMPRESSION, latent_frames
from cosmos_models.perf.ranges import PartRanges
from cosmos_models.perf.report import print_table
from cosmos_models.perf.timing import cpu_threads, environment, matmul_peak, memory, sync, time_calls
from cosmos_models.training import sac
from cosmos_models.devices import resolve_device
from cosmos_models.training.trainer import TrainConfig, Trainer

PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class StepSettings:
    """One training-step configuration (what a baseline entry records and re-measures).

    resolution: "256p", "480p", "720p" (cosmos_models.data.clips.RESOLUTIONS), "HxW" in pixels, or None for the config's default; frames: pixel
    frames (4k+1; None: the config's); precision: the trainer's: "bf16" (fp32 master weights, bf16
    compute copies, fp32 modulation) or "fp32"; None: bf16 on a GPU, fp32 on a CPU. backend: a
    kernel-backend spec as --kernel-backend takes it (None: dispatch default). threads: CPU intra-op
    threads during the measurement (None: torch's setting); one thread keeps CPU timings steady on
    a shared host, where a parallel region waits for its slowest, descheduled thread.
    """

    config: str
    resolution: str | None = None
    frames: int | None = None
    batch: int = 1
    cp: int = 1
    sac: str = "none"
    text_len: int | None = None
    precision: str | None = None
    backend: str | None = None
    steps: int = 10
    warmup: int = 3
    threads: int | None = None
    lora: str | None = None  # "RANK[:ALPHA]": the LoRA step (adapters trained, the rest frozen)

    def __post_init__(self):
        cfg = cm.get_config(self.config)
        sac.check_policy(self.sac)
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; expected one of {PRECISIONS} or None")
        if self.backend is not None:
            dispatch.parse_spec(self.backend, "backend")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be None or an int >= 1, got {self.threads!r}")
        for name, low in (("batch", 1), ("cp", 1), ("steps", 1), ("warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.pixels(cfg)  # validates the resolution
        if self.lora is not None:
            from cosmos_models.training.lora import parse_lora
            parse_lora(self.lora)

    def pixels(self, cfg=None) -> tuple[int, int, int]:
        """(frames, height, width) in pixels."""
        cfg = cm.get_config(self.config) if cfg is None else cfg
        frames = cfg.num_frames if self.frames is None else self.frames
        if self.resolution is None:
            return (frames, *cfg.resolution)
        try:
            return (frames, *resolve_resolution(self.resolution))
        except ValueError:
            raise ValueError(f"resolution={self.resolution!r}; expected one of {sorted(RESOLUTIONS)} or HxW in pixels "
                             "(e.g. 64x64)") from None

    def resolved_precision(self, device: torch.device) -> str:
        return self.precision or ("bf16" if device.type == "cuda" else "fp32")

    def flops(self) -> dict:
        frames, height, width = self.pixels()
        return flop_count.count(self.config, batch=self.batch, frames=frames, height=height, width=width,
                                text_len=self.text_len, cp=self.cp)

    def label(self) -> str:
        frames, h, w = self.pixels()
        parts = [self.config, f"{h}x{w}x{frames}", f"B{self.batch}"]
        parts += [f"cp{self.cp}"] * (self.cp > 1) + [f"sac={self.sac}"] * (self.sac != "none")
        parts += [f"threads={self.threads}"] * (self.threads is not None) + [f"lora={self.lora}"] * (self.lora is not None)
        return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# the training step: the trainer's own
# ---------------------------------------------------------------------------------------------
class TrainerStep:
    """`Trainer.train_step` of a run built for `settings` on random latents (see the module docstring).
    Calling it runs one step and returns its loss; `close()` releases the run (process group, folder)."""

    def __init__(self, settings: StepSettings, device: torch.device | str):
        self.settings, self.device = settings, torch.device(device)
        self.count = settings.flops()
        frames, height, width = settings.pixels()
        self.folder = tempfile.mkdtemp(prefix="cosmos-mfu-")
        cfg = TrainConfig(config=settings.config, out=self.folder, resolution=f"{height}x{width}", frames=frames,
                          batch=settings.batch, cp=settings.cp, sac=settings.sac, precision=settings.precision,
                          device=str(self.device), kernel_backend=settings.backend, steps=10 ** 9, save_every=0,
                          log_every=10 ** 9, progress=False, lora=settings.lora)
        model_cfg = cm.get_config(settings.config)
        latent = (latent_frames(frames), height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION)
        batches = RandomLatents(model_cfg, batch=settings.batch, latent_shape=latent, text_len=settings.text_len)
        try:
            self.trainer = Trainer(cfg, batches=batches)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.model = self.trainer.model

    @property
    def ranges(self) -> PartRanges | None:
        return self.trainer.ranges

    @ranges.setter
    def ranges(self, value: PartRanges | None) -> None:
        self.trainer.ranges = value

    @property
    def tokens(self) -> int:
        """Tokens of one step over the whole context-parallel group (batch x sequence)."""
        return self.settings.batch * self.count["tokens"]

    def __call__(self) -> torch.Tensor:
        with self.trainer.kernels():
            return torch.tensor(self.trainer.train_step()["loss"])

    def close(self) -> None:
        self.trainer.close(barrier=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def _breakdown(step: TrainerStep, n: int, device: torch.device) -> tuple[list[dict], float]:
    """Per-part time of n extra instrumented steps (mean per step), with each part's useful FLOPs,
    and the instrumented steps' own mean time (the shares are of it)."""
    step.ranges = PartRanges(step.model, timing=True, device=device)
    totals: dict = {}
    step_time = 0.0
    with step.ranges:
        for _ in range(n):
            step_time += time_calls(step, 1, device)[0][0] / n
            for key, sec in step.ranges.times().items():
                totals[key] = totals.get(key, 0.0) + sec / n
    step.ranges = None
    parts = step.count["parts"]
    # FLOPs of what each hooked module runs (the control branch's embedder and before/after
    # projections run outside its blocks: its rate is slightly overstated)
    part_flops = {"patch_embed": ("patch_embed",), "self_attn": ("self_attn_proj", "self_attn_core"),
                  "cross_attn": ("cross_attn_proj", "cross_attn_core"), "mlp": ("mlp",),
                  "final_layer": ("final_layer",), "control_branch": ("control_branch",)}
    rows = []
    for (category, phase), sec in sorted(totals.items(), key=lambda kv: -kv[1]):
        pass_ = {"fwd": "forward", "bwd": "backward"}.get(phase)
        f = sum(parts.get(p, {}).get(pass_, 0) for p in part_flops.get(category, ())) if pass_ else 0
        rows.append({"part": category, "phase": phase, "ms": sec * 1e3, "share": sec / step_time,
                     "TFLOP/s": f / sec / 1e12 if f and sec > 0 else None})
    # the rest of the step: AdaLN kernels between the parts, modulation, embeddings, RoPE tables,
    # the data-facing embedders' backward, autograd and launch overhead (and the hooks themselves)
    rest = max(step_time - sum(totals.values()), 0.0)
    rows.append({"part": "other", "phase": "-", "ms": rest * 1e3, "share": rest / step_time, "TFLOP/s": None})
    return rows, step_time


def measure(settings: StepSettings, device: str | torch.device | None = None, **kwargs) -> dict:
    """Measure one configuration (see _measure for the keywords), with settings.threads CPU threads."""
    device = resolve_device(device)
    with cpu_threads(settings.threads, device):
        return _measure(settings, device, **kwargs)


def _measure(settings: StepSettings, device: torch.device, *, repeats: int = 1, peak: str = "auto",
             breakdown_steps: int = 0, trace: str | None = None, nvtx: bool = False) -> dict:
    """Measure one configuration; returns the result dict (see the module docstring).

    peak: "h100" (989.4 TFLOP/s bf16 dense), "measured", a number in TFLOP/s, or "auto" (h100 on a
    GPU, measured on a CPU); both the H100 and the measured MFU are always reported.
    breakdown_steps: extra instrumented steps for the per-part time breakdown (0: none).
    trace: a directory for a torch.profiler trace of two extra steps (with the part ranges).
    nvtx: NVTX ranges around the parts during the timed steps (for Nsight Systems).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    step = TrainerStep(settings, device)
    try:
        return _measure_step(step, settings, device, repeats=repeats, peak=peak, breakdown_steps=breakdown_steps,
                             trace=trace, nvtx=nvtx)
    finally:
        step.close()


def _measure_step(step: TrainerStep, settings: StepSettings, device: torch.device, *, repeats: int, peak: str,
                  breakdown_steps: int, trace: str | None, nvtx: bool) -> dict:
    precision = settings.resolved_precision(device)
    for _ in range(settings.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ranges = PartRanges(step.model, nvtx=True, device=device) if nvtx else None
    medians, all_times, loss = [], [], None
    with ranges if ranges is not None else contextlib.nullcontext():
        step.ranges = ranges
        for _ in range(repeats):
            times, loss = time_calls(step, settings.steps, device)
            medians.append(statistics.median(times))
            all_times += times
        step.ranges = None
    peak_memory = memory(device)
    step_time = statistics.median(medians)
    if not bool(torch.isfinite(loss)):
        raise RuntimeError(f"{settings.label()}: the training loss is not finite ({float(loss)})")

    useful = step.count["total_train_step"]
    if settings.lora is not None:
        # frozen weights get no gradient: the backward's weight-gradient matmuls (one forward's matmul
        # FLOPs) are not done; the rank-r adapters' own FLOPs are too small to count
        useful -= step.count["matmul_forward"]
    achieved = useful / step_time
    measured, measured_label = matmul_peak(device, torch.bfloat16 if precision != "fp32" else torch.float32)
    peaks = {"h100": (H100_SXM_BF16_DENSE, "H100 SXM bf16 dense (datasheet)"), "measured": (measured, measured_label)}
    if peak == "auto":
        peak = "h100" if device.type == "cuda" else "measured"
    if peak in peaks:
        peak_flops, peak_label = peaks[peak]
    else:
        try:
            peak_flops, peak_label = float(peak) * 1e12, f"given {float(peak)} TFLOP/s"
        except ValueError:
            raise ValueError(f"peak={peak!r}; expected 'h100', 'measured', 'auto' or a number in TFLOP/s") from None
    tokens = step.tokens
    result = {
        "settings": dataclasses.asdict(settings),
        "label": settings.label(),
        "precision": precision,
        "environment": environment(device),
        "flops": {**{k: step.count[k] for k in ("total_train_step", "total_forward", "total_backward", "matmul_forward",
                                                 "attention_forward", "parts", "grid", "tokens", "cp")},
                  "useful_train_step": useful},
        "step_time_s": step_time,
        "step_time_repeats_s": medians,
        "step_times_s": all_times,
        "tokens_per_s": tokens / step_time,
        "tokens_per_s_per_device": tokens / step_time / settings.cp,
        "tflops": achieved / 1e12,
        "peak": {"used": peak_label, "tflops": peak_flops / 1e12, "h100_tflops": H100_SXM_BF16_DENSE / 1e12,
                 "measured_tflops": measured / 1e12, "measured": measured_label},
        "mfu": achieved / peak_flops,
        "mfu_h100": achieved / H100_SXM_BF16_DENSE,
        "mfu_measured_peak": achieved / measured,
        "memory": peak_memory,
        "loss": float(loss),
    }
    if breakdown_steps:
        result["breakdown"], result["breakdown_step_time_s"] = _breakdown(step, breakdown_steps, device)
    if trace:
        result["trace"] = _trace(step, device, trace)
    return result


def _trace(step: TrainerStep, device: torch.device, directory: str) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    step.ranges = PartRanges(step.model, profiler=True, device=device)
    with step.ranges, profile(activities=activities) as prof:
        for _ in range(2):
            step()
        sync(device)
    step.ranges = None
    out = path / f"train_step-{step.settings.config}-{os.getpid()}.json"
    prof.export_chrome_trace(str(out))
    return str(out)


def print_result(result: dict) -> None:
    env, peak = result["environment"], result["peak"]
    print(f"device: {env['device']}  ({env['figures']})")
    print(f"torch {env['torch']}  triton {env['triton']}  precision {result['precision']}  "
          f"backend {result['settings']['backend'] or 'dispatch default'}")
    print(f"config: {result['label']}  grid {tuple(result['flops']['grid'])}  tokens/step {result['flops']['tokens']}")
    print(f"step time {result['step_time_s'] * 1e3:.2f} ms (median)  tokens/s {result['tokens_per_s']:.4g}  "
          f"achieved {result['tflops']:.4g} TFLOP/s  ({result['flops']['total_train_step'] / 1e12:.4g} TFLOP/step "
          f"useful, per rank)")
    print(f"MFU {100 * result['mfu']:.2f}% of {peak['tflops']:.4g} TFLOP/s [{peak['used']}]")
    print(f"    {100 * result['mfu_h100']:.2f}% of {peak['h100_tflops']:.4g} TFLOP/s [H100 SXM bf16 dense]   "
          f"{100 * result['mfu_measured_peak']:.2f}% of {peak['measured_tflops']:.4g} TFLOP/s [{peak['measured']}]")
    mem = result["memory"]
    peak_bytes = mem.get("peak_allocated_bytes", mem.get("peak_rss_bytes"))
    print(f"memory peak {peak_bytes / 2**30:.3f} GiB ({mem['kind']})")
    if result.get("breakdown"):
        print(f"where the step time goes ({result['breakdown_step_time_s'] * 1e3:.2f} ms per instrumented step; "
              "TFLOP/s: the part's useful FLOPs / its time):")
        print_table(result["breakdown"], ["part", "phase", "ms", "share", "TFLOP/s"])
    if result.get("trace"):
        print(f"profiler trace: {result['trace']}")
