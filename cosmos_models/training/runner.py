"""The run scaffold that training (trainer.py) and distillation (distill/distiller.py) share.

A `Run` is a run folder, a process layout, the data it reads, a loop of steps, its logs and its
checkpoints; a subclass says what one step is and which networks and optimizers it keeps:

    Run(cfg, batches=None)
      resolve()            the settings every run shares, validated (RunShape); subclasses extend it
      setup()              [subclass] build networks, optimizers, EMA
      train_step() -> dict [subclass] one step; the record it returns is logged ("step", "loss", ...)
      summarize(window)    [subclass] one log record and console line of the last --log-every steps
      model_state()        [subclass] the checkpoint entries of its networks/optimizers/EMA
      restore(state)       [subclass] put them back after a load
      export()             [subclass] weight files for `cosmos sample` (rank 0 writes)
      train()              resume (--resume), then steps until cfg.steps, logging and saving

What the runner does for every run:
- process layout (cosmos_models.training.parallel): one process, or torchrun's, in a replicate x
  shard x cp grid; the process group is released by `close()`;
- kernels: every step runs inside `cosmos_kernels.use_backend(cfg.kernel_backend)` (--kernel-backend);
- the run folder: refuses checkpoints of another run unless --resume, removes partial saves;
- data: the folder given by --data (cached latents, or videos encoded by the VAE, broadcast over a
  cp group so its ranks see the same bits), the tiny configs' synthetic clip set without it, latent
  caching (--cache-latents), or a batch source passed in (`batches=`: the MFU measurement's random
  latents); sample i of step s draws from a generator seeded by (seed, s, i) (`sample_seed`);
- logs: <out>/<name>_log.jsonl and a line on stdout every --log-every steps, a progress bar on a terminal;
- checkpoints (cosmos_models.training.checkpointing): every --save-every steps and at the end, atomic
  DCP folders holding the subclass's state plus the step, the config, the world size and, per rank,
  the data position and every RNG state (torch, CUDA): a resumed run is the uninterrupted one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from cosmos_kernels import dispatch
from cosmos_models._deps import console_write, progress_bar
from cosmos_models.data import prepare
from cosmos_models.data.clips import resolve_resolution
from cosmos_models.nets.config import DiTConfig, get_config
from cosmos_models.nets.vae import SPATIAL_COMPRESSION, latent_frames
from cosmos_models.training import checkpointing, parallel, sac

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class RunConfig:
    """The settings every run has (the shared CLI flags of `cosmos train` and `cosmos distill`).
    None = a default derived from the model config. Saved with every checkpoint."""

    config: str | None = "tiny"
    out: str = "runs/run"
    data: str | None = None
    steps: int = 20
    batch: int = 1
    resolution: str | None = None
    frames: int | None = None
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
    vae: str | None = None
    cache_latents: bool = False
    num_workers: int = 0
    synthetic_clips: int = 8
    dist_timeout: float = 600.0
    progress: bool = True


RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))
# settings a resumed run may change without changing what it computes
HARMLESS_CHANGES = {"resume", "steps", "save_every", "keep_last", "log_every", "progress", "dist_timeout",
                    "num_workers", "out", "device"}


def positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"--{name.replace('_', '-')} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class RunShape:
    """RunConfig with the defaults filled from the model config, validated."""

    model: DiTConfig
    size: tuple[int, int]
    frames: int
    latent_t: int
    sac: str
    precision: str


def resolve_run(cfg: RunConfig, device_type: str, *, needs_data: bool = True) -> RunShape:
    model_cfg = get_config(cfg.config)
    if cfg.resolution is None:
        size = tuple(model_cfg.resolution)
    else:
        try:
            size = resolve_resolution(cfg.resolution)
        except ValueError:
            raise ValueError(f"--resolution {cfg.resolution!r}: expected 256p, 480p, 720p or HxW (e.g. 704x1280)") \
                from None
    step = SPATIAL_COMPRESSION * model_cfg.patch_spatial
    if size[0] % step or size[1] % step:
        raise ValueError(f"--resolution {size[0]}x{size[1]}: height and width must be multiples of {step} "
                         f"(VAE {SPATIAL_COMPRESSION}x, patch {model_cfg.patch_spatial})")
    frames = model_cfg.num_frames if cfg.frames is None else cfg.frames
    latent_t = latent_frames(frames)
    for name in ("steps", "batch", "cp", "hsdp_replicate", "log_every", "synthetic_clips"):
        positive_int(name, getattr(cfg, name))
    for name in ("save_every", "keep_last", "num_workers", "seed"):
        positive_int(name, getattr(cfg, name), 0)
    if cfg.cp > 1:
        if model_cfg.num_heads % cfg.cp:
            raise ValueError(f"--cp {cfg.cp} must divide the {model_cfg.num_heads} attention heads of {model_cfg.name}")
        if latent_t > 1 and latent_t % cfg.cp:
            raise ValueError(f"--cp {cfg.cp} must divide the {latent_t} latent frames of {frames}-frame clips "
                             f"(pick --frames 4k+1 with k+1 a multiple of {cfg.cp})")
    policy = cfg.sac or ("none" if model_cfg.name.startswith("tiny") else "predict2_2b_720_aggressive")
    sac.check_policy(policy)
    precision = cfg.precision or ("bf16" if device_type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: expected one of {sorted(PRECISIONS)}")
    if cfg.kernel_backend is not None:
        dispatch.parse_spec(cfg.kernel_backend, "--kernel-backend")
    if needs_data and cfg.data is None and not model_cfg.name.startswith("tiny"):
        raise ValueError(f"--data is required for {model_cfg.name} (only tiny configs generate their own clips)")
    return RunShape(model_cfg, size, frames, latent_t, policy, precision)


def sample_seed(seed: int, step: int, sample: int) -> int:
    """63-bit seed of (run seed, step, global sample index): the counter behind every random draw."""
    mixed = np.random.SeedSequence([seed & 0xFFFFFFFF, step & 0xFFFFFFFF, step >> 32, sample & 0xFFFFFFFF, 0xC05])
    return int(mixed.generate_state(2, np.uint64)[0] >> 1)


def rows_of(value, rows: Tensor, device: torch.device):
    """The batch entry `value` (a tensor with the batch first, a dict of them, or a plain value)
    for the batch rows `rows`, on `device`."""
    if isinstance(value, Tensor):
        return value[rows].to(device)
    if isinstance(value, dict):
        return {k: rows_of(v, rows, device) for k, v in value.items()}
    return value


class Run:
    """See the module docstring. `Run(cfg).train()` returns [(step, loss)] of the steps it ran."""

    name = "run"  # "train" / "distill": messages and <out>/<name>_log.jsonl

    def __init__(self, cfg: RunConfig, *, batches=None):
        self.cfg = cfg
        self.layout = parallel.init(cfg.device, cfg.cp, cfg.hsdp_replicate, cfg.dist_timeout)
        try:
            with self.kernels():
                self.shape = self.resolve(needs_data=batches is None)
                self.model_cfg = self.shape.model
                self.is_main = self.layout.rank == 0
                self.ckpt_root = os.path.join(cfg.out, "checkpoints")
                self._vae = None
                self._open_run_folder()
                self.data_root = None
                self.loader = batches if batches is not None else self._prepare_data()
                self.step = 0
                self._batch_iter = None
                self.ranges = None  # named ranges around parts of a step (cosmos_models.perf.ranges), if set
                self.setup()
        except BaseException:
            parallel.close(self.layout)
            raise

    # ------------------------------------------------------------------------------------------ hooks
    def resolve(self, *, needs_data: bool = True) -> RunShape:
        return resolve_run(self.cfg, self.layout.device.type, needs_data=needs_data)

    def setup(self) -> None:
        raise NotImplementedError

    def train_step(self) -> dict:
        raise NotImplementedError

    def summarize(self, window: list[dict]) -> tuple[dict, str]:
        raise NotImplementedError

    def model_state(self) -> dict:
        raise NotImplementedError

    def restore(self, state: dict) -> None:
        raise NotImplementedError

    def export(self) -> None:
        pass

    def banner(self) -> str:
        return f"cosmos {self.name}: {self.model_cfg.name} on {self.layout.describe()}"

    def build_loader(self, data_root: str):
        """The batch source over data_root (the trainer adds joint image batches)."""
        return prepare.build_loader(self.model_cfg, data_root=data_root, size=self.shape.size,
                                    num_frames=self.shape.frames, batch=self.cfg.batch, seed=self.cfg.seed,
                                    num_workers=self.cfg.num_workers, dp_rank=self.layout.dp_rank,
                                    dp_size=self.layout.dp_size)

    # ------------------------------------------------------------------------------------------ set-up
    def kernels(self):
        """The kernel backends of this run (--kernel-backend), process-wide while inside."""
        return dispatch.use_backend(self.cfg.kernel_backend)

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The compute copy FSDP casts the fp32 weights to (None: compute in fp32)."""
        dtype = PRECISIONS[self.shape.precision]
        return None if dtype == torch.float32 else dtype

    def _open_run_folder(self) -> None:
        cfg = self.cfg
        if self.is_main:
            os.makedirs(cfg.out, exist_ok=True)
            checkpointing.remove_partial(self.ckpt_root)
        existing = checkpointing.find_latest(self.ckpt_root)
        if existing is not None and not cfg.resume:
            raise FileExistsError(f"{self.ckpt_root} already holds checkpoints (newest {os.path.basename(existing)}); "
                                  "pass --resume to continue that run, or choose another --out")

    def _prepare_data(self):
        cfg, lay, shape = self.cfg, self.layout, self.shape
        self.data_root = cfg.data
        if self.data_root is None:
            self.data_root = os.path.join(cfg.out, "data")
            prepare.prepare_synthetic(self.data_root, self.model_cfg, num_frames=shape.frames, size=shape.size,
                                      clips=cfg.synthetic_clips, vae_dir=os.path.join(cfg.out, "vae"),
                                      device=torch.device("cpu"))
        if cfg.cache_latents:
            prepare.cache_latents(self.data_root, self.vae(), num_frames=shape.frames, fps=self.model_cfg.fps,
                                  size=shape.size, rank=lay.rank, world=lay.world, device=lay.device)
            dist.barrier()
        return self.build_loader(self.data_root)

    def vae(self):
        if self._vae is None:
            dtype = torch.bfloat16 if self.layout.device.type == "cuda" else torch.float32
            self._vae = prepare.build_vae(self.cfg.vae, self.model_cfg, self.layout.device, dtype)
        return self._vae

    # ------------------------------------------------------------------------------------------ batches
    def next_batch(self) -> dict:
        if self._batch_iter is None:
            self._batch_iter = iter(self.loader)
        return next(self._batch_iter)

    def latents(self, batch: dict, rows: Tensor, broadcast: bool) -> Tensor:
        """Latents of the batch rows `rows` on the device: cached, or encoded by the VAE (with
        `broadcast`, by the cp group's rank 0 and broadcast, so every rank of the group sees the same bits)."""
        lay = self.layout
        if "latent" in batch:
            return batch["latent"][rows].to(lay.device, torch.float32)
        video = batch["video"][rows]
        if not broadcast:
            return self.vae().encode(video.to(lay.device)).float()
        shape = (len(rows), self.model_cfg.latent_channels, latent_frames(video.shape[2]),
                 video.shape[3] // SPATIAL_COMPRESSION, video.shape[4] // SPATIAL_COMPRESSION)
        if lay.cp_rank == 0:
            latents = self.vae().encode(video.to(lay.device)).float().contiguous()
        else:
            latents = torch.empty(shape, device=lay.device, dtype=torch.float32)
        dist.broadcast(latents, src=lay.cp_source, group=lay.cp_group)
        return latents

    def range(self, name: str):
        """A named range around a piece of the step when someone measures it (perf.ranges), else nothing."""
        return self.ranges.range(name) if self.ranges is not None else contextlib.nullcontext()

    def generator(self, step: int, sample: int) -> torch.Generator:
        return torch.Generator().manual_seed(sample_seed(self.cfg.seed, step, sample))

    # ------------------------------------------------------------------------------------------ loop
    def train(self) -> list[tuple[int, float]]:
        cfg = self.cfg
        with self.kernels():
            if cfg.resume:
                self.load()
            if self.is_main:
                self.print(self.banner())
            losses: list[tuple[int, float]] = []
            window: list[dict] = []
            bar = progress_bar(total=cfg.steps, initial=self.step, desc=self.name, dynamic_ncols=True,
                               enabled=self.is_main and cfg.progress and _terminal())
            try:
                while self.step < cfg.steps:
                    record = self.train_step()
                    losses.append((record["step"], record["loss"]))
                    window.append(record)
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    if len(window) == cfg.log_every or self.step == cfg.steps:
                        self._log(window)
                        window = []
                    if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                        self.save()
            finally:
                bar.close()
        return losses

    def print(self, line: str) -> None:
        console_write(line)  # above an open progress bar; a plain print otherwise

    def _log(self, window: list[dict]) -> None:
        record, line = self.summarize(window)
        if not self.is_main:
            return
        with open(os.path.join(self.cfg.out, f"{self.name}_log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        self.print(line)

    # ------------------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """Everything a checkpoint holds: the subclass's entries, the run's own, this rank's."""
        rank_state = {"loader": json.dumps(self.loader.state_dict()), "torch_rng": torch.get_rng_state()}
        if self.layout.device.type == "cuda":
            rank_state["cuda_rng"] = torch.cuda.get_rng_state(self.layout.device)
        return {**self.model_state(),
                "run": {"step": self.step, "config": json.dumps(dataclasses.asdict(self.cfg)),
                        "world": self.layout.world},
                checkpointing.rank_state_key(self.layout.rank): rank_state}

    def save(self) -> str:
        path = checkpointing.save(self.ckpt_root, self.step, self.state(), keep_last=self.cfg.keep_last,
                                  info={"step": self.step, "config": dataclasses.asdict(self.cfg), "kind": self.name,
                                        "world": self.layout.world, "model": self.model_cfg.name})
        self.export()
        return path

    def load(self, path: str | None = None) -> bool:
        """Restore the newest checkpoint (or `path`); False when there is none (a fresh start)."""
        path = path or checkpointing.find_latest(self.ckpt_root)
        if path is None:
            if self.is_main:
                self.print(f"cosmos {self.name}: --resume: no checkpoint under {self.ckpt_root}; starting at step 0")
            return False
        info = checkpointing.read_info(path)
        if info.get("world", self.layout.world) != self.layout.world:
            raise ValueError(f"{path} was written by {info['world']} processes, this run has {self.layout.world}: "
                             "the data order and per-rank states cannot continue exactly; resume with the same "
                             "number of processes")
        self._warn_config_changes(info.get("config", {}))
        state = self.state()
        checkpointing.load(path, state)
        self.restore(state)
        self.step = int(state["run"]["step"])
        mine = state[checkpointing.rank_state_key(self.layout.rank)]
        self.loader.load_state_dict(json.loads(mine["loader"]))
        self._batch_iter = None
        torch.set_rng_state(mine["torch_rng"])
        if "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"], self.layout.device)
        if self.is_main:
            self.print(f"cosmos {self.name}: resumed from {path} at step {self.step}")
        return True

    def _warn_config_changes(self, saved: dict) -> None:
        changed = {k: (saved[k], v) for k, v in dataclasses.asdict(self.cfg).items()
                   if k in saved and k not in HARMLESS_CHANGES and saved[k] != v}
        if changed and self.is_main:
            listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
            self.print(f"cosmos {self.name}: WARNING: resuming with settings that differ from the checkpoint's "
                       f"({listed}); the continuation is not the run that was interrupted")

    def close(self, *, barrier: bool = False) -> None:
        parallel.close(self.layout, barrier=barrier)


def _terminal() -> bool:
    import sys
    return sys.stderr.isatty()
