"""Flow-matching training of the Cosmos DiT: the `cosmos train` command and the `Trainer` behind it.

    cosmos train --config tiny --out runs/tiny --steps 20            # CPU, synthetic clips, < 1 min
    torchrun --nproc_per_node 8 -m cosmos_models.cli train --config predict2.5-2b --data clips/ \\
        --vae wan_vae/ --init official.pt --resolution 720p --cp 2 --sac predict2_2b_720_aggressive \\
        --out runs/2b --resume

One step: a batch of clips (cached latents, or videos encoded by the VAE) -> per sample a timestep,
conditioning frames and noise (cosmos_models/flow.py) -> DiT -> flow-matching loss -> backward ->
gradient clipping -> AdamW -> EMA. The recipe (DESIGN.md "Training"): AdamW β=(0.9, 0.999), weight
decay 1e-3, lr of the config (2^-14.5 for the 2B), linear warm-up (the config's 2000 steps, at most
a fifth of --steps so short runs train) then linear decay to --final-lr-ratio at --steps, gradient
clipping at 0.1 (official), text dropout 0.2 (zeroed embedding, for classifier-free guidance),
power EMA σ_rel 0.1 (official PowerEMATracker; cosmos_models/ema.py).

Data: --data is a clip folder (cosmos_models/data.py); clips without cached latents are encoded
online by --vae. The tiny configs default to 64x64, 9-frame clips and may omit --data: they train on
generated moving-shape clips whose latents are cached once through the tiny random WAN VAE, the VAE
`cosmos sample` builds for tiny configs (cosmos_models/train_data.py).

Parallelism (cosmos_models/parallel.py): FSDP2 per block then the root (hybrid sharding with
--hsdp-replicate), bf16 compute copies of fp32 weights with fp32 gradient reduction on GPU (fp32 on
CPU; --precision), Ulysses context parallelism over --cp ranks for video batches, selective
activation checkpointing per block (--sac, cosmos_models/sac.py).

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

Checkpoints (cosmos_models/checkpointing.py): every --save-every steps and at the end,
<out>/checkpoints/step_XXXXXX (DCP: model, optimizer, EMA, LR schedule, step, per-rank data-loader
position and RNG states, the run's config), written atomically; --resume continues from the newest.
The EMA weights are also exported to <out>/ema.safetensors (cosmos_models.save_checkpoint names) for
`cosmos sample --checkpoint <out>/ema.safetensors`.

Logs: every --log-every steps a line on stdout and a JSON record in <out>/train_log.jsonl (step,
loss, lr, grad norm, step time, tokens/s; on a GPU in bf16 also MFU: cosmos_models.flops useful FLOPs
per second over the H100 SXM bf16 dense peak, as cosmos_models.mfu); a tqdm bar on a terminal.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

import cosmos_models as cm
from cosmos_models._deps import console_write, progress_bar
from cosmos_kernels import ulysses
from cosmos_models import checkpointing, flops, flow, optim, parallel, sac, train_data
from cosmos_models.config import get_config
from cosmos_models.data import resolve_resolution
from cosmos_models.ema import EMA
from cosmos_models.vae import SPATIAL_COMPRESSION, latent_frames

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
CONDITIONS = ("final", "early", "none")
TIMESTEP_RECIPES = ("official", "paper")


@dataclass
class TrainConfig:
    """Everything a run depends on (the CLI fills it; saved with every checkpoint). None = a default
    derived from the model config (see the `cosmos train --help` texts)."""

    config: str = "tiny"
    out: str = "runs/tiny"
    data: str | None = None
    steps: int = 20
    batch: int = 1
    image_data: str | None = None
    image_prob: float = 0.0
    image_batch: int | None = None
    resolution: str | None = None
    frames: int | None = None
    lr: float | None = None
    warmup: int | None = None
    final_lr_ratio: float = 0.0
    weight_decay: float | None = None
    grad_clip: float = optim.GRAD_CLIP
    ema_sigma_rel: float | None = 0.1
    ema_decay: float | None = None
    cp: int = 1
    hsdp_replicate: int = 1
    sac: str | None = None
    precision: str | None = None
    device: str | None = None
    kernel_backend: str | None = None
    seed: int = 0
    save_every: int = 1000
    keep_last: int = 0
    log_every: int = 10
    resume: bool = False
    init: str | None = None
    vae: str | None = None
    cache_latents: bool = False
    text_dropout: float = 0.2
    condition: str = "final"
    timesteps: str = "official"
    shift: float | None = None
    num_workers: int = 0
    overfit_batch: bool = False
    synthetic_clips: int = 8
    dist_timeout: float = 600.0
    progress: bool = True


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"--{name.replace('_', '-')} must be an int >= {minimum}, got {value!r}")


def _resolution(cfg: TrainConfig, model_cfg) -> tuple[int, int]:
    spec = cfg.resolution
    if spec is None:
        return tuple(model_cfg.resolution)
    try:
        return resolve_resolution(spec)
    except ValueError:
        raise ValueError(f"--resolution {spec!r}: expected 256p, 480p, 720p or HxW (e.g. 704x1280)") from None


def shift_for_resolution(size: tuple[int, int]) -> float:
    """The paper's timestep shift β: 1 at 256p (320x192) up to 5 at 720p (1280x704), linear in the
    pixel count between them (480p gets ~2.7), clamped outside."""
    low, high = 192 * 320, 704 * 1280
    frac = (size[0] * size[1] - low) / (high - low)
    return 1.0 + 4.0 * min(1.0, max(0.0, frac))


@dataclass(frozen=True)
class Resolved:
    """TrainConfig with the defaults filled from the model config, validated."""

    model: object
    size: tuple[int, int]
    frames: int
    latent_t: int
    lr: float
    warmup: int
    weight_decay: float
    image_batch: int
    sac: str
    precision: str


def resolve(cfg: TrainConfig, device_type: str) -> Resolved:
    model_cfg = get_config(cfg.config)
    size = _resolution(cfg, model_cfg)
    step = SPATIAL_COMPRESSION * model_cfg.patch_spatial
    if size[0] % step or size[1] % step:
        raise ValueError(f"--resolution {size[0]}x{size[1]}: height and width must be multiples of {step} "
                         f"(VAE {SPATIAL_COMPRESSION}x, patch {model_cfg.patch_spatial})")
    frames = model_cfg.num_frames if cfg.frames is None else cfg.frames
    latent_t = latent_frames(frames)
    for name in ("steps", "batch", "cp", "hsdp_replicate", "log_every", "synthetic_clips"):
        _positive_int(name, getattr(cfg, name))
    for name in ("save_every", "keep_last", "num_workers", "seed"):
        _positive_int(name, getattr(cfg, name), 0)
    if cfg.cp > 1:
        if model_cfg.num_heads % cfg.cp:
            raise ValueError(f"--cp {cfg.cp} must divide the {model_cfg.num_heads} attention heads of {model_cfg.name}")
        if latent_t > 1 and latent_t % cfg.cp:
            raise ValueError(f"--cp {cfg.cp} must divide the {latent_t} latent frames of {frames}-frame clips "
                             f"(pick --frames 4k+1 with k+1 a multiple of {cfg.cp})")
    if not 0.0 <= cfg.image_prob <= 1.0:
        raise ValueError(f"--image-prob must be in [0, 1], got {cfg.image_prob}")
    image_batch = cfg.image_batch if cfg.image_batch is not None else cfg.batch * cfg.cp
    _positive_int("image_batch", image_batch)
    if not 0.0 <= cfg.text_dropout < 1.0:
        raise ValueError(f"--text-dropout must be in [0, 1), got {cfg.text_dropout}")
    if cfg.condition not in CONDITIONS:
        raise ValueError(f"--condition {cfg.condition!r}: expected one of {CONDITIONS}")
    if cfg.timesteps not in TIMESTEP_RECIPES:
        raise ValueError(f"--timesteps {cfg.timesteps!r}: expected one of {TIMESTEP_RECIPES}")
    if not (cfg.grad_clip >= 0 and math.isfinite(cfg.grad_clip)):
        raise ValueError(f"--grad-clip must be >= 0 (0: no clipping), got {cfg.grad_clip}")
    lr = model_cfg.lr if cfg.lr is None else cfg.lr
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"--lr must be > 0, got {lr}")
    warmup = min(model_cfg.warmup_steps, max(1, cfg.steps // 5)) if cfg.warmup is None else cfg.warmup
    _positive_int("warmup", warmup, 0)
    if not 0.0 <= cfg.final_lr_ratio <= 1.0:
        raise ValueError(f"--final-lr-ratio must be in [0, 1], got {cfg.final_lr_ratio}")
    weight_decay = model_cfg.weight_decay if cfg.weight_decay is None else cfg.weight_decay
    policy = cfg.sac or ("none" if model_cfg.name.startswith("tiny") else "predict2_2b_720_aggressive")
    sac.check_policy(policy)
    precision = cfg.precision or ("bf16" if device_type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: expected one of {sorted(PRECISIONS)}")
    if cfg.data is None and not model_cfg.name.startswith("tiny"):
        raise ValueError(f"--data is required for {model_cfg.name} (only tiny configs generate their own clips)")
    return Resolved(model_cfg, size, frames, latent_t, lr, warmup, weight_decay, image_batch, policy, precision)


def lr_factor(step: int, warmup: int, total: int, final_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to final_ratio at `total` (step 0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    frac = min(1.0, (step - warmup) / (total - warmup))
    return 1.0 - (1.0 - final_ratio) * frac


def sample_seed(seed: int, step: int, sample: int) -> int:
    """63-bit seed of (run seed, step, global sample index): the counter behind every random draw."""
    mixed = np.random.SeedSequence([seed & 0xFFFFFFFF, step & 0xFFFFFFFF, step >> 32, sample & 0xFFFFFFFF, 0xC05])
    return int(mixed.generate_state(2, np.uint64)[0] >> 1)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The peak MFU is measured against (the project's convention: H100 SXM bf16 dense, on any GPU;
    logged with every MFU). None on CPU or in fp32: no meaningful MFU."""
    if device.type != "cuda" or precision != "bf16":
        return None
    from cosmos_models.mfu import H100_SXM_BF16_DENSE
    return H100_SXM_BF16_DENSE


class Trainer:
    """A training run. `Trainer(cfg).train()` runs cfg.steps steps (resuming when cfg.resume) and
    returns [(step, loss)] of the steps it ran; `close()` releases the process group it made."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.layout = parallel.init(cfg.device, cfg.cp, cfg.hsdp_replicate, cfg.dist_timeout)
        try:
            self._setup()
        except BaseException:
            parallel.close(self.layout)
            raise

    # ------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg, lay = self.cfg, self.layout
        self.r = r = resolve(cfg, lay.device.type)
        self.model_cfg = r.model
        self.is_main = lay.rank == 0
        self.ckpt_root = os.path.join(cfg.out, "checkpoints")
        if self.is_main:
            os.makedirs(cfg.out, exist_ok=True)
            checkpointing.remove_partial(self.ckpt_root)
        existing = checkpointing.find_latest(self.ckpt_root)
        if existing is not None and not cfg.resume:
            raise FileExistsError(f"{self.ckpt_root} already holds checkpoints (newest {os.path.basename(existing)}); "
                                  "pass --resume to continue that run, or choose another --out")
        self.data_root = cfg.data
        if self.data_root is None:
            self.data_root = os.path.join(cfg.out, "data")
            train_data.prepare_synthetic(self.data_root, self.model_cfg, num_frames=r.frames, size=r.size,
                                         clips=cfg.synthetic_clips, vae_dir=os.path.join(cfg.out, "vae"),
                                         device=torch.device("cpu"))
        self.vae = None
        if cfg.cache_latents:
            self._vae()
            train_data.cache_latents(self.data_root, self.vae, num_frames=r.frames, fps=self.model_cfg.fps,
                                     size=r.size, rank=lay.rank, world=lay.world, device=lay.device)
            dist.barrier()
        self.loader = train_data.build_loader(cfg, self.model_cfg, size=r.size, num_frames=r.frames,
                                              image_batch=r.image_batch, dp_rank=lay.dp_rank, dp_size=lay.dp_size,
                                              data_root=self.data_root)

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = cm.build(self.model_cfg, device=lay.device, dtype=torch.float32,
                              kernel_backend=cfg.kernel_backend, cp_group=lay.cp_group)
        if cfg.init is not None:
            cm.load_checkpoint(self.model, cfg.init)
        self.checkpointed_blocks = sac.apply(self.model, r.sac)
        compute_dtype = PRECISIONS[r.precision]
        parallel.shard_model(self.model, lay, compute_dtype if compute_dtype != torch.float32 else None)
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
        self.flow = flow.FlowMatching(timesteps=sampler, condition=cond, timestep_scale=self.model_cfg.timestep_scale)
        self.step = 0
        self.peak = peak_flops(lay.device, r.precision)
        self._flops_cache: dict = {}
        self._batch_iter = None
        self._fixed_batch = None

    def _vae(self):
        if self.vae is None:
            dtype = torch.bfloat16 if self.layout.device.type == "cuda" else torch.float32
            self.vae = train_data.build_vae(self.cfg.vae, self.model_cfg, self.layout.device, dtype)
        return self.vae

    # ------------------------------------------------------------------------------------------ batches
    def _next_batch(self) -> dict:
        if self.cfg.overfit_batch and self._fixed_batch is not None:
            return self._fixed_batch
        if self._batch_iter is None:
            self._batch_iter = iter(self.loader)
        batch = next(self._batch_iter)
        if self.cfg.overfit_batch:
            self._fixed_batch = batch
        return batch

    def _latents(self, batch: dict, rows: Tensor, broadcast: bool) -> Tensor:
        """Latents of the batch rows `rows` on the device: cached, or encoded by the VAE (under CP
        by the group's cp rank 0 and broadcast, so every rank of the group sees the same bits)."""
        lay = self.layout
        if "latent" in batch:
            return batch["latent"][rows].to(lay.device, torch.float32)
        video = batch["video"][rows]
        if not broadcast:
            return self._vae().encode(video.to(lay.device)).float()
        t = 1 + (video.shape[2] - 1) // 4
        shape = (len(rows), self.model_cfg.latent_channels, t, video.shape[3] // SPATIAL_COMPRESSION,
                 video.shape[4] // SPATIAL_COMPRESSION)
        if lay.cp_rank == 0:
            latents = self._vae().encode(video.to(lay.device)).float().contiguous()
        else:
            latents = torch.empty(shape, device=lay.device, dtype=torch.float32)
        dist.broadcast(latents, src=lay.cp_source, group=lay.cp_group)
        return latents

    def _flow_inputs(self, x0: Tensor, text: Tensor, sample_ids: list[int], step: int):
        """Per sample, from its own counter-seeded generator: flow inputs, then text dropout."""
        parts, keep = [], []
        for i, sid in enumerate(sample_ids):
            g = torch.Generator().manual_seed(sample_seed(self.cfg.seed, step, sid))
            parts.append(self.flow.prepare(x0[i:i + 1], g))
            keep.append(float(torch.rand((), generator=g, dtype=torch.float64)) >= self.cfg.text_dropout)
        inputs = flow.FlowInputs(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                                    for f in dataclasses.fields(flow.FlowInputs)})
        mask = torch.tensor(keep, dtype=text.dtype, device=text.device)[:, None, None]
        return inputs, text * mask

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
        batch = self._next_batch()
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
        x0 = self._latents(batch, rows, broadcast=cp_on and "latent" not in batch)
        text = batch["text"][rows].to(lay.device, torch.float32)
        inputs, text = self._flow_inputs(x0, text, sample_ids, step_key)
        # FSDP divides the reduced gradient by the mesh size (dp x cp); see parallel.py for the scales
        n_local = len(rows)
        backward_scale = {"plain": 1.0, "cp": float(lay.cp), "split": lay.cp * n_local / n_group,
                          "redundant": 1.0}[mode]
        log_weight = {"plain": 1.0, "cp": 1.0 / lay.cp, "split": n_local / n_group, "redundant": 1.0 / lay.cp}[mode]
        context = contextlib.nullcontext() if mode in ("plain", "cp") else self._context_parallel_off()
        with context:
            pred = self.model(inputs.x_t, inputs.timesteps, text, condition_video_input_mask=inputs.condition_mask,
                              fps=self.model_cfg.fps)
            loss = self.flow.loss(pred, inputs)
            (loss * backward_scale).backward()
        lr = self.optimizer.param_groups[0]["lr"]
        grad_norm = optim.clip_and_step(self.model, self.optimizer, cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.scheduler.step()
        beta = self.ema.update(self.model)
        reduced = (loss.detach().double() * log_weight).reshape(1)
        dist.all_reduce(reduced)
        loss_value = float(reduced) / lay.dp_size
        self.step += 1
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"step {self.step}: the loss is {loss_value}; stopping (the last checkpoint is "
                                     f"{checkpointing.find_latest(self.ckpt_root)})")
        grid = tuple(x0.shape[2:])
        return {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm), "ema_beta": beta,
                "kind": "image" if is_image else "video", "step_time_s": time.perf_counter() - start,
                "tokens": self._tokens(grid) * n_group * lay.dp_size,
                "flops": self._flops(grid, n_group if mode == "cp" else n_local, lay.cp if cp_on else 1,
                                     share=1.0 / lay.cp if mode == "redundant" else 1.0)}

    def _tokens(self, latent_grid: tuple[int, int, int]) -> int:
        c = self.model_cfg
        t, h, w = latent_grid
        return (t // c.patch_temporal) * (h // c.patch_spatial) * (w // c.patch_spatial)

    def _flops(self, latent_grid, batch: int, cp: int, share: float = 1.0) -> float | None:
        """This rank's useful FLOPs of the step (cosmos_models.flops); `share` < 1 when
        the cp ranks all compute the same batch (only one copy is useful)."""
        if self.peak is None:  # no known peak here (CPU, unknown GPU): no MFU to report
            return None
        key = (latent_grid, batch, cp)
        if key not in self._flops_cache:
            self._flops_cache[key] = float(flops.count(self.model_cfg, batch=batch, latent=latent_grid,
                                                       text_len=self.model_cfg.text_len, cp=cp)["total_train_step"])
        return self._flops_cache[key] * share

    # ------------------------------------------------------------------------------------------ loop
    def train(self) -> list[tuple[int, float]]:
        cfg = self.cfg
        if cfg.resume:
            self.load()
        if self.is_main:
            self._print(self._banner())
        losses: list[tuple[int, float]] = []
        window: list[dict] = []
        bar = self._progress_bar()
        try:
            while self.step < cfg.steps:
                record = self.train_step()
                losses.append((record["step"], record["loss"]))
                window.append(record)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                if len(window) == cfg.log_every or self.step == cfg.steps:
                    self._log(window)
                    window = []
                if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        return losses

    def _progress_bar(self):
        if not (self.is_main and self.cfg.progress and sys.stderr.isatty()):
            return None
        return progress_bar(total=self.cfg.steps, initial=self.step, desc="train", dynamic_ncols=True)

    def _print(self, line: str) -> None:
        console_write(line)  # above an open progress bar; a plain print otherwise

    def _banner(self) -> str:
        r, lay = self.r, self.layout
        params = sum(p.numel() for p in self.model.parameters())
        return (f"cosmos train: {self.model_cfg.name} ({params / 1e6:.1f}M params) on {lay.describe()}, "
                f"{r.precision}, sac={r.sac}, clips {r.frames}x{r.size[0]}x{r.size[1]} from {self.data_root}, "
                f"batch {self.cfg.batch}/dp group x {lay.dp_size}, lr {r.lr:.3g} (warmup {r.warmup}), "
                f"{self.ema.describe()}, steps {self.step}->{self.cfg.steps}, out {self.cfg.out}")

    def _log(self, window: list[dict]) -> None:
        step_time = sum(w["step_time_s"] for w in window) / len(window)
        last = window[-1]
        record = {"step": last["step"], "loss": sum(w["loss"] for w in window) / len(window),
                  "losses": [w["loss"] for w in window], "lr": last["lr"], "grad_norm": last["grad_norm"],
                  "kind": last["kind"], "step_time_s": step_time,
                  "tokens_per_s": sum(w["tokens"] for w in window) / sum(w["step_time_s"] for w in window)}
        step_flops = [w["flops"] for w in window]
        if self.peak is not None and None not in step_flops:
            record["mfu"] = sum(step_flops) / sum(w["step_time_s"] for w in window) / self.peak
            record["peak_flops"] = self.peak
        if not self.is_main:
            return
        with open(os.path.join(self.cfg.out, "train_log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        mfu = f"  mfu {record['mfu']:.1%} of {self.peak / 1e12:.1f} TFLOP/s (H100 SXM bf16 dense)" \
            if "mfu" in record else ""
        self._print(f"step {record['step']:>7d}  loss {record['loss']:.5f}  lr {record['lr']:.3g}  "
                    f"grad {record['grad_norm']:.3g}  {step_time:.3f} s/step  "
                    f"{record['tokens_per_s']:.0f} tokens/s{mfu}")

    # ------------------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        rank_state = {"loader": json.dumps(self.loader.state_dict()), "torch_rng": torch.get_rng_state()}
        if self.layout.device.type == "cuda":
            rank_state["cuda_rng"] = torch.cuda.get_rng_state(self.layout.device)
        return {"model": model_sd, "optim": optim_sd, "ema": self.ema.shadow,
                "trainer": {"step": self.step, "ema_updates": self.ema.updates,
                            "scheduler": json.dumps(self.scheduler.state_dict()),
                            "config": json.dumps(dataclasses.asdict(self.cfg)), "world": self.layout.world},
                checkpointing.rank_state_key(self.layout.rank): rank_state}

    def save(self) -> str:
        path = checkpointing.save(self.ckpt_root, self.step, self._state(), keep_last=self.cfg.keep_last,
                                  info={"step": self.step, "config": dataclasses.asdict(self.cfg),
                                        "world": self.layout.world, "model": self.model_cfg.name})
        self.export_ema(os.path.join(self.cfg.out, "ema.safetensors"))
        return path

    def export_ema(self, path: str) -> None:
        """The EMA weights as a safetensors file with our (official) names (rank 0 writes; all gather)."""
        weights = self.ema.full_state_dict()
        if weights is None:
            return
        with torch.device("meta"):
            holder = cm.model_class(self.model_cfg)(self.model_cfg)
        holder.load_state_dict(weights, assign=True, strict=True)
        tmp = f"{path}.tmp.{os.getpid()}"
        cm.save_checkpoint(holder, tmp)
        os.replace(tmp, path)

    def load(self, path: str | None = None) -> bool:
        """Restore the newest checkpoint (or `path`); False when there is none (a fresh start)."""
        from torch.distributed.checkpoint.state_dict import set_state_dict

        path = path or checkpointing.find_latest(self.ckpt_root)
        if path is None:
            if self.is_main:
                self._print(f"cosmos train: --resume: no checkpoint under {self.ckpt_root}; starting at step 0")
            return False
        info = checkpointing.read_info(path)
        if info.get("world", self.layout.world) != self.layout.world:
            raise ValueError(f"{path} was written by {info['world']} processes, this run has {self.layout.world}: "
                             "the data order and per-rank states cannot continue exactly; resume with the same "
                             "number of processes")
        self._warn_config_changes(info.get("config", {}))
        state = self._state()
        checkpointing.load(path, state)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        trainer = state["trainer"]
        self.ema.load_state_dict({"shadow": state["ema"], "updates": trainer["ema_updates"]})
        self.scheduler.load_state_dict(json.loads(trainer["scheduler"]))
        self.step = int(trainer["step"])
        mine = state[checkpointing.rank_state_key(self.layout.rank)]
        self.loader.load_state_dict(json.loads(mine["loader"]))
        self._batch_iter = None
        torch.set_rng_state(mine["torch_rng"])
        if "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"], self.layout.device)
        if self.is_main:
            self._print(f"cosmos train: resumed from {path} at step {self.step}")
        return True

    def _warn_config_changes(self, saved: dict) -> None:
        ignore = {"resume", "steps", "save_every", "keep_last", "log_every", "progress", "dist_timeout",
                  "num_workers", "out", "device"}
        changed = {k: (saved[k], v) for k, v in dataclasses.asdict(self.cfg).items()
                   if k in saved and k not in ignore and saved[k] != v}
        if changed and self.is_main:
            listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
            self._print(f"cosmos train: WARNING: resuming with settings that differ from the checkpoint's ({listed}); "
                        "the continuation is not the run that was interrupted")

    def close(self, *, barrier: bool = False) -> None:
        parallel.close(self.layout, barrier=barrier)


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    d = TrainConfig()
    a = parser.add_argument
    a("--config", default=d.config, help=f"model config ({', '.join(cm.configs())})")
    a("--data", default=None, help="folder of clips (videos + <name>.pt text embeddings, optional <name>.latent.pt); "
                                   "tiny configs without it train on generated clips under --out/data")
    a("--out", default=d.out, help="run folder: checkpoints/, train_log.jsonl, ema.safetensors")
    a("--steps", type=int, default=d.steps, help="total optimizer steps")
    a("--batch", type=int, default=d.batch, help="video clips per data-parallel group per step")
    a("--image-data", default=None, help="folder of images for joint training (default: the videos' first frames)")
    a("--image-prob", type=float, default=d.image_prob, help="fraction of steps that are image batches (0: none)")
    a("--image-batch", type=int, default=None, help="images per data-parallel group (default: --batch x --cp)")
    a("--resolution", default=None, help="256p, 480p, 720p or HxW (default: the config's)")
    a("--frames", type=int, default=None, help="pixel frames per clip, 4k+1 (default: the config's)")
    a("--lr", type=float, default=None, help="peak learning rate (default: the config's)")
    a("--warmup", type=int, default=None, help="warm-up steps (default: the config's, at most --steps/5)")
    a("--final-lr-ratio", type=float, default=d.final_lr_ratio, help="lr at the last step / peak lr")
    a("--weight-decay", type=float, default=None, help="AdamW weight decay (default: the config's, 1e-3)")
    a("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (official 0.1; 0: off)")
    a("--ema-sigma-rel", type=float, default=d.ema_sigma_rel, help="power EMA width (official 0.1)")
    a("--ema-decay", type=float, default=None, help="constant EMA decay instead of the power EMA (e.g. 0.9999)")
    a("--cp", type=int, default=d.cp, help="context-parallel (Ulysses) group size")
    a("--hsdp-replicate", type=int, default=d.hsdp_replicate, help="FSDP replicas (hybrid sharding); 1: full shard")
    a("--sac", default=None, choices=sorted(sac.POLICIES),
      help="activation checkpointing policy (default: none for tiny configs, else predict2_2b_720_aggressive)")
    a("--precision", default=None, choices=sorted(PRECISIONS), help="compute dtype (default: bf16 on GPU, fp32 on CPU)")
    a("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a("--kernel-backend", default=None, choices=("triton", "cuda", "torch"),
      help="run every kernel on this backend (default: the dispatch default)")
    a("--seed", type=int, default=d.seed)
    a("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (and always at the end)")
    a("--keep-last", type=int, default=d.keep_last, help="keep only the newest N checkpoints (0: all)")
    a("--log-every", type=int, default=d.log_every, help="log every N steps")
    a("--resume", action="store_true", help="continue from the newest checkpoint under --out (if any)")
    a("--init", default=None, help="initial weights (official, diffusers or ours) instead of random init")
    a("--vae", default=None, help="diffusers AutoencoderKLWan folder for clips without cached latents "
                                  "(tiny configs: the random tiny VAE)")
    a("--cache-latents", action="store_true", help="encode and cache missing latents of --data before training")
    a("--text-dropout", type=float, default=d.text_dropout, help="probability of a zeroed text embedding (CFG)")
    a("--condition", default=d.condition, choices=CONDITIONS,
      help="conditioning frames: final stage (0/1/2 latent frames), early (1 or 5 pixel frames), none")
    a("--timesteps", default=d.timesteps, choices=TIMESTEP_RECIPES,
      help="official (shift 5, 1000-step grid) or paper (shift by resolution, 5%% from the top 2%%)")
    a("--shift", type=float, default=None, help="timestep shift β (default: per --timesteps)")
    a("--num-workers", type=int, default=d.num_workers, help="data-loader worker processes")
    a("--overfit-one-batch", dest="overfit_batch", action="store_true",
      help="debug: train on the first batch with the same noise every step")
    a("--synthetic-clips", type=int, default=d.synthetic_clips, help="clips to generate when --data is omitted")
    a("--dist-timeout", type=float, default=d.dist_timeout, help="collective timeout in seconds")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        trainer = Trainer(cfg)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:  # a bad setting, not a crash
        print(f"cosmos train: error: {exc}", file=sys.stderr)
        return 2
    try:
        trainer.train()
    except BaseException:
        trainer.close()
        raise
    trainer.close(barrier=True)
    return 0


if __name__ == "__main__":
    from cosmos_models.cli import main
    sys.exit(main(["train", *sys.argv[1:]]))
