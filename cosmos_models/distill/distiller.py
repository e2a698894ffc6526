"""rCM distillation runs: the `Distiller` behind the `cosmos distill` command (cosmos_models.cli.distill).

    cosmos train --config tiny --out runs/tiny --steps 200                      # a teacher
    cosmos distill --teacher runs/tiny/ema.safetensors --config tiny --out runs/tiny-rcm --steps 100
    cosmos sample --student runs/tiny-rcm/student.safetensors --out rcm.mp4      # 4 steps
    torchrun --nproc_per_node 8 -m cosmos_models.cli distill --teacher predict2.5-2b.pt \\
        --config predict2.5-2b --data clips/ --vae wan_vae/ --cp 2 --out runs/2b-rcm --resume

The objective (equations, sources) is cosmos_models/distill/rcm.py. Three networks start from the
teacher's weights: the teacher (frozen, no gradients), the student and the fake score; each is
sharded with FSDP2 like the trainer's model (cosmos_models/training/parallel.py: per block, then the root;
bf16 compute copies of fp32 weights on GPU), all three run Ulysses context parallelism over --cp
ranks. The student's JVP runs through torch.func.jvp, which works through FSDP2's hooks and the
context-parallel DiT (torch.autograd.forward_ad dual tensors do not: FSDP2's post-backward hook
Function returns its inputs as views without a forward-mode rule).

With activation checkpointing on the student (--sac other than none) the JVP cannot share the
student's differentiable forward (the recomputation in the backward cannot replay a forward-mode
pass): the JVP then runs under no_grad and a second forward gives F_θ (RCMConfig.one_pass_jvp=False,
rCM's own arrangement). Without SAC one pass gives both (the default for tiny configs).

The run is the training runner (cosmos_models/training/runner.py), shared with `cosmos train`: the
process layout and FSDP2 sharding, the data loaders (cached latents; the tiny configs' synthetic clips
without --data), the VAE front end, DCP checkpoints written atomically with every RNG state and the
data position, counter-based randomness (sample i of iteration s draws its times and noises from a
generator seeded by (seed, s, i)), so a resumed run continues bit for bit; the power EMA (of the
student, updated on student iterations).

Per iteration, one optimizer steps: the student's on student iterations (every iteration during the
tangent warmup, then every --student-update-freq-th), else the fake score's. The teacher's CFG uses
the zeroed text embedding as the unconditional input (the trainer's text dropout), or
--negative-prompt-embedding. Outputs: <out>/checkpoints/step_XXXXXX (DCP: student, fake score, both
optimizers, EMA, iteration, per-rank data position), <out>/student.safetensors and
<out>/student_ema.safetensors (for `cosmos sample --student`), <out>/distill_log.jsonl.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

import cosmos_models as cm
from cosmos_models.data.clips import fit_text
from cosmos_models.distill import rcm as distill
from cosmos_models.nets import checkpoint
from cosmos_models.nets.checkpoint import config_from_checkpoint, write_weights
from cosmos_models.training import objective as flow
from cosmos_models.training import parallel, sac, sharded_init
from cosmos_models.training.ema import EMA
from cosmos_models.training.runner import Run, RunConfig, RunShape, resolve_run

CONDITIONS = ("none", "final", "early")


@dataclass
class DistillConfig(RunConfig):
    """Everything a distillation run depends on: the shared run settings (RunConfig) and rCM's.
    `config` None: the one the teacher file records."""

    teacher: str = ""
    config: str | None = None
    out: str = "runs/distill"
    steps: int = 100
    save_every: int = 500
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


def _config_name(cfg: DistillConfig) -> str:
    if cfg.config:
        return cfg.config
    name = config_from_checkpoint(cfg.teacher) if cfg.teacher.endswith(".safetensors") else None
    if name is None:
        raise ValueError(f"--config is needed (the teacher checkpoint records none); known configs: {cm.configs()}")
    return name


class Distiller(Run):
    """A distillation run. `Distiller(cfg).train()` runs cfg.steps iterations (resuming when
    cfg.resume) and returns [(iteration, loss)]; `close()` releases the process group it made."""

    name = "distill"

    def __init__(self, cfg: DistillConfig, *, batches=None):
        if not cfg.teacher:
            raise ValueError("--teacher is required: the weights to distill (ours, official or diffusers names), "
                             "e.g. the ema.safetensors of a `cosmos train` run")
        if not os.path.exists(cfg.teacher):
            raise FileNotFoundError(f"--teacher {cfg.teacher!r}: no such file or folder")
        if cfg.condition not in CONDITIONS:
            raise ValueError(f"--condition {cfg.condition!r}: expected one of {CONDITIONS}")
        if not cfg.config:
            cfg = dataclasses.replace(cfg, config=_config_name(cfg))
        super().__init__(cfg, batches=batches)

    def resolve(self, *, needs_data: bool = True) -> RunShape:
        return resolve_run(self.cfg, self.layout.device.type, needs_data=needs_data)

    def recipe(self) -> dict:
        return {"tangent_warmup": rcm_config(self.cfg, one_pass_jvp=True).tangent_warmup}

    def identity(self) -> dict:
        teacher = os.path.abspath(self.cfg.teacher)
        size = os.path.getsize(teacher) if os.path.isfile(teacher) else None
        return {**super().identity(), "teacher": {"path": teacher, "bytes": size}, "condition": self.cfg.condition}

    # ------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg, lay, r = self.cfg, self.layout, self.shape
        compute = self.compute_dtype
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
                self.print(f"cosmos distill: this torch ({torch.__version__}) cannot run torch.func.jvp through "
                           f"FSDP2; one process runs the networks unsharded in fp32 instead of {r.precision}")
            compute = None

        # the teacher's weights once on the CPU (as stored); each network is built on meta, sharded,
        # allocated shard by shard and loaded from them: no GPU holds a full network
        weights = checkpoint.matched_state_dict(checkpoint.meta_network(self.model_cfg), cfg.teacher, prefer_ema=True)

        def network(grad: bool, policy: str = "none"):
            net = cm.build(self.model_cfg, device="meta", dtype=torch.float32, cp_group=lay.cp_group)
            net.set_context_parallel_group(lay.cp_group, overlap_chunks=cfg.cp_overlap_chunks)
            net.requires_grad_(grad)
            sac.apply(net, policy)
            if self.sharded:
                parallel.shard_model(net, lay, compute)
            net.to_empty(device=lay.device)
            sharded_init.load(net, weights)
            return net

        self.rcm = rcm_config(cfg, one_pass_jvp=sac.check_policy(r.sac) is None)
        self.teacher = network(False)
        self.student = network(True, r.sac)
        self.fake_score = network(True, r.sac) if self.rcm.uses_dmd else None
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
            from cosmos_models.sampling.sampler import load_tensor
            neg = load_tensor(cfg.negative_prompt_embedding).float()
            self.negative = fit_text(neg if neg.dim() == 2 else neg[0], self.model_cfg.text_len).to(lay.device)

    # ------------------------------------------------------------------------------------------ one iteration
    def make_batch(self, batch: dict, iteration: int) -> tuple[distill.Batch, distill.Draws]:
        """The objective's inputs for this rank: latents, text, the unconditional text, conditioning
        frames, and the per-sample draws (counter-seeded by (seed, iteration, global sample index))."""
        lay = self.layout
        rows = torch.arange(int(batch["index"].shape[0]))
        x0 = self.latents(batch, rows, broadcast=lay.cp > 1 and "latent" not in batch)
        text = batch["text"].to(lay.device, torch.float32)
        ids = [j * lay.dp_size + lay.dp_rank for j in range(x0.shape[0])]
        gens = [self.generator(iteration, i) for i in ids]
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
        batch, draws = self.make_batch(self.next_batch(), it)
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
        # sum: scale by cp, as the trainer does for video batches (cosmos_models/training/parallel.py)
        (loss * lay.cp).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), math.inf)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        values = torch.stack([loss.detach().double().reshape(()),
                              *(v.double().mean() for v in metrics.values() if isinstance(v, Tensor))])
        dist.all_reduce(values)
        values = (values / lay.world).tolist()  # every rank of a cp group holds the same values
        # a non-finite loss or gradient (global values: every rank decides alike) skips the update
        skipped = not (math.isfinite(values[0]) and math.isfinite(grad_norm))
        if not skipped:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if student_turn and not skipped:
            self.ema.update(self.student)
        self.step += 1
        names = [k for k, v in metrics.items() if isinstance(v, Tensor)]
        record = {"step": self.step, "kind": "student" if student_turn else "fake_score", "loss": values[0],
                  **dict(zip(names, values[1:])), "grad_norm": grad_norm, "skipped": skipped,
                  "step_time_s": time.perf_counter() - start}
        record.update({k: v for k, v in metrics.items() if not isinstance(v, Tensor)})
        return record

    # ------------------------------------------------------------------------------------------ logs
    def banner(self) -> str:
        r, lay, rcm = self.shape, self.layout, self.rcm
        return (f"cosmos distill: {self.model_cfg.name} from {self.cfg.teacher} on {lay.describe()}, {r.precision}, "
                f"sac={r.sac} ({'one-pass' if rcm.one_pass_jvp else 'separate'} JVP), clips {r.frames}x{r.size[0]}x"
                f"{r.size[1]} from {self.data_root}, batch {self.cfg.batch}/dp group x {lay.dp_size}, guidance "
                f"{rcm.teacher_guidance}, tangent warmup {rcm.tangent_warmup}, lr {rcm.student_lr:g}/{rcm.fake_lr:g}, "
                f"DMD {'on' if rcm.uses_dmd else 'off'}, steps {self.step}->{self.cfg.steps}, out {self.cfg.out}")

    def summarize(self, window: list[dict]) -> tuple[dict, str]:
        last = window[-1]
        record = {"step": last["step"], "losses": [w["loss"] for w in window], "kinds": [w["kind"] for w in window],
                  "step_time_s": sum(w["step_time_s"] for w in window) / len(window), "r": last.get("r")}
        for key in ("loss_scm", "loss_dmd", "loss_fake", "tangent_rms"):
            seen = [w[key] for w in window if key in w]
            if seen:
                record[key] = sum(seen) / len(seen)
        parts = [f"{k} {record[k]:.4g}" for k in ("loss_scm", "loss_dmd", "loss_fake") if k in record]
        return record, f"iter {record['step']:>7d}  {'  '.join(parts)}  {record['step_time_s']:.3f} s/iter"

    # ------------------------------------------------------------------------------------------ checkpoints
    def model_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        student, opt_student = get_state_dict(self.student, self.opt_student)
        state = {"student": student, "opt_student": opt_student, "ema": self.ema.shadow,
                 "distiller": {"ema_updates": self.ema.updates}}
        if self.opt_fake is not None:
            state["fake_score"], state["opt_fake"] = get_state_dict(self.fake_score, self.opt_fake)
        return state

    def restore(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.student, self.opt_student, model_state_dict=state["student"],
                       optim_state_dict=state["opt_student"])
        if self.opt_fake is not None:
            set_state_dict(self.fake_score, self.opt_fake, model_state_dict=state["fake_score"],
                           optim_state_dict=state["opt_fake"])
        self.ema.load_state_dict({"shadow": state["ema"], "updates": state["distiller"]["ema_updates"]})

    def export(self) -> None:
        self.export_student(os.path.join(self.cfg.out, "student.safetensors"),
                            os.path.join(self.cfg.out, "student_ema.safetensors"))

    def export_student(self, student_path: str, ema_path: str | None = None) -> None:
        """The student (and its EMA) as safetensors with our names (rank 0 writes; every rank gathers)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        write_weights(self.model_cfg, full if self.is_main else None, student_path)
        if ema_path is not None:
            write_weights(self.model_cfg, self.ema.full_state_dict(), ema_path)


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
