"""MFU of a DiT training step: the step itself, its measurement, and regression baselines.

    TrainStep(settings, device)            one flow-matching training step (AdamW) of a config on
                                           synthetic latents, with selective activation
                                           checkpointing by policy name (cosmos_models.sac)
    PartRanges(model, nvtx=, profiler=, timing=)    named ranges around the model's parts
    measure(settings, device, ...)         warm-up, timed steps -> step time, tokens/s, TFLOP/s, MFU
    cosmos mfu record --config NAME [...] --out FILE
    cosmos mfu check --baseline FILE --tolerance 3%

MFU = useful FLOPs per second / peak. Useful FLOPs are `cosmos_models.flops.count` of a training
step (recomputation by activation checkpointing is not useful work), per rank under context
parallel. The peak used is printed with every number: H100 SXM bf16 dense 989.4 TFLOP/s by default
on a GPU, or `peak="measured"`: a large matmul timed in the step's precision on this device (bf16 on
the GPU; on a CPU an fp32 matmul, the only peak that means anything there; CPU figures say nothing
about GPU performance).

Timing: CUDA events around each step (perf_counter on a CPU), after warm-up; the step time is the
median over steps, and with repeats the median of the per-repeat medians (robust on a loaded host).
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import math
import os
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

import cosmos_models as cm
from cosmos_models import flops as flop_count
from cosmos_models import optim, sac
from cosmos_models.data import RESOLUTIONS, resolve_resolution
from cosmos_models.flow import FlowMatching
from cosmos_models.parallel import resolve_device

H100_SXM_BF16_DENSE = 989.4e12  # FLOP/s, NVIDIA H100 SXM datasheet, dense (no sparsity)
PRECISIONS = ("bf16", "fp32", "autocast")


# ---------------------------------------------------------------------------------------------
# settings of one measured configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepSettings:
    """One training-step configuration (what a baseline entry records and re-measures).

    resolution: "256p", "480p", "720p" (cosmos_models.data.RESOLUTIONS), "HxW" in pixels, or None for the config's default; frames: pixel
    frames (4k+1; None: the config's); precision: "bf16" (weights, activations and AdamW in bf16,
    modulation in fp32), "fp32", or "autocast" (fp32 weights, bf16 autocast); None: bf16 on a GPU,
    fp32 on a CPU. backend: the kernel backend (None: dispatch default). threads: CPU intra-op
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

    def __post_init__(self):
        cfg = cm.get_config(self.config)
        sac.check_policy(self.sac)
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}; expected one of {PRECISIONS} or None")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be None or an int >= 1, got {self.threads!r}")
        for name, low in (("batch", 1), ("cp", 1), ("steps", 1), ("warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.pixels(cfg)  # validates the resolution

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
        parts += [f"threads={self.threads}"] * (self.threads is not None)
        return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# named ranges around the model's parts (NVTX, profiler, timing)
# ---------------------------------------------------------------------------------------------
def _in_backward() -> bool:
    """True while autograd runs a backward pass (a forward seen then is checkpoint recomputation)."""
    return torch._C._current_graph_task_id() != -1


def nvtx_available() -> bool:
    """Whether torch.cuda.nvtx works here (CUDA builds of torch; with or without a GPU)."""
    return hasattr(torch._C, "_nvtx")


class PartRanges:
    """Named ranges around the model's parts, installed by module hooks inside `with` only (no cost
    otherwise): patch_embed; blockN.self_attn / .cross_attn / .mlp; controlN (Transfer control
    blocks) and control_embed; final_layer; each forward, backward (".bwd") and checkpoint
    recomputation (".recompute"). `range(name)` marks other pieces of a step (loss, optimizer).

    nvtx: NVTX ranges named "cosmos/<part>" (torch.cuda.nvtx) so an Nsight Systems trace reads by name; profiler:
    torch.profiler record_function ranges (for --trace); timing: per-part times (CUDA events, or
    perf_counter on a CPU), summed by `times()` per (category, phase).
    """

    def __init__(self, model: nn.Module, *, nvtx: bool = False, profiler: bool = False, timing: bool = False,
                 device: torch.device | None = None):
        self.model, self.use_nvtx, self.use_profiler, self.timing = model, nvtx, profiler, timing
        self.device = device if device is not None else torch.device("cpu")
        self._handles: list = []
        # open ranges by name: closed by name, not as a stack, because autograd may finish a part's
        # backward after starting another's, and checkpoint recomputation may stop inside a part
        self._open: dict[str, tuple] = {}
        self._records: list = []  # (category, phase, start, end)
        if nvtx and not nvtx_available():
            raise ValueError("PartRanges(nvtx=True): this torch build has no NVTX binding (a CPU-only build); "
                             "NVTX ranges need a CUDA build of torch")

    def parts(self) -> list[tuple[str, str, nn.Module]]:
        """(range name, category, module) of every part."""
        m = self.model
        out = [("patch_embed", "patch_embed", m.x_embedder)]
        for i, block in enumerate(m.blocks):
            out += [(f"block{i}.{n}", n, getattr(block, n)) for n in ("self_attn", "cross_attn", "mlp")]
        if hasattr(m, "control_blocks"):
            out.append(("control_embed", "control_branch", m.control_embedder))
            out += [(f"control{j}", "control_branch", b) for j, b in enumerate(m.control_blocks)]
        out.append(("final_layer", "final_layer", m.final_layer))
        return out

    def __enter__(self):
        for name, category, module in self.parts():
            self._handles += [
                module.register_forward_pre_hook(lambda mod, args, n=name, c=category: self._forward_enter(n, c)),
                module.register_forward_hook(lambda mod, args, out, n=name: self._forward_exit(n), always_call=True),
            ]
            # the embedders of data (latents, control videos) get no input gradient, so a full
            # backward hook could not bracket their weight-gradient matmul: their backward is "other"
            data_facing = category in ("patch_embed", "control_branch") and name.endswith("embed")
            if not data_facing:
                self._handles += [
                    module.register_full_backward_pre_hook(
                        lambda mod, grad_out, n=name, c=category: self._enter(f"{n}.bwd", c, "bwd")),
                    module.register_full_backward_hook(lambda mod, grad_in, grad_out, n=name: self._exit(f"{n}.bwd")),
                ]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for name in list(self._open):  # ranges a failure left open: close them, record nothing
            self._exit(name, record=False)
        return False

    @contextlib.contextmanager
    def range(self, name: str, category: str | None = None, phase: str = "step"):
        self._enter(name, category or name, phase)
        try:
            yield
        finally:
            self._exit(name)

    def _forward_enter(self, name: str, category: str) -> None:
        if _in_backward():
            self._enter(f"{name}.recompute", category, "recompute")
        else:
            self._enter(name, category, "fwd")

    def _forward_exit(self, name: str) -> None:
        self._exit(f"{name}.recompute" if f"{name}.recompute" in self._open else name)

    def _enter(self, name: str, category: str, phase: str) -> None:
        if name in self._open:  # a range left open (e.g. recomputation stopped early): drop it
            self._exit(name, record=False)
        # torch's own NVTX binding (no extra package); ranges are named "cosmos/<part>"
        handle = torch.cuda.nvtx.range_start(f"cosmos/{name}") if self.use_nvtx else None
        prof = torch.ops.profiler._record_function_enter_new(name, None) if self.use_profiler else None
        start = self._stamp() if self.timing else None
        self._open[name] = (category, phase, handle, prof, start)

    def _exit(self, name: str, record: bool = True) -> None:
        if name not in self._open:
            return
        category, phase, handle, prof, start = self._open.pop(name)
        if self.timing and record:
            self._records.append((category, phase, start, self._stamp()))
        if prof is not None:
            torch.ops.profiler._record_function_exit._RecordFunction(prof)
        if handle is not None:
            torch.cuda.nvtx.range_end(handle)

    def _stamp(self):
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def times(self) -> dict[tuple[str, str], float]:
        """Seconds per (category, phase) since the last call (waits for the device)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        totals: dict[tuple[str, str], float] = {}
        for category, phase, start, end in self._records:
            sec = start.elapsed_time(end) / 1e3 if self.device.type == "cuda" else end - start
            totals[category, phase] = totals.get((category, phase), 0.0) + sec
        self._records.clear()
        return totals


# ---------------------------------------------------------------------------------------------
# the training step
# ---------------------------------------------------------------------------------------------
class TrainStep:
    """One flow-matching training step of `settings.config` on synthetic data, on `device`:

        x_t = (1 - t) x + t eps (official timestep and conditioning-frame sampling, cosmos_models.flow),
        loss = 10 * mean((u(x_t, t, c) - (eps - x))^2) on non-conditioning frames,
        backward, gradient clipping (0.1), AdamW (the config's lr and weight decay, betas 0.9/0.999).

    The latents, text embeddings (raw Reason1 width, projected inside the model) and variant inputs
    (one control modality, actions, views) are drawn once; each step draws fresh t, conditioning
    frames and noise. `cp_group` (Ulysses) keeps the data replicated on every rank of the group.
    """

    def __init__(self, settings: StepSettings, device: torch.device | str, cp_group=None, seed: int = 0):
        self.settings, self.device = settings, torch.device(device)
        cfg = self.config = cm.get_config(settings.config)
        precision = settings.resolved_precision(self.device)
        weights = torch.bfloat16 if precision == "bf16" else torch.float32
        self.autocast = precision == "autocast"
        self.model = cm.build(cfg, device=self.device, dtype=weights, kernel_backend=settings.backend,
                              cp_group=cp_group)
        self.cp_group = cp_group
        sac.apply(self.model, settings.sac)
        self.optimizer = optim.adamw(self.model, cfg.lr, cfg.weight_decay, fused=self.device.type == "cuda")
        self.flow = FlowMatching(timestep_scale=cfg.timestep_scale)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.count = settings.flops()
        T, H, W = self.count["grid"]
        ps, pt = cfg.patch_spatial, cfg.patch_temporal
        data = torch.Generator(device=self.device).manual_seed(seed + 1)
        randn = partial(torch.randn, generator=data, device=self.device, dtype=weights)
        B = settings.batch
        self.x0 = randn(B, cfg.latent_channels, T * pt, H * ps, W * ps)
        self.context = randn(B, self.count["text_len"] * self.count["views"], cfg.text_channels)
        self.inputs = {}
        if cfg.variant == "transfer":  # one modality: one control-branch pass (what the FLOP count assumes)
            self.inputs["control_input"] = {cfg.control_modalities[0]: randn(*self.x0.shape)}
        elif cfg.variant == "action":
            self.inputs["action"] = randn(B, cfg.actions_per_latent_frame * (T * pt - 1), cfg.action_dim)
        self.ranges: PartRanges | None = None

    @property
    def tokens(self) -> int:
        """Tokens of one step over the whole context-parallel group (batch x sequence)."""
        return self.settings.batch * self.count["tokens"]

    def _range(self, name: str):
        return self.ranges.range(name) if self.ranges is not None else contextlib.nullcontext()

    def __call__(self) -> torch.Tensor:
        with self._range("flow_inputs"):
            inputs = self.flow.prepare(self.x0, self.generator)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with autocast:
            pred = self.model(inputs.x_t, inputs.timesteps, self.context,
                              condition_video_input_mask=inputs.condition_mask, **self.inputs)
        with self._range("loss"):
            loss = self.flow.loss(pred, inputs)
        loss.backward()
        if self.cp_group is not None:
            with self._range("cp_grad_allreduce"):
                self._sum_gradients_over_cp()
        with self._range("optimizer"):
            optim.clip_and_step(self.model, self.optimizer)  # the trainer's update (cosmos_models.optim)
        return loss.detach()


    def _sum_gradients_over_cp(self) -> None:
        """Under CP each rank holds partial parameter gradients (dit.py); sum them over the group in
        one collective, as the trainer's FSDP reduce-scatter does, so the timed step includes that
        communication and the ranks' weights stay identical."""
        import torch.distributed as dist

        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.cp_group)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, n: int, device: torch.device) -> tuple[list[float], torch.Tensor]:
    """Seconds of each of n calls of step() (CUDA events; perf_counter on a CPU), and the last loss."""
    times, loss = [], None
    for _ in range(n):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            loss = step()
            times.append(time.perf_counter() - t0)
    return times, loss


def matmul_peak(device: torch.device, dtype: torch.dtype | None = None) -> tuple[float, str]:
    """(FLOP/s, label) of a large square matmul timed here: bf16 8192^3 on a GPU, fp32 512^3 on a CPU."""
    from bench.common import time_fn

    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sec = time_fn(lambda: a @ b, device, warmup=3, iters=20 if device.type == "cuda" else 10)
    kind = str(dtype).removeprefix("torch.")
    where = "GPU" if device.type == "cuda" else "CPU"
    return 2 * n ** 3 / sec, f"measured {kind} {n}^3 matmul ({where})"


def _memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(device), "kind": "CUDA allocator peak"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_rss_bytes": rss, "kind": "process peak RSS (CPU)"}


def _breakdown(step: TrainStep, n: int, device: torch.device) -> tuple[list[dict], float]:
    """Per-part time of n extra instrumented steps (mean per step), with each part's useful FLOPs,
    and the instrumented steps' own mean time (the shares are of it)."""
    step.ranges = PartRanges(step.model, timing=True, device=device)
    totals: dict = {}
    step_time = 0.0
    with step.ranges:
        for _ in range(n):
            step_time += time_steps(step, 1, device)[0][0] / n
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


def _cp_group(cp: int, device: torch.device):
    """The context-parallel group: the whole torchrun world, which must have cp processes."""
    if cp == 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise ValueError(f"cp={cp} needs {cp} processes: launch with `torchrun --nproc-per-node {cp} "
                             "-m cosmos_models.cli bench train-step ...`")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    if dist.get_world_size() != cp:
        raise ValueError(f"cp={cp} but this run has {dist.get_world_size()} processes; context parallel uses "
                         "the whole world as its group")
    return dist.group.WORLD


@contextlib.contextmanager
def _cpu_threads(threads: int | None, device: torch.device):
    if threads is None or device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def same_device(a: str, b: str) -> bool:
    """Whether two environment device names are the same device (a CPU's thread count is a setting)."""
    strip = lambda name: re.sub(r", \d+ threads\)$", ")", name)  # noqa: E731
    return strip(a) == strip(b)


def measure(settings: StepSettings, device: str | torch.device | None = None, **kwargs) -> dict:
    """Measure one configuration (see _measure for the keywords), with settings.threads CPU threads."""
    device = resolve_device(device)
    with _cpu_threads(settings.threads, device):
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
    from bench.common import environment

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    step = TrainStep(settings, device, cp_group=_cp_group(settings.cp, device))
    precision = settings.resolved_precision(device)
    for _ in range(settings.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ranges = PartRanges(step.model, nvtx=True, device=device) if nvtx else None
    medians, all_times, loss = [], [], None
    with ranges if ranges is not None else contextlib.nullcontext():
        step.ranges = ranges
        for _ in range(repeats):
            times, loss = time_steps(step, settings.steps, device)
            medians.append(statistics.median(times))
            all_times += times
        step.ranges = None
    memory = _memory(device)
    step_time = statistics.median(medians)
    if not bool(torch.isfinite(loss)):
        raise RuntimeError(f"{settings.label()}: the training loss is not finite ({float(loss)})")

    useful = step.count["total_train_step"]
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
        "flops": {k: step.count[k] for k in ("total_train_step", "total_forward", "total_backward", "matmul_forward",
                                              "attention_forward", "parts", "grid", "tokens", "cp")},
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
        "memory": memory,
        "loss": float(loss),
    }
    if breakdown_steps:
        result["breakdown"], result["breakdown_step_time_s"] = _breakdown(step, breakdown_steps, device)
    if trace:
        result["trace"] = _trace(step, device, trace)
    return result


def _trace(step: TrainStep, device: torch.device, directory: str) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    step.ranges = PartRanges(step.model, profiler=True, device=device)
    with step.ranges, profile(activities=activities) as prof:
        for _ in range(2):
            step()
        _sync(device)
    step.ranges = None
    out = path / f"train_step-{step.settings.config}-{os.getpid()}.json"
    prof.export_chrome_trace(str(out))
    return str(out)


def print_result(result: dict) -> None:
    from bench.common import print_table

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


# ---------------------------------------------------------------------------------------------
# command line: shared step arguments, `cosmos mfu record|check`
# ---------------------------------------------------------------------------------------------
def add_step_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="model config: " + ", ".join(cm.configs()))
    p.add_argument("--resolution", default=None, help="256p, 480p, 720p or HxW pixels (default: the config's)")
    p.add_argument("--frames", type=int, default=None, help="pixel frames, 4k+1 (default: the config's)")
    p.add_argument("--batch", type=int, default=1, help="samples per rank")
    p.add_argument("--cp", type=int, default=1, help="context-parallel size (torchrun with that many processes)")
    p.add_argument("--sac", default="none", choices=sorted(sac.POLICIES),
                   help="selective activation checkpointing policy (cosmos_models/sac.py)")
    p.add_argument("--text-len", type=int, default=None, help="text tokens per prompt (default: the config's)")
    p.add_argument("--precision", default=None, choices=PRECISIONS, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--backend", default=None, help="kernel backend (triton|cuda|torch; default: dispatch)")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads while measuring (default: torch's)")
    p.add_argument("--peak", default="auto", help="h100 | measured | TFLOP/s number (default: h100 on GPU, "
                                                    "measured fp32 matmul on CPU)")


def settings_from_args(args) -> StepSettings:
    return StepSettings(config=args.config, resolution=args.resolution, frames=args.frames, batch=args.batch,
                        cp=args.cp, sac=args.sac, text_len=args.text_len, precision=args.precision,
                        backend=args.backend, steps=args.steps, warmup=args.warmup, threads=args.threads)


def parse_tolerance(text: str) -> float:
    """"3%" -> 0.03, "0.03" -> 0.03."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"--tolerance {text!r}: expected a percentage like 3% or a fraction like 0.03") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--tolerance {text!r} must be >= 0")
    return value


def _is_main_process() -> bool:
    import torch.distributed as dist
    return not dist.is_initialized() or dist.get_rank() == 0


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


def _entry(result: dict, repeats: int) -> dict:
    return {"settings": result["settings"], "label": result["label"], "repeats": repeats,
            "step_time_s": result["step_time_s"], "step_time_repeats_s": result["step_time_repeats_s"],
            "mfu": result["mfu"], "tflops": result["tflops"], "peak": result["peak"], "precision": result["precision"]}


def record(args) -> int:
    device = resolve_device(args.device)
    result = measure(settings_from_args(args), device, repeats=args.repeats, peak=args.peak)
    path = Path(args.out)
    from bench.common import write_json

    env = result["environment"]
    entries = []
    if args.append and path.exists():
        old = json.loads(path.read_text())
        if not same_device(old["environment"]["device"], env["device"]):
            raise ValueError(f"--append: {path} was recorded on {old['environment']['device']}, "
                             f"this is {env['device']}")
        entries = [e for e in old["entries"] if e["settings"] != result["settings"]]
    entries.append(_entry(result, args.repeats))
    if _is_main_process():
        print_result(result)
        write_json(path, {"environment": env, "entries": entries})
        print(f"wrote baseline {path} ({len(entries)} configuration(s))")
    return 0


def check(args) -> int:
    from bench.common import environment, print_table, write_json

    tolerance = parse_tolerance(args.tolerance)
    if not Path(args.baseline).is_file():
        print(f"baseline {args.baseline} does not exist; record one with `cosmos mfu record --out FILE`",
              file=sys.stderr)
        return 2
    baseline = json.loads(Path(args.baseline).read_text())
    device = resolve_device(args.device)
    env = environment(device)
    if not same_device(baseline["environment"]["device"], env["device"]) and not args.allow_device_mismatch:
        print(f"baseline {args.baseline} was recorded on {baseline['environment']['device']!r}, this is "
              f"{env['device']!r}: step times are not comparable (--allow-device-mismatch to compare anyway)",
              file=sys.stderr)
        return 2
    rows, results = [], []
    for entry in baseline["entries"]:
        settings = StepSettings(**entry["settings"])
        repeats = args.repeats or entry.get("repeats", 3)
        result = measure(settings, device, repeats=repeats, peak="auto")
        results.append(result)
        before, after = entry["step_time_s"], result["step_time_s"]
        change = after / before - 1
        status = "REGRESSION" if change > tolerance else ("faster" if change < -tolerance else "ok")
        rows.append({"configuration": entry["label"], "before ms": before * 1e3, "after ms": after * 1e3,
                     "change": f"{100 * change:+.1f}%", "MFU before": f"{100 * entry['mfu']:.2f}%",
                     "MFU after": f"{100 * entry['mfu'] * before / after:.2f}%", "status": status})
    if _is_main_process():
        print(f"device: {env['device']}  ({env['figures']})  tolerance {100 * tolerance:.1f}%  "
              f"(MFU after: the baseline's peak, so both columns compare)")
        print_table(rows, ["configuration", "before ms", "after ms", "change", "MFU before", "MFU after", "status"])
        if args.out:
            write_json(args.out, {"environment": env, "baseline": args.baseline, "tolerance": tolerance,
                                  "rows": rows, "results": results})
    regressions = [r for r in rows if r["status"] == "REGRESSION"]
    if regressions:
        print(f"{len(regressions)} configuration(s) regressed beyond {100 * tolerance:.1f}%", file=sys.stderr)
        return 1
    return 0


def run(args) -> int:
    return record(args) if args.action == "record" else check(args)
