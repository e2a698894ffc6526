"""rCM distillation runs: the `cosmos distill` command and the `Distiller` behind it.

    cosmos train --config tiny --out runs/tiny --steps 200                      # a teacher
    cosmos distill --teacher runs/tiny/ema.safetensors --config tiny --out runs/tiny-rcm --steps 100
    cosmos sample --student runs/tiny-rcm/student.safetensors --out rcm.mp4      # 4 steps
    torchrun --nproc_per_node 8 -m cosmos_models.cli distill --teacher predict2.5-2b.pt \\
        --config predict2.5-2b --data clips/ --vae wan_vae/ --cp 2 --out runs/2b-rcm --resume

The objective (equations, sources) is cosmos_models/distill.py. Three networks start from the
teacher's weights: the teacher (frozen, no gradients), the student and the fake score; each is
sharded with FSDP2 like the trainer's model (cosmos_models/parallel.py: per block, then the root;
bf16 compute copies of fp32 weights on GPU), all three run Ulysses context parallelism over --cp
ranks. The student's JVP runs through torch.func.jvp, which works through FSDP2's hooks and the
context-parallel DiT (torch.autograd.forward_ad dual tensors do not: FSDP2's post-backward hook
Function returns its inputs as views without a forward-mode rule).

With activation checkpointing on the student (--sac other than none) the JVP cannot share the
student's differentiable forward (the recomputation in the backward cannot replay a forward-mode
pass): the JVP then runs under no_grad and a second forward gives F_θ (RCMConfig.one_pass_jvp=False,
rCM's own arrangement). Without SAC one pass gives both (the default for tiny configs).

Reused from the trainer (cosmos_models/train.py): the process layout and FSDP2 sharding, the data
loaders (cached latents; the tiny configs' synthetic clips without --data), the VAE front end,
DCP checkpoints written atomically, counter-based randomness (sample i of iteration s draws its
times and noises from a generator seeded by (seed, s, i), so a resumed run continues bit for bit),
the power EMA (of the student, updated on student iterations).

Per iteration, one optimizer steps: the student's on student iterations (every iteration during the
tangent warmup, then every --student-update-freq-th), else the fake score's. The teacher's CFG uses
the zeroed text embedding as the unconditional input (the trainer's text dropout), or
--negative-prompt-embedding. Outputs: <out>/checkpoints/step_XXXXXX (DCP: student, fake score, both
optimizers, EMA, iteration, per-rank data position), <out>/student.safetensors and
<out>/student_ema.safetensors (for `cosmos sample --student`), <out>/distill_log.jsonl.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

import cosmos_models as cm
from cosmos_models import checkpointing, distill, flow, parallel, sac, train_data
from cosmos_models.ema import EMA
from cosmos_models.train import PRECISIONS, TrainConfig, resolve, sample_seed

CONDITIONS = ("none", "final", "early")


@dataclass
class DistillConfig:
    """Everything a distillation run depends on (the CLI fills it; saved with every checkpoint)."""

    teacher: str = ""
    config: str | None = None
    out: str = "runs/distill"
    data: str | None = None
    steps: int = 100
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
    save_every: int = 500
    keep_last: int = 0
    log_every: int = 10
    resume: bool = False
    vae: str | None = None
    cache_latents: bool = False
    num_workers: int = 0
    synthetic_clips: int = 8
    dist_timeout: float = 600.0
    progress: bool = True
    condition: str = "none"
    negative_prompt_embedding: str | None = None
    ema_sigma_rel: float = 0.1
    # the objective (RCMConfig); None: its default (tangent_warmup: at most steps / 4, so short runs reach DMD)
    guidance: float = 5.0
    tangent_warmup: int | None = None
    student_lr: float = 2e-6
    fake_lr: float = 4e-7
    weight_decay: float = 0.01
    loss_scale_dmd: float = 1.0
    student_update_freq: int = 5
    max_simulation_steps: int = 4
    p_mean: float = -0.8
    p_std: float = 1.6


def rcm_config(cfg: DistillConfig, *, one_pass_jvp: bool) -> distill.RCMConfig:
    warmup = min(1000, max(1, cfg.steps // 4)) if cfg.tangent_warmup is None else cfg.tangent_warmup
    return distill.RCMConfig(teacher_guidance=cfg.guidance, tangent_warmup=warmup, student_lr=cfg.student_lr,
                             fake_lr=cfg.fake_lr, weight_decay=cfg.weight_decay, loss_scale_dmd=cfg.loss_scale_dmd,
                             student_update_freq=cfg.student_update_freq,
                             max_simulation_steps=cfg.max_simulation_steps, p_mean=cfg.p_mean, p_std=cfg.p_std,
                             one_pass_jvp=one_pass_jvp)


def _train_config(cfg: DistillConfig, model_name: str) -> TrainConfig:
    """The trainer's view of the shared settings (for its validation, data and layout code)."""
    shared = {f.name for f in dataclasses.fields(TrainConfig)} & {f.name for f in dataclasses.fields(DistillConfig)}
    values = {k: getattr(cfg, k) for k in shared}
    values.update(config=model_name, condition="none" if cfg.condition == "none" else cfg.condition)
    return TrainConfig(**values)


def _config_name(cfg: DistillConfig) -> str:
    if cfg.config:
        return cfg.config
    from cosmos_models.sampler_cli import config_from_checkpoint
    name = config_from_checkpoint(cfg.teacher) if cfg.teacher.endswith(".safetensors") else None
    if name is None:
        raise ValueError(f"--config is needed (the teacher checkpoint records none); known configs: {cm.configs()}")
    return name


class Distiller:
    """A distillation run. `Distiller(cfg).train()` runs cfg.steps iterations (resuming when
    cfg.resume) and returns [(iteration, loss)]; `close()` releases the process group it made."""

    def __init__(self, cfg: DistillConfig):
        if not cfg.teacher:
            raise ValueError("--teacher is required: the weights to distill (ours, official or diffusers names), "
                             "e.g. the ema.safetensors of a `cosmos train` run")
        if not os.path.exists(cfg.teacher):
            raise FileNotFoundError(f"--teacher {cfg.teacher!r}: no such file or folder")
        if cfg.condition not in CONDITIONS:
            raise ValueError(f"--condition {cfg.condition!r}: expected one of {CONDITIONS}")
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
        self.train_cfg = _train_config(cfg, _config_name(cfg))
        self.r = r = resolve(self.train_cfg, lay.device.type)
        self.model_cfg = r.model
        self.is_main = lay.rank == 0
        self.ckpt_root = os.path.join(cfg.out, "checkpoints")
        if self.is_main:
            os.makedirs(cfg.out, exist_ok=True)
            checkpointing.remove_partial(self.ckpt_root)
        if checkpointing.find_latest(self.ckpt_root) is not None and not cfg.resume:
            raise FileExistsError(f"{self.ckpt_root} already holds checkpoints; pass --resume to continue that run, "
                                  "or choose another --out")
        self.data_root = cfg.data
        if self.data_root is None:
            self.data_root = os.path.join(cfg.out, "data")
            train_data.prepare_synthetic(self.data_root, self.model_cfg, num_frames=r.frames, size=r.size,
                                         clips=cfg.synthetic_clips, vae_dir=os.path.join(cfg.out, "vae"),
                                         device=torch.device("cpu"))
        if cfg.cache_latents:
            vae = train_data.build_vae(cfg.vae, self.model_cfg, lay.device,
                                       torch.bfloat16 if lay.device.type == "cuda" else torch.float32)
            train_data.cache_latents(self.data_root, vae, num_frames=r.frames, fps=self.model_cfg.fps, size=r.size,
                                     rank=lay.rank, world=lay.world, device=lay.device)
            dist.barrier()
        self.loader = train_data.build_loader(self.train_cfg, self.model_cfg, size=r.size, num_frames=r.frames,
                                              image_batch=r.image_batch, dp_rank=lay.dp_rank, dp_size=lay.dp_size,
                                              data_root=self.data_root)
        self.vae = None

        compute = PRECISIONS[r.precision]
        compute = None if compute == torch.float32 else compute
        # the student's JVP runs through torch.func.jvp; where this torch cannot run it through FSDP2's
        # hooks (torch 2.11) a single process keeps its networks unsharded (nothing to shard on one
        # rank) and computes in fp32, and several processes cannot run at all: said here, not mid-run
        self.sharded = parallel.jvp_through_fsdp_supported(lay)
        if not self.sharded:
            if lay.world > 1:
                raise ValueError(f"cosmos distill on {lay.world} processes needs torch.func.jvp through FSDP2, which "
                                 f"this torch ({torch.__version__}) cannot run (fixed in torch 2.13); run it on one "
                                 "process or with a newer torch")
            if compute is not None and self.is_main:
                self._print(f"cosmos distill: this torch ({torch.__version__}) cannot run torch.func.jvp through "
                            f"FSDP2; one process runs the networks unsharded in fp32 instead of {r.precision}")
            compute = None

        def network(grad: bool, policy: str = "none"):
            net = cm.build(self.model_cfg, device=lay.device, dtype=torch.float32, kernel_backend=cfg.kernel_backend,
                           cp_group=lay.cp_group)
            net.load_state_dict(weights, strict=True)
            net.requires_grad_(grad)
            sac.apply(net, policy)
            return parallel.shard_model(net, lay, compute) if self.sharded else net

        holder = cm.build(self.model_cfg, device="cpu", dtype=torch.float32)
        cm.load_checkpoint(holder, cfg.teacher, prefer_ema=True)
        weights = holder.state_dict()
        self.rcm = rcm_config(cfg, one_pass_jvp=sac.check_policy(r.sac) is None)
        self.teacher = network(False)
        self.student = network(True, r.sac)
        self.fake_score = network(True, r.sac) if self.rcm.uses_dmd else None
        del holder, weights
        betas = tuple(map(float, self.rcm.betas))
        opt = lambda net, lr: torch.optim.AdamW(net.parameters(), lr=lr, betas=betas,  # noqa: E731
                                                weight_decay=self.rcm.weight_decay, eps=1e-8)
        self.opt_student = opt(self.student, self.rcm.student_lr)
        self.opt_fake = opt(self.fake_score, self.rcm.fake_lr) if self.rcm.uses_dmd else None
        for optimizer in (self.opt_student, self.opt_fake):
            if optimizer is not None:
                _init_adam_state(optimizer)
        self.ema = EMA(self.student, sigma_rel=cfg.ema_sigma_rel)
        self.condition = {"none": None, "final": flow.ConditionFrames.final_stage(),
                          "early": flow.ConditionFrames.early_stage()}[cfg.condition]
        self.negative = None
        if cfg.negative_prompt_embedding is not None:
            from cosmos_models.sampler import load_tensor
            neg = load_tensor(cfg.negative_prompt_embedding).float()
            self.negative = data_fit(neg if neg.dim() == 2 else neg[0], self.model_cfg.text_len).to(lay.device)
        self.step = 0
        self._batch_iter = None

    # ------------------------------------------------------------------------------------------ one iteration
    def _next_batch(self) -> dict:
        if self._batch_iter is None:
            self._batch_iter = iter(self.loader)
        return next(self._batch_iter)

    def _latents(self, batch: dict) -> Tensor:
        lay = self.layout
        if "latent" in batch:
            return batch["latent"].to(lay.device, torch.float32)
        if self.vae is None:
            dtype = torch.bfloat16 if lay.device.type == "cuda" else torch.float32
            self.vae = train_data.build_vae(self.cfg.vae, self.model_cfg, lay.device, dtype)
        latents = self.vae.encode(batch["video"].to(lay.device)).float().contiguous()
        if lay.cp > 1:  # the cp ranks of a group must see the same bits
            dist.broadcast(latents, src=lay.cp_source, group=lay.cp_group)
        return latents

    def make_batch(self, batch: dict, iteration: int) -> tuple[distill.Batch, distill.Draws]:
        """The objective's inputs for this rank: latents, text, the unconditional text, conditioning
        frames, and the per-sample draws (counter-seeded by (seed, iteration, global sample index))."""
        lay = self.layout
        x0 = self._latents(batch)
        text = batch["text"].to(lay.device, torch.float32)
        ids = [j * lay.dp_size + lay.dp_rank for j in range(x0.shape[0])]
        gens = [torch.Generator().manual_seed(sample_seed(self.cfg.seed, iteration, i)) for i in ids]
        draws = distill.draw(gens, tuple(x0.shape[1:]), self.rcm, device=lay.device)
        cond = None
        if self.condition is not None:
            counts = torch.cat([self.condition.sample(1, x0.shape[2], g) for g in gens])
            cond = distill.Condition(x0, flow.frame_mask(counts, x0.shape[2]).to(lay.device))
        negative = torch.zeros_like(text) if self.negative is None else self.negative.expand_as(text)
        return distill.Batch(x0, text, negative if self.rcm.teacher_guidance > 0 else None, cond), draws

    def train_step(self) -> dict:
        lay, rcm, it = self.layout, self.rcm, self.step
        start = time.perf_counter()
        batch, draws = self.make_batch(self._next_batch(), it)
        student_turn = rcm.is_student_iteration(it)
        if student_turn:
            per_sample, metrics = distill.student_loss(self.student, self.teacher, self.fake_score, batch, draws,
                                                       rcm, it)
            net, opt = self.student, self.opt_student
        else:
            per_sample, metrics = distill.fake_score_step_loss(self.student, self.fake_score, batch, draws, rcm, it)
            net, opt = self.fake_score, self.opt_fake
        loss = per_sample.mean()
        # FSDP divides the reduced gradient by the mesh size (dp x cp) while the cp ranks' parts must
        # sum: scale by cp, as the trainer does for video batches (cosmos_models/parallel.py)
        (loss * lay.cp).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), math.inf)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if student_turn:
            self.ema.update(self.student)
        values = torch.stack([loss.detach().double().reshape(()),
                              *(v.double().mean() for v in metrics.values() if isinstance(v, Tensor))])
        dist.all_reduce(values)
        values = (values / lay.world).tolist()  # every rank of a cp group holds the same values
        self.step += 1
        names = [k for k, v in metrics.items() if isinstance(v, Tensor)]
        record = {"step": self.step, "kind": "student" if student_turn else "fake_score", "loss": values[0],
                  **dict(zip(names, values[1:])), "grad_norm": float(grad_norm),
                  "step_time_s": time.perf_counter() - start}
        record.update({k: v for k, v in metrics.items() if not isinstance(v, Tensor)})
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"iteration {self.step}: the loss is {record['loss']}; stopping (the last "
                                     f"checkpoint is {checkpointing.find_latest(self.ckpt_root)})")
        return record

    # ------------------------------------------------------------------------------------------ loop
    def train(self) -> list[tuple[int, float]]:
        cfg = self.cfg
        if cfg.resume:
            self.load()
        if self.is_main:
            self._print(self._banner())
        losses: list[tuple[int, float]] = []
        window: list[dict] = []
        while self.step < cfg.steps:
            record = self.train_step()
            losses.append((record["step"], record["loss"]))
            window.append(record)
            if len(window) == cfg.log_every or self.step == cfg.steps:
                self._log(window)
                window = []
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                self.save()
        return losses

    def _print(self, line: str) -> None:
        print(line, flush=True)

    def _banner(self) -> str:
        r, lay, rcm = self.r, self.layout, self.rcm
        return (f"cosmos distill: {self.model_cfg.name} from {self.cfg.teacher} on {lay.describe()}, {r.precision}, "
                f"sac={r.sac} ({'one-pass' if rcm.one_pass_jvp else 'separate'} JVP), clips {r.frames}x{r.size[0]}x"
                f"{r.size[1]} from {self.data_root}, batch {self.cfg.batch}/dp group x {lay.dp_size}, guidance "
                f"{rcm.teacher_guidance}, tangent warmup {rcm.tangent_warmup}, lr {rcm.student_lr:g}/{rcm.fake_lr:g}, "
                f"DMD {'on' if rcm.uses_dmd else 'off'}, steps {self.step}->{self.cfg.steps}, out {self.cfg.out}")

    def _log(self, window: list[dict]) -> None:
        if not self.is_main:
            return
        last = window[-1]
        record = {"step": last["step"], "losses": [w["loss"] for w in window], "kinds": [w["kind"] for w in window],
                  "step_time_s": sum(w["step_time_s"] for w in window) / len(window), "r": last.get("r")}
        for key in ("loss_scm", "loss_dmd", "loss_fake", "tangent_rms"):
            seen = [w[key] for w in window if key in w]
            if seen:
                record[key] = sum(seen) / len(seen)
        with open(os.path.join(self.cfg.out, "distill_log.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        parts = [f"{k} {record[k]:.4g}" for k in ("loss_scm", "loss_dmd", "loss_fake") if k in record]
        self._print(f"iter {record['step']:>7d}  {'  '.join(parts)}  {record['step_time_s']:.3f} s/iter")

    # ------------------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        student, opt_student = get_state_dict(self.student, self.opt_student)
        state = {"student": student, "opt_student": opt_student, "ema": self.ema.shadow,
                 "trainer": {"step": self.step, "ema_updates": self.ema.updates,
                             "config": json.dumps(dataclasses.asdict(self.cfg)), "world": self.layout.world},
                 checkpointing.rank_state_key(self.layout.rank): {"loader": json.dumps(self.loader.state_dict())}}
        if self.opt_fake is not None:
            state["fake_score"], state["opt_fake"] = get_state_dict(self.fake_score, self.opt_fake)
        return state

    def save(self) -> str:
        path = checkpointing.save(self.ckpt_root, self.step, self._state(), keep_last=self.cfg.keep_last,
                                  info={"step": self.step, "config": dataclasses.asdict(self.cfg),
                                        "world": self.layout.world, "model": self.model_cfg.name})
        self.export(os.path.join(self.cfg.out, "student.safetensors"),
                    os.path.join(self.cfg.out, "student_ema.safetensors"))
        return path

    def export(self, student_path: str, ema_path: str | None = None) -> None:
        """The student (and its EMA) as safetensors with our names (rank 0 writes; every rank gathers)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        _write_weights(self.model_cfg, full if self.is_main else None, student_path)
        if ema_path is not None:
            _write_weights(self.model_cfg, self.ema.full_state_dict(), ema_path)

    def load(self, path: str | None = None) -> bool:
        """Restore the newest checkpoint (or `path`); False when there is none."""
        from torch.distributed.checkpoint.state_dict import set_state_dict

        path = path or checkpointing.find_latest(self.ckpt_root)
        if path is None:
            if self.is_main:
                self._print(f"cosmos distill: --resume: no checkpoint under {self.ckpt_root}; starting at iteration 0")
            return False
        info = checkpointing.read_info(path)
        if info.get("world", self.layout.world) != self.layout.world:
            raise ValueError(f"{path} was written by {info['world']} processes, this run has {self.layout.world}; "
                             "resume with the same number of processes")
        state = self._state()
        checkpointing.load(path, state)
        set_state_dict(self.student, self.opt_student, model_state_dict=state["student"],
                       optim_state_dict=state["opt_student"])
        if self.opt_fake is not None:
            set_state_dict(self.fake_score, self.opt_fake, model_state_dict=state["fake_score"],
                           optim_state_dict=state["opt_fake"])
        trainer = state["trainer"]
        self.ema.load_state_dict({"shadow": state["ema"], "updates": trainer["ema_updates"]})
        self.step = int(trainer["step"])
        self.loader.load_state_dict(json.loads(state[checkpointing.rank_state_key(self.layout.rank)]["loader"]))
        self._batch_iter = None
        if self.is_main:
            self._print(f"cosmos distill: resumed from {path} at iteration {self.step}")
        return True

    def close(self, *, barrier: bool = False) -> None:
        parallel.close(self.layout, barrier=barrier)


def _init_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """AdamW's state as its first step would create it (step 0, zero moments). Without it a checkpoint
    taken before an optimizer's first step (the fake score's, during the tangent warmup) would let
    torch.distributed.checkpoint initialize the state with a zero-lr step (step count 1), and the
    resumed run would step with a different bias correction than the uninterrupted one."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not optimizer.state[p]:
                optimizer.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                      "exp_avg_sq": torch.zeros_like(p)}


def data_fit(embedding: Tensor, length: int) -> Tensor:
    from cosmos_models.data import fit_text
    return fit_text(embedding, length)


def _write_weights(model_cfg, weights: dict | None, path: str) -> None:
    if weights is None:
        return
    with torch.device("meta"):
        holder = cm.model_class(model_cfg)(model_cfg)
    holder.load_state_dict(weights, assign=True, strict=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    cm.save_checkpoint(holder, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    d = DistillConfig()
    r = distill.RCMConfig()
    a = parser.add_argument
    a("--teacher", required=True, help="teacher weights (ours, official or diffusers names; EMA preferred), e.g. "
                                       "<train run>/ema.safetensors")
    a("--config", default=None, help=f"model config ({', '.join(cm.configs())}); default: the teacher file's")
    a("--data", default=None, help="folder of clips (as for cosmos train); tiny configs without it use generated clips")
    a("--out", default=d.out, help="run folder: checkpoints/, distill_log.jsonl, student*.safetensors")
    a("--steps", type=int, default=d.steps, help="total iterations (student and fake-score updates together)")
    a("--batch", type=int, default=d.batch, help="clips per data-parallel group per iteration")
    a("--resolution", default=None, help="256p, 480p, 720p or HxW (default: the config's)")
    a("--frames", type=int, default=None, help="pixel frames per clip, 4k+1 (default: the config's)")
    a("--cp", type=int, default=d.cp, help="context-parallel (Ulysses) group size")
    a("--hsdp-replicate", type=int, default=d.hsdp_replicate, help="FSDP replicas (hybrid sharding)")
    a("--sac", default=None, choices=sorted(sac.POLICIES),
      help="activation checkpointing of the student and fake score (default: none for tiny configs, else "
           "predict2_2b_720_aggressive); with it the student's JVP runs as a separate no-grad pass")
    a("--precision", default=None, choices=sorted(PRECISIONS), help="compute dtype (default: bf16 on GPU, fp32 on CPU)")
    a("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a("--kernel-backend", default=None, choices=("triton", "cuda", "torch"), help="run every kernel on this backend")
    a("--seed", type=int, default=d.seed)
    a("--save-every", type=int, default=d.save_every, help="checkpoint every N iterations (and at the end)")
    a("--keep-last", type=int, default=d.keep_last, help="keep only the newest N checkpoints (0: all)")
    a("--log-every", type=int, default=d.log_every)
    a("--resume", action="store_true", help="continue from the newest checkpoint under --out (if any)")
    a("--vae", default=None, help="diffusers AutoencoderKLWan folder for clips without cached latents")
    a("--cache-latents", action="store_true", help="encode and cache missing latents of --data first")
    a("--num-workers", type=int, default=d.num_workers)
    a("--synthetic-clips", type=int, default=d.synthetic_clips, help="clips to generate when --data is omitted")
    a("--dist-timeout", type=float, default=d.dist_timeout)
    a("--condition", default=d.condition, choices=CONDITIONS,
      help="conditioning frames while distilling: none (Text2World, as rCM), final (0/1/2 latent frames), early")
    a("--negative-prompt-embedding", default=None,
      help="unconditional text embedding of the teacher's CFG (default: the zeroed embedding of text dropout)")
    a("--ema-sigma-rel", type=float, default=d.ema_sigma_rel, help="power EMA width of the student")
    a("--guidance", type=float, default=d.guidance, help="teacher CFG, official form (rCM: 5)")
    a("--tangent-warmup", type=int, default=None, help=f"iterations of tangent warmup (rCM {r.tangent_warmup}; "
                                                       "default: min(1000, steps/4))")
    a("--student-lr", type=float, default=d.student_lr)
    a("--fake-lr", type=float, default=d.fake_lr)
    a("--weight-decay", type=float, default=d.weight_decay)
    a("--loss-scale-dmd", type=float, default=d.loss_scale_dmd, help="weight of the DMD term (0: sCM only)")
    a("--student-update-freq", type=int, default=d.student_update_freq)
    a("--max-simulation-steps", type=int, default=d.max_simulation_steps)
    a("--p-mean", type=float, default=d.p_mean, help="sCM times: ln sigma ~ N(p_mean, p_std^2)")
    a("--p-std", type=float, default=d.p_std)
    a("--no-progress", dest="progress", action="store_false")


def run(args) -> int:
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    cfg = DistillConfig(**{k: v for k, v in vars(args).items() if k in fields})
    distiller = Distiller(cfg)
    try:
        distiller.train()
    except BaseException:
        distiller.close()
        raise
    distiller.close(barrier=True)
    return 0


if __name__ == "__main__":
    from cosmos_models.cli import main
    sys.exit(main(["distill", *sys.argv[1:]]))
