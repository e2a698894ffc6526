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
- the run folder (run_folder.py): rank 0 holds OUT/.lock for the whole run (a second run on the
  folder is refused); refuses checkpoints of another run unless --resume, removes partial saves;
  OUT/run.json records what the run was started with, and --resume refuses a change of its identity
  (model, data, seed, global batch, clip shape) unless --allow-change names it;
- data: the folder given by --data (cached latents, or videos encoded by the VAE, broadcast over a
  cp group so its ranks see the same bits), the tiny configs' synthetic clip set without it, latent
  caching (--cache-latents), or a batch source passed in (`batches=`: the MFU measurement's random
  latents); sample i of step s draws from a generator seeded by (seed, s, i) (`sample_seed`);
- logs: <out>/<name>_log.jsonl and a line on stdout every --log-every steps, a progress bar on a terminal,
  and with --log-to the same numbers in TensorBoard (<out>/tensorboard) and/or W&B (training/loggers.py);
- checkpoints (cosmos_models.training.checkpointing): every --save-every steps and at the end, atomic
  DCP folders holding the subclass's state plus the step, the config, the world size and, per rank,
  the data position and every RNG state (torch, CUDA): a resumed run is the uninterrupted one; on
  another number of processes DCP reshards and the loader moves its position (same global batch);
- faults (faults.py, errors.py): a stop signal ends the run after the step in progress with a
  checkpoint (all ranks agree on the step); a step whose loss or gradient is not finite is skipped,
  more than --max-bad-steps in a row stop the run; a checkpoint of non-finite weights is never
  written; a failed write or a lost process is reported as such, naming the last checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from cosmos_kernels import dispatch
from cosmos_models._deps import console_write, progress_bar, require
from cosmos_models.data import prepare
from cosmos_models.data.clips import IMAGE_EXTENSIONS, TEXT_SUFFIXES, VIDEO_EXTENSIONS, resolve_resolution
from cosmos_models.errors import (CheckpointWriteFailed, Diverged, ProcessesLost, RunError, RunFolderMismatch,
                                  RunStopped)
from cosmos_models.nets.config import DiTConfig, get_config
from cosmos_models.nets.vae import SPATIAL_COMPRESSION, latent_frames
from cosmos_models.training import checkpointing, faults, loggers, parallel, run_folder, sac

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
    aspect_buckets: bool = False       # clips at their aspect bucket's size (data/clips.py ASPECT_BUCKETS)
    frames: int | None = None
    cp: int = 1
    cp_overlap_chunks: int = 1         # UlyssesAttention head chunks (exchange overlapped with attention)
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
    allow_change: tuple[str, ...] = ()
    max_bad_steps: int = 5
    text_encoder: str | None = None    # embed the official layout's metas/*.txt captions first (data/prepare.py)
    log_to: str | None = None          # "tensorboard", "wandb" or both, comma-separated (training/loggers.py)
    wandb_project: str = "cosmos-kernels"


RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


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
    for name in ("steps", "batch", "cp", "cp_overlap_chunks", "hsdp_replicate", "log_every", "synthetic_clips"):
        positive_int(name, getattr(cfg, name))
    for name in ("save_every", "keep_last", "num_workers", "seed", "max_bad_steps"):
        positive_int(name, getattr(cfg, name), 0)
    for kind in loggers.parse_kinds(cfg.log_to):  # a missing package is said before any work
        require(kind, f"--log-to {kind}")
    if cfg.text_encoder is not None:  # so is a missing text encoder (rank 0 embeds the captions later)
        from cosmos_models.nets.text_encoder import locate_text_encoder
        require("transformers", "--text-encoder")
        locate_text_encoder(cfg.text_encoder)
    if not (isinstance(cfg.dist_timeout, (int, float)) and cfg.dist_timeout > 0 and math.isfinite(cfg.dist_timeout)):
        raise ValueError(f"--dist-timeout must be a number of seconds > 0, got {cfg.dist_timeout!r}")
    if cfg.cp > 1:
        if model_cfg.num_heads % cfg.cp:
            raise ValueError(f"--cp {cfg.cp} must divide the {model_cfg.num_heads} attention heads of {model_cfg.name}")
        if model_cfg.num_heads % (cfg.cp * cfg.cp_overlap_chunks):
            raise ValueError(f"--cp {cfg.cp} x --cp-overlap-chunks {cfg.cp_overlap_chunks} must divide the "
                             f"{model_cfg.num_heads} attention heads of {model_cfg.name}")
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
        self._lock = None
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
                self._check_manifest()
                self.step = 0
                self._batch_iter = None
                self._bad_steps: list[dict] = []  # the non-finite steps in a row, up to now
                self.ranges = None  # named ranges around parts of a step (cosmos_models.perf.ranges), if set
                self.setup()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ hooks
    def resolve(self, *, needs_data: bool = True) -> RunShape:
        return resolve_run(self.cfg, self.layout.device.type, needs_data=needs_data)

    def setup(self) -> None:
        raise NotImplementedError

    def train_step(self) -> dict:
        """One step; the record says "skipped": True when its loss or gradient was not finite and
        nothing was updated (the runner counts those against --max-bad-steps)."""
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

    def identity(self) -> dict:
        """What the run folder's run is (OUT/run.json "identity"): what --resume must not change
        unless --allow-change names it. Subclasses add theirs (the teacher, joint image batches)."""
        cfg, shape, lay = self.cfg, self.shape, self.layout
        data = None
        if self.data_root is not None:
            found = run_folder.data_summary(self.data_root, VIDEO_EXTENSIONS + IMAGE_EXTENSIONS + TEXT_SUFFIXES +
                                            (".txt",))
            data = f"{found['path']} ({found['files']} files, {found['bytes']} bytes)"
        config_hash = run_folder.content_hash(dataclasses.asdict(self.model_cfg))
        return {"config": f"{self.model_cfg.name} (contents {config_hash})", "data": data, "seed": cfg.seed,
                "batch": cfg.batch * lay.dp_size, "resolution": f"{shape.size[0]}x{shape.size[1]}",
                "frames": shape.frames, "aspect_buckets": cfg.aspect_buckets, "vae": None if cfg.vae is None else os.path.abspath(cfg.vae)}

    def recipe(self) -> dict:
        """Values resolved from the flags that a change of another flag can move (OUT/run.json
        "recipe"; a change on --resume is warned about): e.g. a warm-up derived from --steps."""
        return {}

    def build_loader(self, data_root: str):
        """The batch source over data_root (the trainer adds joint image batches)."""
        return prepare.build_loader(self.model_cfg, data_root=data_root, size=self.shape.size,
                                    num_frames=self.shape.frames, batch=self.cfg.batch, seed=self.cfg.seed,
                                    num_workers=self.cfg.num_workers, dp_rank=self.layout.dp_rank,
                                    dp_size=self.layout.dp_size, buckets=self.cfg.aspect_buckets)

    # ------------------------------------------------------------------------------------------ set-up
    def after_step(self) -> None:
        """After each step, before its checkpoint: what a subclass does between steps (previews)."""

    def kernels(self):
        """The kernel backends of this run (--kernel-backend), process-wide while inside."""
        return dispatch.use_backend(self.cfg.kernel_backend)

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The compute copy FSDP casts the fp32 weights to (None: compute in fp32)."""
        dtype = PRECISIONS[self.shape.precision]
        return None if dtype == torch.float32 else dtype

    def _on_main(self, fn):
        """fn() on rank 0; its expected failure (RunError, ValueError, OSError) is raised on every
        rank, so no rank waits for one that has given up."""
        outcome, error = [None], None
        if self.is_main:
            try:
                outcome[0] = ("ok", fn())
            except (RunError, ValueError, OSError) as exc:
                outcome[0], error = ("error", (type(exc), str(exc))), exc
        if self.layout.world > 1:
            dist.broadcast_object_list(outcome, src=0)
        status, value = outcome[0]
        if error is not None:
            raise error
        if status == "error":
            kind, message = value
            raise (kind if issubclass(kind, (RunError, ValueError, FileExistsError, FileNotFoundError))
                   else RunError)(message)
        return value

    def _open_run_folder(self) -> None:
        cfg = self.cfg

        def take():
            # one writer per run folder: rank 0 holds OUT/.lock for the whole run (run_folder.RunLock)
            self._lock = run_folder.RunLock.acquire(cfg.out, warn=self.print)
            checkpointing.remove_partial(self.ckpt_root)

        self._on_main(take)
        existing = checkpointing.find_latest(self.ckpt_root)
        if existing is not None and not cfg.resume:
            raise FileExistsError(f"{self.ckpt_root} already holds checkpoints (newest {os.path.basename(existing)}); "
                                  "pass --resume to continue that run, or choose another --out")

    def _check_manifest(self) -> None:
        """OUT/run.json: written at a fresh start; on --resume compared (run_folder.compare): a change
        of the run's identity is refused unless --allow-change names it, every change is recorded."""
        cfg = self.cfg
        record = run_folder.manifest(self.name, self.identity(), dataclasses.asdict(cfg), self.layout, self.recipe())
        latest = checkpointing.find_latest(self.ckpt_root)

        unknown = sorted({k.replace("-", "_") for k in cfg.allow_change} - set(record["identity"]))
        if unknown:
            raise ValueError(f"--allow-change {unknown[0].replace('_', '-')}: not an entry of the run's identity; "
                             f"expected one of {', '.join(k.replace('_', '-') for k in sorted(record['identity']))}")

        def check():
            saved = run_folder.read_manifest(cfg.out)
            if latest is None or saved is None:
                if latest is not None:
                    self.print(f"cosmos {self.name}: {cfg.out} has no {run_folder.MANIFEST} (a run folder of an "
                               "older version): recording this run's settings there")
                run_folder.write_manifest(cfg.out, record)
                return []
            refused, warned, recorded = run_folder.compare(saved, record, cfg.allow_change)
            if refused:
                keys = sorted({change.split(":", 1)[0].replace("_", "-") for change in refused})
                raise RunFolderMismatch(
                    f"--resume: {cfg.out} holds a run started with other settings that change the model or the data "
                    f"order: {'; '.join(refused)}. Resume with the run's settings, pass "
                    f"{' '.join('--allow-change ' + k for k in keys)} to continue anyway, or choose another --out")
            if warned:
                self.print(f"cosmos {self.name}: WARNING: resuming with settings that change what the steps compute "
                           f"({'; '.join(warned)}); the continuation is not the run that was interrupted")
            saved["resumes"] = saved.get("resumes", []) + [{
                "time": record["started"], "from": os.path.basename(latest), "changes": recorded,
                "command": record["command"], "world": record["world"], "versions": record["versions"]}]
            saved.update(identity=record["identity"], identity_hash=record["identity_hash"],
                         settings=record["settings"], recipe=record["recipe"], world=record["world"],
                         versions=record["versions"])
            run_folder.write_manifest(cfg.out, saved)
            return recorded

        self._on_main(check)

    def _prepare_data(self):
        cfg, lay, shape = self.cfg, self.layout, self.shape
        self.data_root = cfg.data
        if self.data_root is None:
            self.data_root = os.path.join(cfg.out, "data")
            prepare.prepare_synthetic(self.data_root, self.model_cfg, num_frames=shape.frames, size=shape.size,
                                      clips=cfg.synthetic_clips, vae_dir=os.path.join(cfg.out, "vae"),
                                      device=torch.device("cpu"))
        if cfg.text_encoder is not None:  # the official layout's captions, embedded once (rank 0), then read
            counts = self._on_main(lambda: prepare.embed_captions(self.data_root, text_encoder=cfg.text_encoder,
                                                                  device=lay.device))
            if counts["written"] and self.is_main:
                self.print(f"cosmos {self.name}: embedded {counts['written']} captions with {counts['encoder']}")
        if cfg.cache_latents:
            prepare.cache_latents(self.data_root, self.vae(), num_frames=shape.frames, fps=self.model_cfg.fps,
                                  size=shape.size, rank=lay.rank, world=lay.world, device=lay.device,
                                  buckets=cfg.aspect_buckets)
            dist.barrier()
        return self.build_loader(self.data_root)

    def vae(self):
        """--vae; for a tiny config's generated clips the autoencoder fitted to them (OUT/vae), which
        cached their latents; else build_vae's default."""
        if self._vae is None:
            dtype = torch.bfloat16 if self.layout.device.type == "cuda" else torch.float32
            spec, fitted = self.cfg.vae, os.path.join(self.cfg.out, "vae")
            if spec is None and self.cfg.data is None and os.path.isdir(fitted):
                spec = fitted
            self._vae = prepare.build_vae(spec, self.model_cfg, self.layout.device, dtype)
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
        """Resume (--resume), then steps until cfg.steps, logging and saving. A stop signal ends the
        run after the step in progress with a checkpoint (RunStopped); --max-bad-steps non-finite
        steps in a row end it with the last good checkpoint named (Diverged); a collective that
        fails because another process died or timed out ends it with ProcessesLost."""
        cfg, lay = self.cfg, self.layout
        with self.kernels(), faults.StopSignals(self.name, lay.rank) as stop:
            try:
                return self._loop(stop)
            except RunError:
                raise
            except BaseException as exc:
                if faults.is_collective_failure(exc):
                    raise ProcessesLost(
                        f"rank {lay.rank} of {lay.world}: lost the other processes after step {self.step} "
                        f"({faults.collective_summary(exc)}): one of them died or a collective waited longer than "
                        f"--dist-timeout {cfg.dist_timeout:g} s; the last checkpoint is {self._latest()}; "
                        f"resume with --resume once every process can run") from exc
                raise

    def _loop(self, stop) -> list[tuple[int, float]]:
        cfg, lay = self.cfg, self.layout
        if cfg.resume:
            self.load()
        if self.is_main:
            self.print(self.banner())
            for line in self._data_notes():
                self.print(line)
        self._loggers = loggers.MetricLoggers(loggers.parse_kinds(cfg.log_to) if self.is_main else (), cfg.out,
                                              self.name, config=dataclasses.asdict(cfg), project=cfg.wandb_project)
        losses: list[tuple[int, float]] = []
        window: list[dict] = []
        bar = progress_bar(total=cfg.steps, initial=self.step, desc=self.name, dynamic_ncols=True,
                           enabled=self.is_main and cfg.progress and _terminal())
        try:
            while self.step < cfg.steps:
                record = self.train_step()
                losses.append((record["step"], record["loss"]))
                window.append(record)
                self._count_bad_step(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if len(window) == cfg.log_every or self.step == cfg.steps:
                    self._log(window)
                    window = []
                self.after_step()
                saved = False
                if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                    self.save()
                    saved = True
                signum = faults.agreed_signal(stop.signum, lay.device, lay.world)
                if signum is not None and self.step < cfg.steps:  # (after the last step: the run is complete)
                    if window:
                        self._log(window)
                    path = self.save() if not saved else self._latest()
                    raise RunStopped(self._stopped_message(signum, path), signum)
        finally:
            bar.close()
            self._loggers.close()
        return losses

    def _data_notes(self) -> list[str]:
        """One line per dataset that dropped files at the start (each file was warned about)."""
        loaders = [getattr(self.loader, k, None) for k in ("video", "image")] if hasattr(self.loader, "video") \
            else [self.loader]
        notes = []
        for loader in loaders:
            data = getattr(loader, "dataset", None)
            if getattr(data, "skipped", 0):
                notes.append(f"cosmos {self.name}: data: {len(data)} usable files under {data.root}, {data.skipped} "
                             "skipped (see the warnings above)")
        return notes

    def _count_bad_step(self, record: dict) -> None:
        if not record.get("skipped"):
            self._bad_steps = []
            return
        self._bad_steps.append(record)
        n, limit = len(self._bad_steps), self.cfg.max_bad_steps
        grad = record.get("grad_norm")
        what = f"loss {record['loss']}" + (f", gradient norm {grad}" if grad is not None else "")
        if n > limit:
            first = self._bad_steps[0]["step"]
            raise Diverged(f"{n} steps in a row ({first}..{record['step']}) had a non-finite loss or gradient "
                           f"(last: {what}), more than --max-bad-steps {limit}; stopping. The last good checkpoint "
                           f"is {self._latest()}: resume from it with a lower --lr (or --grad-clip), and check the "
                           "data of these steps")
        if self.is_main:
            self.print(f"cosmos {self.name}: step {record['step']}: {what}: step skipped (weights, optimizer and EMA "
                       f"untouched; {n} in a row of at most --max-bad-steps {limit})")

    def _latest(self) -> str:
        return checkpointing.find_latest(self.ckpt_root) or "none (no checkpoint was written yet)"

    def _stopped_message(self, signum: int, path: str) -> str:
        argv = [a for a in sys.argv[1:]]
        if "--resume" not in argv:
            argv.append("--resume")
        launcher = "the same torchrun command with" if "TORCHELASTIC_RUN_ID" in os.environ else "cosmos"
        command = f"{launcher} {shlex.join(argv)}" if launcher == "cosmos" else f"{launcher} --resume"
        return (f"stopped by {signal.Signals(signum).name} at step {self.step} of {self.cfg.steps}; checkpoint "
                f"{path}; resume with: {command}")

    def print(self, line: str) -> None:
        console_write(line)  # above an open progress bar; a plain print otherwise

    def _log(self, window: list[dict]) -> None:
        record, line = self.summarize(window)
        skipped = [w["step"] for w in window if w.get("skipped")]
        if skipped:
            record["skipped_steps"] = skipped
            line += f"  ({len(skipped)} skipped: non-finite)"
        if not self.is_main:
            return
        with open(os.path.join(self.cfg.out, f"{self.name}_log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        self._loggers.log(int(record.get("step", self.step)), record)
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
        """Checkpoint this step (every rank calls it). Refused when a weight or optimizer value is not
        finite (Diverged); a failed write (a full disk) is CheckpointWriteFailed, the previous
        checkpoint and `latest` untouched."""
        lay = self.layout
        state = self.state()
        if not faults.all_finite(state, lay.device, lay.world):
            raise Diverged(f"step {self.step}: the weights or optimizer state hold NaN or Inf; not writing a "
                           f"checkpoint of them. The last good checkpoint is {self._latest()}: resume from it with a "
                           "lower --lr (or --grad-clip)")
        previous = self._latest()
        try:
            path = checkpointing.save(self.ckpt_root, self.step, state, keep_last=self.cfg.keep_last,
                                      info={"step": self.step, "config": dataclasses.asdict(self.cfg),
                                            "kind": self.name, "world": lay.world, "model": self.model_cfg.name})
            self.export()
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)) or faults.is_collective_failure(exc):
                raise
            # the OSError itself when it reaches us; torch.save's zip writer turns one raised inside
            # it (a full disk) into a RuntimeError about a file position, so any failure here is told
            # as a failed write, with the free space of the folder
            cause = faults.write_failure(exc)
            if cause is None and self.is_main:
                cause = faults.probe_write(self.ckpt_root)
            inner = faults.innermost(exc)
            what = faults.describe_oserror(cause) if cause is not None else \
                f"{type(inner).__name__}: {faults.collective_summary(inner)}"
            kept = "no checkpoint was written before" if previous.startswith("none") else \
                f"the previous checkpoint {previous} is intact (and `latest` names it)"
            raise CheckpointWriteFailed(
                f"writing the checkpoint of step {self.step} under {self.ckpt_root} failed: {what} "
                f"({faults.free_space(self.ckpt_root)}); {kept}: free space (or fix the permission), then resume "
                "with --resume") from exc
        return path

    def load(self, path: str | None = None) -> bool:
        """Restore the newest checkpoint (or `path`); False when there is none (a fresh start). A
        checkpoint of another number of processes is resharded (DCP) and its data position kept
        (the loader's `resharded`): the same global batch continues where it stopped."""
        path = path or checkpointing.find_latest(self.ckpt_root)
        lay = self.layout
        if path is None:
            if self.is_main:
                self.print(f"cosmos {self.name}: --resume: no checkpoint under {self.ckpt_root}; starting at step 0")
            return False
        info = checkpointing.read_info(path)
        saved_world = int(info.get("world", lay.world))
        state = self.state()
        # this rank's own entry, or (a rank the saving run did not have) rank 0's
        mine_key = checkpointing.rank_state_key(lay.rank if lay.rank < saved_world else 0)
        if mine_key not in state:
            state[mine_key] = state.pop(checkpointing.rank_state_key(lay.rank))
        checkpointing.load(path, state)
        self.restore(state)
        self.step = int(state["run"]["step"])
        mine = state[mine_key]
        loader_state = json.loads(mine["loader"])
        reordered = sorted({k.replace("-", "_") for k in self.cfg.allow_change} & {"seed", "data", "batch"})
        if reordered and hasattr(self.loader, "adopted"):
            # --allow-change of what orders the data: this run's order, from the same point of the epoch
            loader_state = self.loader.adopted(loader_state)
            if self.is_main:
                self.print(f"cosmos {self.name}: --allow-change {', '.join(reordered)}: the data order from here is "
                           "this run's, from the same point of the saved epoch (not an exact resume)")
        elif saved_world != lay.world:
            if not hasattr(self.loader, "resharded"):
                raise ValueError(f"{path} was written by {saved_world} processes, this run has {lay.world}, and its "
                                 "batch source cannot move its position to another layout; resume with "
                                 f"{saved_world} processes")
            loader_state = self.loader.resharded(loader_state)
        self.loader.load_state_dict(loader_state)
        self._batch_iter = None
        torch.set_rng_state(mine["torch_rng"])
        if "cuda_rng" in mine:
            torch.cuda.set_rng_state(mine["cuda_rng"], lay.device)
        if self.is_main:
            moved = f" (written by {saved_world} processes, resharded to {lay.world})" if saved_world != lay.world \
                else ""
            self.print(f"cosmos {self.name}: resumed from {path} at step {self.step}{moved}")
        return True

    def close(self, *, barrier: bool = False) -> None:
        """Release the process group (and the run folder's lock); safe to call twice."""
        try:
            if hasattr(self, "layout"):
                parallel.close(self.layout, barrier=barrier)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


def _terminal() -> bool:
    import sys
    return sys.stderr.isatty()
