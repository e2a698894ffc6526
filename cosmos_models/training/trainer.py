"""Flow-matching training of the Cosmos DiT: the `Trainer` behind `cosmos train` (cosmos_models.cli.train).

    cosmos train --config tiny --out runs/tiny --steps 20            # CPU, synthetic clips, < 1 min
    torchrun --nproc_per_node 8 -m cosmos_models.cli train --config predict2.5-2b --data clips/ \\
        --vae wan_vae/ --init official.pt --resolution 720p --cp 2 --sac predict2_2b_720_aggressive \\
        --out runs/2b --resume

One step: a batch of clips (cached latents, or videos encoded by the VAE) -> per sample a timestep,
conditioning frames and noise (cosmos_models/training/objective.py) -> DiT -> flow-matching loss -> backward ->
gradient clipping -> AdamW -> EMA. The recipe (DESIGN.md "Training"): AdamW β=(0.9, 0.999), weight
decay 1e-3, lr of the config (2^-14.5 for the 2B), linear warm-up (the config's 2000 steps, at most
a fifth of --steps so short runs train) then linear decay to --final-lr-ratio at --steps, gradient
clipping at 0.1 (official), the loss unscaled as the official rectified-flow training_step computes
it (--loss-scale to scale it; its config's loss_scale 10 is never read there), text dropout 0.2
(zeroed embedding, for classifier-free guidance),
power EMA σ_rel 0.1 (official PowerEMATracker; cosmos_models/training/ema.py).

Data: --data is a clip folder (cosmos_models/data/clips.py); clips without cached latents are encoded
online by --vae. The tiny configs default to 64x64, 9-frame clips and may omit --data: they train on
generated moving-shape clips whose latents are cached once through the tiny random WAN VAE, the VAE
`cosmos sample` builds for tiny configs (cosmos_models/data/prepare.py).

Parallelism (cosmos_models/training/parallel.py): FSDP2 per block then the root (hybrid sharding with
--hsdp-replicate), bf16 compute copies of fp32 weights with fp32 gradient reduction on GPU (fp32 on
CPU; --precision), Ulysses context parallelism over --cp ranks for video batches, selective
activation checkpointing per block (--sac, cosmos_models/training/sac.py).

Batches. --batch is the video batch of one data-parallel group (the cp ranks of a group share it).
Joint image/video training (--image-prob p > 0; images from --image-data or the first frames of the
videos) alternates whole image batches (1 latent frame) with video batches, the same on every rank.
Image batches run with context parallelism off (`ulysses.disabled()`, the DiT's cp group unset);
the --image-batch images of a group are split over its cp ranks (data parallel inside the group),
so no rank repeats another's work. Losses are means over a group's batch, averaged over groups.

Randomness is counter-based: sample i of step s draws its timestep, conditioning frames, noise and
text dropout from a generator seeded by (seed, s, global index of the sample in the step), so a
run is reproducible bit for bit, independent of how many processes share the global batch (up to
floating-point reduction order), and a resumed run needs no generator state to continue exactly.

The run itself (process layout, run folder, data, loop, logs, checkpoints, resume) is the runner
shared with distillation (cosmos_models/training/runner.py); this module is what one training step is.

Checkpoints (cosmos_models/training/checkpointing.py): every --save-every steps and at the end,
<out>/checkpoints/step_XXXXXX (DCP: model, optimizer, EMA, LR schedule, step, per-rank data-loader
position and RNG states, the run's config), written atomically; --resume continues from the newest.
The EMA weights are also exported to <out>/ema.safetensors (cosmos_models.save_checkpoint names) for
`cosmos sample --checkpoint <out>/ema.safetensors`.

Logs: every --log-every steps a line on stdout and a JSON record in <out>/train_log.jsonl (step,
loss, the loss per noise-level bucket loss_t<lo>-<hi> of t (T_BUCKETS), lr, grad norm, EMA β, step
time, tokens/s, peak memory; on a GPU in bf16 also MFU: cosmos_models.nets.flops useful FLOPs per
second over the H100 SXM bf16 dense peak, as cosmos_models.perf.mfu), the same to TensorBoard / W&B
with --log-to; a tqdm bar on a terminal. --sample-every N: a preview video from the EMA weights
every N steps (cosmos_models/training/previews.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

import cosmos_models as cm
from cosmos_kernels import ulysses
from cosmos_models.data import prepare
from cosmos_models.nets import checkpoint, flops
from cosmos_models.training import lora, objective as flow
from cosmos_models.training import optim, parallel, sac, sharded_init
from cosmos_models.training.ema import EMA
from cosmos_models.training.runner import PRECISIONS, Run, RunConfig, RunShape, positive_int, rows_of

__all__ = ["TrainConfig", "Trainer", "PRECISIONS", "CONDITIONS", "TIMESTEP_RECIPES", "lr_factor",
           "shift_for_resolution", "resolve"]

CONDITIONS = ("final", "early", "none")
TIMESTEP_RECIPES = ("official", "paper")
T_BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0 + 1e-9)  # the noise-level buckets of the logged loss (t = 1: pure noise)


def peak_memory(device: torch.device) -> dict[str, float]:
    """{"peak_memory_gib": the CUDA allocator's peak} on a GPU, {"peak_rss_gib": the process's peak
    resident memory} elsewhere (what an out-of-memory is measured against)."""
    if device.type == "cuda":
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        import resource
    except ImportError:  # (not on Windows)
        return {}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux


@dataclass
class TrainConfig(RunConfig):
    """Everything a training run depends on: the shared run settings (RunConfig) and the recipe's.
    None = a default derived from the model config (see the `cosmos train --help` texts)."""

    config: str = "tiny"
    out: str = "runs/tiny"
    image_data: str | None = None
    image_prob: float = 0.0
    image_batch: int | None = None
    lr: float | None = None
    warmup: int | None = None
    final_lr_ratio: float = 0.0
    weight_decay: float | None = None
    grad_clip: float = optim.GRAD_CLIP
    ema_sigma_rel: float | None = 0.1
    ema_decay: float | None = None
    init: str | None = None
    text_dropout: float = 0.2
    condition: str = "final"
    timesteps: str = "official"
    shift: float | None = None
    loss_scale: float = flow.OFFICIAL_LOSS_SCALE
    overfit_batch: bool = False
    lora: str | None = None            # "RANK[:ALPHA]": train LoRA adapters only (training/lora.py)
    lora_targets: str | None = None    # comma-separated block projections (default: attention + MLP)
    control: str | None = None         # Transfer: the control modalities trained, comma-separated (default edge)
    sample_every: int = 0              # a preview video from the EMA every N steps (training/previews.py)
    sample_prompts: int = 2
    sample_steps: int = 10


def shift_for_resolution(size: tuple[int, int]) -> float:
    """The paper's timestep shift β: 1 at 256p (320x192) up to 5 at 720p (1280x704), linear in the
    pixel count between them (480p gets ~2.7), clamped outside."""
    low, high = 192 * 320, 704 * 1280
    frac = (size[0] * size[1] - low) / (high - low)
    return 1.0 + 4.0 * min(1.0, max(0.0, frac))


@dataclass(frozen=True)
class Resolved(RunShape):
    """TrainConfig with the defaults filled from the model config, validated."""

    lr: float = 0.0
    warmup: int = 0
    weight_decay: float = 0.0
    image_batch: int = 1
    controls: tuple[str, ...] = ()     # Transfer: the modalities each step feeds the control branch


def resolve(cfg: TrainConfig, device_type: str, *, needs_data: bool = True) -> Resolved:
    from cosmos_models.training.runner import resolve_run

    shape = resolve_run(cfg, device_type, needs_data=needs_data)
    model_cfg = shape.model
    if not 0.0 <= cfg.image_prob <= 1.0:
        raise ValueError(f"--image-prob must be in [0, 1], got {cfg.image_prob}")
    image_batch = cfg.image_batch if cfg.image_batch is not None else cfg.batch * cfg.cp
    positive_int("image_batch", image_batch)
    if not 0.0 <= cfg.text_dropout < 1.0:
        raise ValueError(f"--text-dropout must be in [0, 1), got {cfg.text_dropout}")
    if cfg.condition not in CONDITIONS:
        raise ValueError(f"--condition {cfg.condition!r}: expected one of {CONDITIONS}")
    if cfg.timesteps not in TIMESTEP_RECIPES:
        raise ValueError(f"--timesteps {cfg.timesteps!r}: expected one of {TIMESTEP_RECIPES}")
    if not (cfg.loss_scale > 0 and math.isfinite(cfg.loss_scale)):
        raise ValueError(f"--loss-scale must be a finite number > 0, got {cfg.loss_scale}")
    for name in ("sample_every",):
        positive_int(name, getattr(cfg, name), 0)
    for name in ("sample_prompts", "sample_steps"):
        positive_int(name, getattr(cfg, name))
    if cfg.sample_every and model_cfg.variant != "predict":
        raise ValueError(f"--sample-every: previews are text2world videos, which a {model_cfg.variant} model "
                         f"({model_cfg.name}) does not make; sample its checkpoints with cosmos sample instead")
    if not (cfg.grad_clip >= 0 and math.isfinite(cfg.grad_clip)):
        raise ValueError(f"--grad-clip must be >= 0 (0: no clipping), got {cfg.grad_clip}")
    lr = model_cfg.lr if cfg.lr is None else cfg.lr
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"--lr must be > 0, got {lr}")
    warmup = min(model_cfg.warmup_steps, max(1, cfg.steps // 5)) if cfg.warmup is None else cfg.warmup
    positive_int("warmup", warmup, 0)
    if not 0.0 <= cfg.final_lr_ratio <= 1.0:
        raise ValueError(f"--final-lr-ratio must be in [0, 1], got {cfg.final_lr_ratio}")
    weight_decay = model_cfg.weight_decay if cfg.weight_decay is None else cfg.weight_decay
    controls = _controls(cfg, model_cfg)
    return Resolved(**{f.name: getattr(shape, f.name) for f in dataclasses.fields(RunShape)}, lr=lr, warmup=warmup,
                    weight_decay=weight_decay, image_batch=image_batch, controls=controls)


def _controls(cfg: TrainConfig, model_cfg) -> tuple[str, ...]:
    """--control: the Transfer modalities trained (edge and blur computed from each clip, depth and seg
    read from DATASET/<kind>/<name>.mp4); edge by default, as the official single-view recipe."""
    if model_cfg.variant != "transfer":
        if cfg.control is not None:
            raise ValueError(f"--control is for Transfer models; {model_cfg.name} is a {model_cfg.variant} model")
        return ()
    names = tuple(dict.fromkeys({"vis": "blur"}.get(n.strip(), n.strip()) for n in (cfg.control or "edge").split(",")
                                if n.strip()))
    wrong = [n for n in names if n not in model_cfg.control_modalities]
    if wrong or not names:
        raise ValueError(f"--control {cfg.control!r}: expected some of {model_cfg.control_modalities}, comma-separated")
    if cfg.image_prob > 0:
        raise ValueError("--image-prob: a Transfer model trains on videos with their controls; joint image batches "
                         "are for Predict models")
    return names


def lr_factor(step: int, warmup: int, total: int, final_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to final_ratio at `total` (step 0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    frac = min(1.0, (step - warmup) / (total - warmup))
    return 1.0 - (1.0 - final_ratio) * frac


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The peak MFU is measured against (the project's convention: H100 SXM bf16 dense, on any GPU;
    logged with every MFU). None on CPU or in fp32: no meaningful MFU."""
    if device.type != "cuda" or precision != "bf16":
        return None
    return flops.H100_SXM_BF16_DENSE


class Trainer(Run):
    """A training run. `Trainer(cfg).train()` runs cfg.steps steps (resuming when cfg.resume) and
    returns [(step, loss)] of the steps it ran; `close()` releases the process group it made.
    `batches=` replaces the data folder by a batch source (the MFU measurement's random latents)."""

    name = "train"

    def resolve(self, *, needs_data: bool = True) -> Resolved:
        self.r = resolve(self.cfg, self.layout.device.type, needs_data=needs_data)
        return self.r

    def recipe(self) -> dict:
        return {"lr": self.r.lr, "warmup": self.r.warmup, "weight_decay": self.r.weight_decay}

    def identity(self) -> dict:
        cfg, r = self.cfg, self.r
        images = {"image_prob": cfg.image_prob, "image_batch": r.image_batch * self.layout.dp_size,
                  "image_data": None if cfg.image_data is None else os.path.abspath(cfg.image_data)}
        lora_id = {} if cfg.lora is None else {"lora": f"{cfg.lora} on {','.join(lora.parse_targets(cfg.lora_targets))}",
                                               "init": None if cfg.init is None else os.path.abspath(cfg.init)}
        controls = {"control": ",".join(self.r.controls)} if self.r.controls else {}
        return {**super().identity(), **(images if cfg.image_prob > 0 else {"image_prob": 0.0}), **lora_id, **controls}

    def build_loader(self, data_root: str):
        cfg, lay, r = self.cfg, self.layout, self.r
        return prepare.build_loader(self.model_cfg, data_root=data_root, size=r.size, num_frames=r.frames,
                                    batch=cfg.batch, seed=cfg.seed, num_workers=cfg.num_workers, dp_rank=lay.dp_rank,
                                    dp_size=lay.dp_size, image_prob=cfg.image_prob, image_data=cfg.image_data,
                                    image_batch=r.image_batch, buckets=cfg.aspect_buckets, controls=r.controls)

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, lay, r = self.cfg, self.layout, self.r
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        # the model is built on the meta device (adapters included), sharded there, allocated shard by
        # shard, then loaded (--init) or initialized module by module (training/sharded_init.py): no
        # GPU holds the full fp32 weights (56 GB for 14B), only its shards
        self.model = cm.build(self.model_cfg, device="meta", dtype=torch.float32, cp_group=lay.cp_group)
        self.model.set_context_parallel_group(lay.cp_group, overlap_chunks=cfg.cp_overlap_chunks)
        self.lora = None
        if cfg.lora is not None:  # adapters beside the base projections, everything else frozen
            rank, alpha = lora.parse_lora(cfg.lora)
            targets = lora.parse_targets(cfg.lora_targets)
            lora.add_lora(self.model, rank, alpha, targets)
            self.lora = {"rank": rank, "alpha": alpha, "targets": list(targets)}
        # checked against the plain network before anything is allocated (a mismatch costs nothing)
        init = None if cfg.init is None else checkpoint.matched_state_dict(
            checkpoint.meta_network(self.model_cfg), cfg.init)
        self.checkpointed_blocks = sac.apply(self.model, r.sac)
        parallel.shard_model(self.model, lay, self.compute_dtype)
        self.model.to_empty(device=lay.device)
        if init is not None:
            sharded_init.load(self.model, init, key=lora.base_name, skip=lora.is_adapter_key)
            del init
        else:
            shadow = cm.build(self.model_cfg, device="meta", dtype=torch.float32)
            if self.lora is not None:  # (peft draws random numbers for the adapters: before the seed)
                lora.add_lora(shadow, self.lora["rank"], self.lora["alpha"], targets)
            torch.manual_seed(cfg.seed)  # the stream cm.build would have drawn: the same weights
            sharded_init.initialize(self.model, shadow, lay.device, skip=lora.is_adapter_key)
        if self.lora is not None:
            lora.init_adapters(self.model, cfg.seed + 1)  # the same on every rank and layout
        self.optimizer = optim.adamw(self.model, r.lr, r.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, r.warmup, cfg.steps, cfg.final_lr_ratio))
        self.ema = EMA(self.model, sigma_rel=None if cfg.ema_decay is not None else cfg.ema_sigma_rel,
                       decay=cfg.ema_decay)
        cond = {"final": flow.ConditionFrames.final_stage(), "early": flow.ConditionFrames.early_stage(),
                "none": None}[cfg.condition]
        if cfg.timesteps == "official":
            sampler = flow.TimestepSampler.official() if cfg.shift is None else \
                flow.TimestepSampler(shift=cfg.shift)
        else:
            sampler = flow.TimestepSampler.paper(cfg.shift if cfg.shift is not None else shift_for_resolution(r.size))
        self.flow = flow.FlowMatching(timesteps=sampler, condition=cond, timestep_scale=self.model_cfg.timestep_scale,
                                      loss_scale=cfg.loss_scale)
        self.peak = peak_flops(lay.device, r.precision)
        self._flops_cache: dict = {}
        self._fixed_batch = None
        self._previews = None  # --sample-every (training/previews.py), made at the first preview

    # ------------------------------------------------------------------------------------------ batches
    def next_batch(self) -> dict:
        if self.cfg.overfit_batch and self._fixed_batch is not None:
            return self._fixed_batch
        batch = super().next_batch()
        if self.cfg.overfit_batch:
            self._fixed_batch = batch
        return batch

    def _flow_inputs(self, x0: Tensor, text: Tensor, sample_ids: list[int], step: int):
        """Per sample, from its own counter-seeded generator: flow inputs, then text dropout."""
        parts, keep = [], []
        for i, sid in enumerate(sample_ids):
            g = self.generator(step, sid)
            parts.append(self.flow.prepare(x0[i:i + 1], g))
            keep.append(float(torch.rand((), generator=g, dtype=torch.float64)) >= self.cfg.text_dropout)
        inputs = flow.FlowInputs(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                                    for f in dataclasses.fields(flow.FlowInputs)})
        mask = torch.tensor(keep, dtype=text.dtype, device=text.device)[:, None, None]
        return inputs, text * mask

    def _variant_inputs(self, batch: dict, rows: Tensor) -> dict:
        """The variant's own forward inputs carried by the batch (control latents, actions, views)."""
        names = getattr(self.model, "variant_inputs", ())
        return {k: rows_of(batch[k], rows, self.layout.device) for k in names if k in batch}

    def _control_latents(self, batch: dict, rows: Tensor, broadcast: bool) -> dict[str, Tensor]:
        """Transfer: {modality: control latents} of the batch rows: edge / blur computed from each clip
        with the official default presets (sampling/control.py, as at inference), depth / seg from the
        given videos the loader decoded at the clip's times; each encoded by the VAE like the clip."""
        from cosmos_models.sampling.control import blur_control, edge_control

        if "video" not in batch:
            raise ValueError("a Transfer model trains from the clips' pixels (its controls are made from them); "
                             "this batch holds cached latents only")
        out = {}
        for kind in self.r.controls:
            if kind in ("edge", "blur"):
                make = edge_control if kind == "edge" else blur_control
                videos = torch.stack([make(batch["video"][int(i)]) for i in rows])
            else:
                videos = batch["control_video"][kind][rows]
            out[kind] = self.latents({"video": videos}, torch.arange(len(rows)), broadcast)
        return out

    @contextlib.contextmanager
    def _context_parallel_off(self):
        """Image batches: the whole sequence on every rank (the DiT's cp group unset, and every
        UlyssesAttention a plain call); kept over the backward, which recomputes checkpointed blocks."""
        self.model.set_context_parallel_group(None)
        try:
            with ulysses.disabled():
                yield
        finally:
            self.model.set_context_parallel_group(self.layout.cp_group)

    # ------------------------------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        cfg, lay = self.cfg, self.layout
        step_key = 0 if cfg.overfit_batch else self.step
        start = time.perf_counter()
        batch = self.next_batch()
        is_image = bool(batch["is_image"])
        n_group = int(batch["index"].shape[0])
        rows = torch.arange(n_group)
        cp_on = lay.cp > 1 and not is_image
        if lay.cp > 1 and is_image and n_group >= lay.cp:
            rows = torch.tensor_split(rows, lay.cp)[lay.cp_rank]   # split the group's images over its cp ranks
            mode = "split"
        elif lay.cp > 1 and is_image:
            mode = "redundant"                                      # fewer images than cp ranks: all take all
        else:
            mode = "cp" if cp_on else "plain"
        # global index of each local sample in this step's global batch (the counter of its randomness)
        sample_ids = [int(j) * lay.dp_size + lay.dp_rank for j in rows]
        x0 = self.latents(batch, rows, broadcast=cp_on and "latent" not in batch)
        text = batch["text"][rows].to(lay.device, torch.float32)
        with self.range("flow_inputs"):
            inputs, text = self._flow_inputs(x0, text, sample_ids, step_key)
        extra = self._variant_inputs(batch, rows)
        if self.r.controls and "control_input" not in extra:  # (batches of latents may bring their own)
            extra["control_input"] = self._control_latents(batch, rows, broadcast=cp_on)
        # FSDP divides the reduced gradient by the mesh size (dp x cp); see parallel.py for the scales
        n_local = len(rows)
        backward_scale = {"plain": 1.0, "cp": float(lay.cp), "split": lay.cp * n_local / n_group,
                          "redundant": 1.0}[mode]
        log_weight = {"plain": 1.0, "cp": 1.0 / lay.cp, "split": n_local / n_group, "redundant": 1.0 / lay.cp}[mode]
        context = contextlib.nullcontext() if mode in ("plain", "cp") else self._context_parallel_off()
        with context:
            pred = self.model(inputs.x_t, inputs.timesteps, text, condition_video_input_mask=inputs.condition_mask,
                              fps=self.model_cfg.fps, **extra)
            with self.range("loss"):
                loss = self.flow.loss(pred, inputs)
            (loss * backward_scale).backward()
        by_t = self._loss_by_noise_level(pred.detach(), inputs, log_weight)
        lr = self.optimizer.param_groups[0]["lr"]
        reduced = (loss.detach().double() * log_weight).reshape(1)
        dist.all_reduce(reduced)
        loss_value = float(reduced) / lay.dp_size
        with self.range("optimizer"):
            grad_norm = optim.clip(self.model, cfg.grad_clip)
            # a non-finite loss or gradient (the same verdict on every rank: both are global) skips
            # the update: weights, AdamW moments and EMA stay; the schedule advances with the step
            skipped = not (math.isfinite(loss_value) and math.isfinite(grad_norm))
            if not skipped:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        beta = None
        if not skipped:
            with self.range("ema"):
                beta = self.ema.update(self.model)
        self.step += 1
        grid = tuple(x0.shape[2:])
        passes = len(extra["control_input"]) if isinstance(extra.get("control_input"), dict) else 1
        return {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm, "ema_beta": beta,
                "skipped": skipped, "loss_by_t": by_t,
                "kind": "image" if is_image else "video", "step_time_s": time.perf_counter() - start,
                "tokens": self._tokens(grid) * n_group * lay.dp_size,
                "flops": self._flops(grid, n_group if mode == "cp" else n_local, lay.cp if cp_on else 1,
                                     share=1.0 / lay.cp if mode == "redundant" else 1.0, control_passes=passes)}

    def _loss_by_noise_level(self, pred: Tensor, inputs, weight: float) -> list[tuple[float, float]]:
        """(sum of per-sample losses, samples) per t bucket (T_BUCKETS) over the whole step: every rank's
        samples all-reduced (`weight` counts a cp group's shared samples once), so rank 0 logs them all."""
        edges = torch.tensor(T_BUCKETS, dtype=torch.float64)
        sums = torch.zeros(2 * (len(T_BUCKETS) - 1), dtype=torch.float64)
        with torch.no_grad():
            for i in range(pred.shape[0]):
                one = flow.FlowInputs(**{f.name: getattr(inputs, f.name)[i:i + 1] for f in dataclasses.fields(flow.FlowInputs)})
                value = float(self.flow.loss(pred[i:i + 1], one))
                b = int(torch.searchsorted(edges, float(inputs.t[i]), right=True).clamp(1, len(T_BUCKETS) - 1)) - 1
                sums[2 * b] += value * weight
                sums[2 * b + 1] += weight
        dist.all_reduce(sums)
        return [(float(sums[2 * b]), float(sums[2 * b + 1])) for b in range(len(T_BUCKETS) - 1)]

    def _tokens(self, latent_grid: tuple[int, int, int]) -> int:
        c = self.model_cfg
        t, h, w = latent_grid
        return (t // c.patch_temporal) * (h // c.patch_spatial) * (w // c.patch_spatial)

    def _flops(self, latent_grid, batch: int, cp: int, share: float = 1.0, control_passes: int = 1) -> float | None:
        """This rank's useful FLOPs of the step (cosmos_models.nets.flops); `share` < 1 when
        the cp ranks all compute the same batch (only one copy is useful)."""
        if self.peak is None:  # no known peak here (CPU, unknown GPU): no MFU to report
            return None
        return self.step_flops(latent_grid, batch, cp, control_passes) * share

    def step_flops(self, latent_grid, batch: int, cp: int, control_passes: int = 1) -> float:
        key = (latent_grid, batch, cp, control_passes)
        if key not in self._flops_cache:
            self._flops_cache[key] = float(flops.count(self.model_cfg, batch=batch, latent=latent_grid,
                                                       text_len=self.model_cfg.text_len, cp=cp,
                                                       control_passes=control_passes)["total_train_step"])
        return self._flops_cache[key]

    # ------------------------------------------------------------------------------------------ logs
    def banner(self) -> str:
        r, lay = self.r, self.layout
        params = sum(p.numel() for p in self.model.parameters())
        return (f"cosmos train: {self.model_cfg.name} ({params / 1e6:.1f}M params) on {lay.describe()}, "
                f"{r.precision}, sac={r.sac}, clips {r.frames}x{r.size[0]}x{r.size[1]}"
                f"{' in aspect buckets' if self.cfg.aspect_buckets else ''} from {self.data_root}, "
                f"batch {self.cfg.batch}/dp group x {lay.dp_size}, lr {r.lr:.3g} (warmup {r.warmup}), "
                f"{self.ema.describe()}, steps {self.step}->{self.cfg.steps}, out {self.cfg.out}")

    def summarize(self, window: list[dict]) -> tuple[dict, str]:
        step_time = sum(w["step_time_s"] for w in window) / len(window)
        last = window[-1]
        record = {"step": last["step"], "loss": sum(w["loss"] for w in window) / len(window),
                  "losses": [w["loss"] for w in window], "lr": last["lr"], "grad_norm": last["grad_norm"],
                  "kind": last["kind"], "step_time_s": step_time,
                  "tokens_per_s": sum(w["tokens"] for w in window) / sum(w["step_time_s"] for w in window)}
        for b, (lo, hi) in enumerate(zip(T_BUCKETS, T_BUCKETS[1:])):
            total, count = (sum(w["loss_by_t"][b][k] for w in window if w.get("loss_by_t")) for k in (0, 1))
            if count > 0:
                record[f"loss_t{lo:.2f}-{hi:.2f}"] = total / count  # the mean loss of the samples with t in [lo, hi)
        if last.get("ema_beta") is not None:
            record["ema_beta"] = last["ema_beta"]
        record.update(peak_memory(self.layout.device))
        step_flops = [w["flops"] for w in window]
        if self.peak is not None and None not in step_flops:
            record["mfu"] = sum(step_flops) / sum(w["step_time_s"] for w in window) / self.peak
            record["peak_flops"] = self.peak
        mfu = f"  mfu {record['mfu']:.1%} of {self.peak / 1e12:.1f} TFLOP/s (H100 SXM bf16 dense)" \
            if "mfu" in record else ""
        line = (f"step {record['step']:>7d}  loss {record['loss']:.5f}  lr {record['lr']:.3g}  "
                f"grad {record['grad_norm']:.3g}  {step_time:.3f} s/step  {record['tokens_per_s']:.0f} tokens/s{mfu}")
        return record, line

    # ------------------------------------------------------------------------------------------ checkpoints
    def model_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=self._state_options())
        return {"model": model_sd, "optim": optim_sd, "ema": self.ema.shadow,
                "trainer": {"ema_updates": self.ema.updates, "scheduler": json.dumps(self.scheduler.state_dict())}}

    def restore(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=self._state_options(loading=True))
        self.ema.load_state_dict({"shadow": state["ema"], "updates": state["trainer"]["ema_updates"]})
        self.scheduler.load_state_dict(json.loads(state["trainer"]["scheduler"]))

    def _state_options(self, loading: bool = False):
        """A LoRA run checkpoints the adapters only: the frozen base comes from --init every time (so a
        load fills the adapters and leaves the base as built)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        frozen_out = self.lora is not None
        return StateDictOptions(ignore_frozen_params=frozen_out, strict=not (frozen_out and loading))

    def export(self) -> None:
        self.export_ema(os.path.join(self.cfg.out, "ema.safetensors"))

    def export_ema(self, path: str) -> None:
        """The EMA weights as a safetensors file with our (official) names (rank 0 writes; all gather),
        streamed a tensor at a time (no rank holds the whole model: 56 GB of host memory for 14B).
        A LoRA run writes its EMA adapters to <out>/lora.safetensors and the base with them merged here
        (the merge needs whole tensors)."""
        import torch.distributed as dist

        from cosmos_models.nets.checkpoint import write_weights, write_weights_streamed

        if self.lora is None:
            rank0 = not dist.is_initialized() or dist.get_rank() == 0
            write_weights_streamed(self.model_cfg, self.ema.iter_full(), path, write=rank0)
            return
        write_weights(self.model_cfg, self.ema_weights(save_adapter=True), path)

    def ema_weights(self, *, save_adapter: bool = False) -> dict[str, Tensor] | None:
        """The full EMA weights on rank 0 (a LoRA run's EMA adapters merged into the base; with
        save_adapter also written to <out>/lora.safetensors); None on other ranks. A collective."""
        averaged = self.ema.full_state_dict()
        if self.lora is None:
            return averaged
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if averaged is None:  # (ranks other than 0 took part in the gathers only)
            return None
        full = {**{k: v.float() for k, v in full.items()}, **averaged}
        if save_adapter:
            lora.save_adapter(os.path.join(self.cfg.out, "lora.safetensors"), averaged, self.lora, self.model_cfg.name)
        return lora.merged_state_dict(full, self.lora["rank"], self.lora["alpha"])

    def after_step(self) -> None:
        if self.cfg.sample_every and self.step % self.cfg.sample_every == 0:
            if self._previews is None:
                from cosmos_models.training.previews import Previews
                self._previews = Previews(self, prompts=self.cfg.sample_prompts, steps=self.cfg.sample_steps)
            self._previews.write(self.step)
