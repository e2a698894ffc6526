"""rCM timestep distillation of a rectified-flow teacher (sCM with forward-mode JVP + DMD), and the
few-step sampler of the distilled student. The training loop is `cosmos_models.distill.distiller`,
the `cosmos distill` command `cosmos_models.cli.distill`.

Sources: NVlabs/rcm `rcm/models/t2v_model_distill_rcm.py` (the code; followed where it and a paper
differ), `rcm/utils/denoiser_scaling.py`, its Wan2.1 experiment config; sCM = Lu & Song,
"Simplifying, Stabilizing and Scaling Continuous-Time Consistency Models" (arXiv 2410.11081);
rCM = Zheng et al., "Large Scale Diffusion Distillation via Score-Regularized Continuous-Time
Consistency" (arXiv 2510.08431); DMD = Yin et al. (arXiv 2311.18828).

TrigFlow around the rectified-flow network (RectifiedFlow_TrigFlowWrapper, σ_data = 1):

    x_t = cos t·x0 + sin t·ε,  t ∈ [0, π/2]        (RF: x_s = x_t/(cos t + sin t), s = sin/(cos + sin))
    c_skip = c_in = 1/(cos t + sin t),  c_out = −sin t/(cos t + sin t),  c_noise = s = sin/(cos + sin)
    v = net(c_in·x_t, s / timestep_scale, ...)      (the DiT's official timestep scale: 1000·s)
    x̂0 = c_skip·x_t + c_out·v  (= x_s − s·v),       F = (cos t·x_t − x̂0)/sin t

sCM student term (training_step_generator):

    σ ~ exp(N(p_mean, p_std²))·√T (video batches, T latent frames: adjust_video_noise),  t = atan σ
    F_T = F_c + g_cfg·(F_c − F_u)                   teacher with CFG in the official form, no grad
    (F_θ, ∂F) = jvp(F_θ(·, ·), (x_t, t), (cos t·sin t·F_T, cos t·sin t))   forward-mode through the DiT
    r = min(1, iteration / tangent_warmup)
    g = −cos t·√(1 − r² sin² t)·(F_θ⁻ − F_T) − r·(cos t·sin t·x_t + ∂F)      (F_θ⁻ = sg(F_θ))
    g ← g / (‖g‖₂ + 0.1)                            per sample, over (C, T, H, W), in float64
    L_sCM = 100 · Σ_{C,T,H,W} (F_θ − F_θ⁻ − g)²     per sample

∂F is cos t·sin t·dF_θ⁻/dt along the teacher's ODE dx/dt = F_T (the tangents carry the cos·sin
factor: sCM §5.1 "JVP rearrangement"); with r = 1, g = cos t·d f_θ/dt for the consistency function
f_θ = cos t·x_t − sin t·F_θ, so g = 0 exactly when the student is consistent along the teacher ODE.
(DESIGN.md's shorthand "− (r·cos·sin·x_t + dF/dt)" is this with r multiplying both terms, as the code
does.) The JVP and the student's differentiable forward are ONE pass here (RCMConfig.one_pass_jvp):
torch.func.jvp returns F_θ with its reverse-mode graph to the parameters, ∂F is detached (a target);
rCM runs the JVP under no_grad and a second forward (one_pass_jvp=False, needed with activation
checkpointing, whose backward recomputation cannot replay a forward-mode forward). Attention inside
takes the fused JVP kernel (the forward-AD rule of cosmos_kernels.flash_attention), every other op
its custom JVP rule.

DMD student term (after the tangent warmup, in student iterations):

    G-chain: x = ε₀ at t = π/2; n = effective_iteration mod max_simulation_steps times:
             x̂0 = student(x, t) (no grad); t ← min(t_D, t); x = cos t·x̂0 + sin t·ε_k
    G = x̂0_θ(x, t)                                  student, with grad
    t_D = atan(σ_D/(1 − σ_D)),  σ_D = shift·u/(1 + (shift − 1)·u),  u ~ U(0, 1)   (timestep_shift 5)
    x_D = cos t_D·G + sin t_D·ε
    grad = (x̂0_fake(x_D) − x̂0_teacher,cfg(x_D)) / max(mean|G − x̂0_teacher,cfg(x_D)|, 1e-5)
    L_DMD = Σ (G − sg(G − grad))²                   per sample, float64

Fake-score (critic) iterations, every iteration that is not a student one:

    G from the (frozen) student's chain as above (no grad), x_D as above,
    L_fake = Σ (G − x̂0_fake(x_D))² / sin² t_D

Schedule: the student is updated at iterations i < tangent_warmup and at i ≡ 0 mod
student_update_freq (5) after, the fake score at the others; DMD needs the fake score, so it starts
after the warmup. Loss of a step = mean over the batch of (loss_scale_scm·L_sCM + loss_scale_dmd·L_DMD)
or of loss_scale_fake·L_fake. Samples with a NaN in g or F_θ (or in L_DMD) contribute 0 (rCM).
Optimizers (distiller.py): AdamW β = (0, 0.999), weight decay 0.01, lr 2e-6 (student) / 4e-7 (fake).

Conditioning frames (Image/Video2World; an extension of rCM, which distills Text2World): frames
with mask m = 1 hold ground truth at the official conditioning timestep s_c (1e-4): their TrigFlow
time is t_c = atan(s_c/(1 − s_c)) and their state gt·(cos t_c + sin t_c), so the network sees gt and
s_c as in flow-matching training. Their tangents are 0, g is set to 0 on them before the
normalization (so their sCM loss and gradient are 0), and the DMD / fake-score terms ignore them.

Few-step sampler (generate_samples_from_batch): t = [atan σ_max (80), *mid_t, 0], mid_t = (1.5, 1.4, 1.0)
for 4 steps; each step x̂0 = student(x, t_i), then x ← cos t_{i+1}·x̂0 + sin t_{i+1}·ε_fresh (the last
step returns x̂0). No classifier-free guidance: the student learned the guided teacher.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from cosmos_models.sampling.sampler import Sampler

DEFAULT_MID_T = (1.5, 1.4, 1.0)
DEFAULT_SIGMA_MAX = 80.0
STUDENT_STEPS = 4             # the few-step sampler's default (rCM's 4 steps)
CONDITION_SIGMA = 1e-4        # RF timestep of conditioning frames (the public pipeline's)
_DIMS = (1, 2, 3, 4)          # per-sample reductions over (C, T, H, W)


@dataclass(frozen=True)
class RCMConfig:
    """Weights and schedules of the rCM objective (defaults: NVlabs/rcm, Wan2.1 1.3B T2V run)."""

    teacher_guidance: float = 5.0       # CFG of the teacher, official form cond + g·(cond − uncond)
    tangent_warmup: int = 1000          # iterations over which r rises 0 -> 1; DMD starts after it
    loss_scale_scm: float = 100.0
    loss_scale_dmd: float = 1.0         # 0: sCM only (no fake score network)
    loss_scale_fake: float = 1.0
    student_update_freq: int = 5        # after the warmup: 1 student iteration per this many
    max_simulation_steps: int = 4       # the G-chain runs 0 .. this − 1 student steps (1-4 evaluations)
    tangent_norm_eps: float = 0.1       # g / (‖g‖ + eps)
    p_mean: float = -0.8                # sCM times: ln σ ~ N(p_mean, p_std²), t = atan σ
    p_std: float = 1.6
    adjust_video_noise: bool = True     # σ·√T for video batches (T latent frames)
    dmd_shift: float = 5.0              # DMD re-noising times: shifted uniform RF time
    dmd_min_weight: float = 1e-5
    sigma_max: float = DEFAULT_SIGMA_MAX
    condition_sigma: float = CONDITION_SIGMA
    # True: one student pass under torch.func.jvp gives F_θ (with its reverse-mode graph) and ∂F. False:
    # the JVP runs under no_grad, then a plain forward gives F_θ (rCM's way): one forward more, no
    # tangent graph kept, and the only way with activation checkpointing, whose recomputation in the
    # backward cannot replay a forward-AD forward
    one_pass_jvp: bool = True
    student_lr: float = 2e-6
    fake_lr: float = 4e-7
    betas: tuple[float, float] = (0.0, 0.999)
    weight_decay: float = 0.01

    def __post_init__(self):
        for name in ("teacher_guidance", "loss_scale_scm", "loss_scale_dmd", "loss_scale_fake", "tangent_norm_eps",
                     "p_std", "dmd_min_weight", "weight_decay"):
            _check_real(name, getattr(self, name), 0.0)
        for name in ("dmd_shift", "sigma_max", "student_lr", "fake_lr"):
            _check_real(name, getattr(self, name), 0.0, strict=True)
        _check_real("p_mean", self.p_mean, -math.inf)
        for name, low in (("tangent_warmup", 0), ("student_update_freq", 1), ("max_simulation_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"RCMConfig.{name} must be an int >= {low}, got {value!r}")
        if not 0.0 < self.condition_sigma < 1.0:
            raise ValueError(f"RCMConfig.condition_sigma must be in (0, 1), got {self.condition_sigma!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"RCMConfig.betas must be two numbers in [0, 1), got {self.betas!r}")

    @property
    def uses_dmd(self) -> bool:
        return self.loss_scale_dmd > 0

    # -- the alternation (rCM is_student_phase / get_effective_iteration) ---------------------------
    def is_student_iteration(self, iteration: int) -> bool:
        return (not self.uses_dmd or iteration < self.tangent_warmup
                or iteration % self.student_update_freq == 0)

    def student_iteration_count(self, iteration: int) -> int:
        """Student updates before `iteration` (its index among the student iterations)."""
        if not self.uses_dmd or iteration < self.tangent_warmup:
            return iteration
        return self.tangent_warmup + (iteration - self.tangent_warmup) // self.student_update_freq

    def fake_iteration_count(self, iteration: int) -> int:
        return iteration - self.student_iteration_count(iteration) - 1

    def dmd_active(self, iteration: int) -> bool:
        return self.uses_dmd and iteration > self.tangent_warmup

    def warmup_ratio(self, iteration: int) -> float:
        return 1.0 if self.tangent_warmup == 0 else min(1.0, iteration / self.tangent_warmup)


def _check_real(name: str, value, low: float, strict: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"RCMConfig.{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")


# ----------------------------------------------------------------------------- TrigFlow wrapper
class Prediction(NamedTuple):
    x0: Tensor   # clean-data prediction
    F: Tensor    # TrigFlow prediction (cos t·x_t − x0)/sin t


def trigflow_coefficients(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) of TrigFlow time t around a rectified-flow network; c_noise is
    the RF time s = sin/(cos + sin) ∈ [0, 1] (rCM multiplies it by 1000, the official timestep scale)."""
    cos, sin = torch.cos(t), torch.sin(t)
    denom = cos + sin
    return 1 / denom, -sin / denom, 1 / denom, sin / denom


def rf_to_trig(s) -> float | Tensor:
    """TrigFlow time of RF time s: tan t = s/(1 − s)."""
    if isinstance(s, Tensor):
        return torch.atan2(s, 1 - s)
    return math.atan2(s, 1 - s)


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def frame_times(t: Tensor, batch: int) -> Tensor:
    """(B,) per-sample or (B, T) per-frame TrigFlow times -> (B, 1 | T)."""
    if t.dim() == 1 and t.shape[0] == batch:
        return t[:, None]
    if t.dim() == 2 and t.shape[0] == batch:
        return t
    raise ValueError(f"t must be (B,) or (B, T) with B={batch}, got shape {tuple(t.shape)}")


def _bcast(t_frames: Tensor, like: Tensor) -> Tensor:
    return t_frames.to(like.dtype)[:, None, :, None, None]


def denoise(net: nn.Module, x_t: Tensor, t: Tensor, context: Tensor, *, condition_mask: Tensor | None = None,
            model_inputs: Mapping | None = None) -> Prediction:
    """The rectified-flow DiT `net` as a TrigFlow denoiser at time t ((B,) or (B, T) per frame).

    The wrapper math runs in x_t's precision (fp32, fp64 for fp64 checks); the DiT casts its input to
    its own compute dtype. Differentiable (reverse and forward mode) in x_t, t and the parameters."""
    acc = _acc_dtype(x_t)
    tf = frame_times(t, x_t.shape[0])
    c_skip, c_out, c_in, s = (c.to(acc) for c in trigflow_coefficients(tf))
    shape = lambda c: c[:, None, :, None, None]  # noqa: E731 - (B, T) -> (B, 1, T, 1, 1)
    v = net(x_t * shape(c_in), s / net.config.timestep_scale, context, condition_video_input_mask=condition_mask,
            **dict(model_inputs or {}))
    x0 = shape(c_skip) * x_t + shape(c_out) * v.to(acc)
    t5 = _bcast(tf, x0)
    return Prediction(x0, (torch.cos(t5) * x_t - x0) / torch.sin(t5))


def guided(cond: Prediction, uncond: Prediction | None, guidance: float) -> Prediction:
    """Classifier-free guidance in the official form cond + g·(cond − uncond), on x0 and F alike."""
    if guidance == 0:
        return cond
    return Prediction(*(c + guidance * (c - u) for c, u in zip(cond, uncond)))


def teacher_prediction(teacher: nn.Module, x_t: Tensor, t: Tensor, context: Tensor, negative_context: Tensor | None,
                       guidance: float, **kw) -> Prediction:
    with torch.no_grad():
        cond = denoise(teacher, x_t, t, context, **kw)
        uncond = denoise(teacher, x_t, t, negative_context, **kw) if guidance > 0 else None
        return guided(cond, uncond, guidance)


def student_jvp(student: nn.Module, x_t: Tensor, t: Tensor, tangent_x: Tensor, tangent_t: Tensor, context: Tensor,
                **kw) -> tuple[Tensor, Tensor]:
    """(F_θ, ∂F): the student's F at (x_t, t), differentiable in reverse mode w.r.t. its parameters,
    and its directional derivative along (tangent_x, tangent_t), detached. One forward pass under
    torch.func.jvp (which works through FSDP2-sharded modules and the context-parallel DiT)."""
    def f(x: Tensor, time: Tensor) -> Tensor:
        return denoise(student, x, time, context, **kw).F

    F, dF = torch.func.jvp(f, (x_t, t), (tangent_x, tangent_t))
    return F, dF.detach()


# ----------------------------------------------------------------------------- the sCM term
def scm_tangents(x_t: Tensor, t_frames: Tensor, F_teacher: Tensor,
                 frames: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(t_x, t_t) = (cos t·sin t·F_T, cos t·sin t): the ODE direction dx/dt = F_T, dt/dt = 1, times
    cos·sin; zero on conditioning frames (frames (B, T) == 1), which do not move."""
    cs = torch.cos(t_frames) * torch.sin(t_frames)
    if frames is not None:
        cs = cs * (1 - frames.to(cs.dtype))
    return _bcast(cs, x_t) * F_teacher, cs


def scm_direction(F_sg: Tensor, F_teacher: Tensor, x_t: Tensor, dF: Tensor, t_frames: Tensor, r: float) -> Tensor:
    """g = −cos t·√(1 − r² sin² t)·(F⁻ − F_T) − r·(cos t·sin t·x_t + ∂F) (before normalization)."""
    cos, sin = torch.cos(_bcast(t_frames, x_t)), torch.sin(_bcast(t_frames, x_t))
    return -cos * torch.sqrt(1 - r ** 2 * sin ** 2) * (F_sg - F_teacher) - r * (cos * sin * x_t + dF)


def normalize_tangent(g: Tensor, eps: float = 0.1) -> Tensor:
    """g/(‖g‖₂ + eps) per sample over (C, T, H, W), in float64 (rCM)."""
    g = g.double()
    return g / (g.norm(p=2, dim=_DIMS, keepdim=True) + eps)


def nan_samples(*tensors: Tensor) -> Tensor:
    """(B,) bool: samples with a NaN in any of the tensors."""
    bad = torch.zeros(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        bad |= torch.isnan(t.detach()).flatten(1).any(1)
    return bad


def scm_loss(F: Tensor, g: Tensor, scale: float = 100.0) -> Tensor:
    """Per-sample scale·Σ(F − sg(F) − g)²: its gradient w.r.t. F is −2·scale·g (F is pushed along g)."""
    return scale * (F - F.detach() - g).square().sum(_DIMS)


# ----------------------------------------------------------------------------- the DMD and fake-score terms
def dmd_loss(G: Tensor, x0_fake: Tensor, x0_teacher: Tensor, min_weight: float = 1e-5,
             keep: Tensor | None = None) -> Tensor:
    """Per-sample Σ(G − sg(G − grad))², grad = (x̂0_fake − x̂0_teacher)/max(mean|G − x̂0_teacher|, min_weight):
    its gradient w.r.t. G is 2·grad. `keep` (broadcastable, 1 = counted) masks conditioning frames;
    NaN samples give 0."""
    G64, fake, teach = G.double(), x0_fake.detach().double(), x0_teacher.detach().double()
    keep64 = torch.ones_like(G64[:, :1]) if keep is None else keep.double().expand_as(G64[:, :1])
    with torch.no_grad():
        diff = (G64 - teach).abs() * keep64
        count = keep64.expand_as(G64).sum(_DIMS, keepdim=True).clamp_min(1)
        weight = (diff.sum(_DIMS, keepdim=True) / count).clamp_min(min_weight)
    grad = (fake - teach) / weight * keep64
    loss = (G64 - (G64 - grad).detach()).square()
    return torch.where(nan_samples(loss), torch.zeros((), dtype=loss.dtype, device=loss.device), loss.sum(_DIMS))


def fake_score_loss(G: Tensor, x0_fake: Tensor, t_frames: Tensor, keep: Tensor | None = None) -> Tensor:
    """Per-sample Σ(G − x̂0_fake)²/sin² t (denoising score matching of the fake score on student samples)."""
    err = (G.detach() - x0_fake).square() / torch.sin(_bcast(t_frames, x0_fake)) ** 2
    if keep is not None:
        err = err * keep.to(err.dtype)
    return err.sum(_DIMS)


# ----------------------------------------------------------------------------- random draws
class Draws(NamedTuple):
    """Everything random in one iteration, drawn per sample from its own generator in a fixed order
    and amount (so a run is reproducible whatever the batch split, and resumes exactly)."""

    t: Tensor            # (B,) sCM time (float64)
    eps: Tensor          # sCM noise
    chain_noise: Tensor  # (S, B, C, T, H, W): G-chain start and re-noising noises (S = max_simulation_steps)
    chain_t: Tensor      # (S, B) G-chain re-noising times (float64)
    dmd_t: Tensor        # (B,) DMD / fake-score time (float64)
    dmd_noise: Tensor


def sample_scm_time(n: int, generator: torch.Generator, cfg: RCMConfig, latent_frames: int) -> Tensor:
    """t = atan σ, ln σ ~ N(p_mean, p_std²), σ·√T for videos with adjust_video_noise (rCM draw_training_time)."""
    sigma = torch.exp(cfg.p_mean + cfg.p_std * torch.randn(n, generator=generator, dtype=torch.float64))
    if cfg.adjust_video_noise and latent_frames > 1:
        sigma = sigma * math.sqrt(latent_frames)
    return torch.atan(sigma)


def sample_dmd_time(n: int, generator: torch.Generator, cfg: RCMConfig) -> Tensor:
    """t = atan(σ/(1 − σ)), σ = shift·u/(1 + (shift − 1)·u), u ~ U(0, 1) (rCM draw_training_time_D)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return rf_to_trig(cfg.dmd_shift * u / (1 + (cfg.dmd_shift - 1) * u))


def draw(generators: Sequence[torch.Generator], shape: Sequence[int], cfg: RCMConfig, *, device=None,
         dtype: torch.dtype = torch.float32) -> Draws:
    """One iteration's draws for len(generators) samples of latent shape (C, T, H, W)."""
    parts = []
    S = cfg.max_simulation_steps
    T = shape[1]
    for g in generators:
        randn = lambda *lead: torch.randn(*lead, *shape, generator=g, dtype=dtype)  # noqa: E731
        parts.append(Draws(sample_scm_time(1, g, cfg, T), randn(1), randn(S, 1),
                           sample_dmd_time(S, g, cfg)[:, None], sample_dmd_time(1, g, cfg), randn(1)))
    cat = lambda i, dim=0: torch.cat([p[i] for p in parts], dim).to(device)  # noqa: E731
    return Draws(cat(0), cat(1), cat(2, 1), cat(3, 1), cat(4), cat(5))


# ----------------------------------------------------------------------------- conditioning frames
@dataclass
class Condition:
    """Conditioning frames of a batch: gt (B, C, T, H, W), frames (B, T) with 1 on conditioning frames."""

    gt: Tensor
    frames: Tensor
    sigma: float = CONDITION_SIGMA

    @property
    def t(self) -> float:
        return rf_to_trig(self.sigma)

    def times(self, t: Tensor) -> Tensor:
        """Per-frame times (B, T) from per-sample or per-frame t: t_c on conditioning frames."""
        tf = frame_times(t, self.frames.shape[0]).expand(-1, self.frames.shape[1])
        return torch.where(self.frames.bool(), torch.full_like(tf, self.t), tf)

    def impose(self, x: Tensor) -> Tensor:
        """The state with conditioning frames at gt·(cos t_c + sin t_c) (the network then sees gt)."""
        m = self.frames.to(x.dtype)[:, None, :, None, None]
        return x * (1 - m) + self.gt.to(x.dtype) * (math.cos(self.t) + math.sin(self.t)) * m

    def replace_x0(self, x0: Tensor) -> Tensor:
        m = self.frames.to(x0.dtype)[:, None, :, None, None]
        return x0 * (1 - m) + self.gt.to(x0.dtype) * m

    def keep(self, like: Tensor) -> Tensor:
        """(B, 1, T, 1, 1): 1 on generated frames."""
        return (1 - self.frames.to(like.dtype))[:, None, :, None, None]

    def mask_channel(self, like: Tensor) -> Tensor:
        B, _, T, H, W = like.shape
        return self.frames.to(like.dtype)[:, None, :, None, None].expand(B, 1, T, H, W)


def _state(x: Tensor, cond: Condition | None) -> Tensor:
    return x if cond is None else cond.impose(x)


def _times(t: Tensor, cond: Condition | None) -> Tensor:
    return frame_times(t, t.shape[0]) if cond is None else cond.times(t)


def _net_kw(cond: Condition | None, like: Tensor, model_inputs: Mapping | None) -> dict:
    return {"condition_mask": None if cond is None else cond.mask_channel(like), "model_inputs": model_inputs}


# ----------------------------------------------------------------------------- one iteration's losses
@dataclass
class Batch:
    """One iteration's inputs: clean latents x0 (B, C, T, H, W), text context (B, N, C'), the
    unconditional context for the teacher's CFG, optional conditioning frames and variant inputs."""

    x0: Tensor
    context: Tensor
    negative_context: Tensor | None = None
    condition: Condition | None = None
    model_inputs: Mapping | None = None


def generator_chain(student: nn.Module, batch: Batch, draws: Draws, steps: int) -> tuple[Tensor, Tensor]:
    """The student's backward simulation: (x, t) after `steps` re-noised student steps from pure noise
    at t = π/2 (rCM's G-chain; it starts from cos(π/2)·x0 + ε, i.e. ε up to 6e-17·x0)."""
    cond, kw = batch.condition, _net_kw(batch.condition, batch.x0, batch.model_inputs)
    t = torch.full_like(draws.t, math.pi / 2)
    x = _state(draws.chain_noise[0].to(batch.x0.dtype), cond)
    for k in range(steps):
        with torch.no_grad():
            x0 = denoise(student, x, _times(t, cond), batch.context, **kw).x0
        t = torch.minimum(draws.chain_t[k], t)
        c = _bcast(t[:, None], x0)
        x = _state(torch.cos(c) * x0 + torch.sin(c) * draws.chain_noise[k + 1].to(x0.dtype), cond)
    return x, t


def _renoise(G: Tensor, draws: Draws, cond: Condition | None) -> Tensor:
    c = _bcast(draws.dmd_t[:, None], G)
    return _state(torch.cos(c) * G + torch.sin(c) * draws.dmd_noise.to(G.dtype), cond)


def student_loss(student: nn.Module, teacher: nn.Module, fake_score: nn.Module | None, batch: Batch, draws: Draws,
                 cfg: RCMConfig, iteration: int) -> tuple[Tensor, dict]:
    """Per-sample loss (B,) of a student iteration (sCM, + DMD after the warmup) and metrics."""
    x0, cond = batch.x0, batch.condition
    kw = _net_kw(cond, x0, batch.model_inputs)
    tf = _times(draws.t, cond)
    c = _bcast(draws.t[:, None], x0)
    x_t = _state(torch.cos(c) * x0 + torch.sin(c) * draws.eps.to(x0.dtype), cond)
    F_T = teacher_prediction(teacher, x_t, tf, batch.context, batch.negative_context, cfg.teacher_guidance, **kw).F
    frames = None if cond is None else cond.frames
    tx, tt = scm_tangents(x_t, tf, F_T, frames)
    if cfg.one_pass_jvp:
        F, dF = student_jvp(student, x_t, tf, tx, tt, batch.context, **kw)
    else:
        with torch.no_grad():
            _, dF = student_jvp(student, x_t, tf, tx, tt, batch.context, **kw)
        F = denoise(student, x_t, tf, batch.context, **kw).F
    F_sg = F.detach()
    r = cfg.warmup_ratio(iteration)
    g = scm_direction(F_sg, F_T, x_t, dF, tf, r)
    if cond is not None:
        g = g * cond.keep(g)
    bad = nan_samples(g, F)
    zero = torch.zeros((), dtype=F.dtype, device=F.device)
    bad5 = bad[:, None, None, None, None]
    F = torch.where(bad5, zero, F)
    g = torch.where(bad5, zero.to(g.dtype), normalize_tangent(torch.where(bad5, zero, g), cfg.tangent_norm_eps))
    loss_scm = scm_loss(F, g, cfg.loss_scale_scm)
    loss = loss_scm
    metrics = {"loss_scm": loss_scm.detach(), "r": r, "nan_samples": int(bad.sum()),
               "tangent_rms": dF.double().square().mean().sqrt().detach()}
    if cfg.dmd_active(iteration) and fake_score is not None:
        steps = cfg.student_iteration_count(iteration) % cfg.max_simulation_steps
        x_g, t_g = generator_chain(student, batch, draws, steps)
        G = denoise(student, x_g, _times(t_g, cond), batch.context, **kw).x0
        if cond is not None:
            G = cond.replace_x0(G)
        x_d = _renoise(G.detach(), draws, cond)
        td = _times(draws.dmd_t, cond)
        with torch.no_grad():
            x0_fake = denoise(fake_score, x_d, td, batch.context, **kw).x0
        x0_teacher = teacher_prediction(teacher, x_d, td, batch.context, batch.negative_context,
                                        cfg.teacher_guidance, **kw).x0
        loss_dmd = dmd_loss(G, x0_fake, x0_teacher, cfg.dmd_min_weight, None if cond is None else cond.keep(G))
        loss = loss + cfg.loss_scale_dmd * loss_dmd
        metrics["loss_dmd"] = loss_dmd.detach()
    return loss, metrics


def fake_score_step_loss(student: nn.Module, fake_score: nn.Module, batch: Batch, draws: Draws, cfg: RCMConfig,
                         iteration: int) -> tuple[Tensor, dict]:
    """Per-sample loss (B,) of a fake-score (critic) iteration and metrics."""
    cond = batch.condition
    kw = _net_kw(cond, batch.x0, batch.model_inputs)
    steps = cfg.fake_iteration_count(iteration) % cfg.max_simulation_steps
    x_g, t_g = generator_chain(student, batch, draws, steps)
    with torch.no_grad():
        G = denoise(student, x_g, _times(t_g, cond), batch.context, **kw).x0
        if cond is not None:
            G = cond.replace_x0(G)
    x_d = _renoise(G, draws, cond)
    td = _times(draws.dmd_t, cond)
    x0_fake = denoise(fake_score, x_d, td, batch.context, **kw).x0
    loss = cfg.loss_scale_fake * fake_score_loss(G, x0_fake, td, None if cond is None else cond.keep(G))
    return loss, {"loss_fake": loss.detach()}


# ----------------------------------------------------------------------------- the few-step sampler
def sampling_times(steps: int = 4, mid_t: Sequence[float] | None = None,
                   sigma_max: float = DEFAULT_SIGMA_MAX) -> list[float]:
    """[atan σ_max, *mid_t, 0]: steps + 1 TrigFlow times. mid_t defaults to the first steps − 1 of
    (1.5, 1.4, 1.0); more than 4 steps need an explicit mid_t (steps − 1 decreasing times)."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if mid_t is None:
        if steps - 1 > len(DEFAULT_MID_T):
            raise ValueError(f"steps={steps}: the default intermediate times {DEFAULT_MID_T} cover up to "
                             f"{len(DEFAULT_MID_T) + 1} steps; pass mid_t with {steps - 1} times")
        mid_t = DEFAULT_MID_T[:steps - 1]
    mid = [float(v) for v in mid_t]
    first = math.atan(sigma_max)
    grid = [first, *mid, 0.0]
    if len(mid) != steps - 1:
        raise ValueError(f"mid_t has {len(mid)} times; {steps} steps need {steps - 1}")
    if any(not (a > b) for a, b in zip(grid, grid[1:])):
        raise ValueError(f"sampling times must decrease strictly from atan({sigma_max}) = {first:.4f} to 0, "
                         f"got {grid}")
    return grid


@torch.no_grad()
def few_step_sample(student: nn.Module, noise: Tensor, context: Tensor, *, generator: torch.Generator,
                    steps: int = 4, mid_t: Sequence[float] | None = None, sigma_max: float = DEFAULT_SIGMA_MAX,
                    condition: Condition | None = None, model_inputs: Mapping | None = None,
                    progress=None) -> Tensor:
    """Samples (B, C, T, H, W) in noise's dtype: x = noise at t_0 = atan σ_max; per step x̂0 =
    student(x, t_i), then x = cos t_{i+1}·x̂0 + sin t_{i+1}·ε (fresh noise from `generator`);
    the last x̂0 is returned. Conditioning frames are held at gt."""
    grid = sampling_times(steps, mid_t, sigma_max)
    acc = _acc_dtype(noise)
    x = _state(noise.to(acc), condition)
    kw = _net_kw(condition, noise, model_inputs)
    B = noise.shape[0]
    for i, (t_cur, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        t = torch.full((B,), t_cur, dtype=torch.float64, device=noise.device)
        x0 = denoise(student, x, _times(t, condition), context, **kw).x0
        if condition is not None:
            x0 = condition.replace_x0(x0)
        if t_next > 0:
            fresh = torch.randn(noise.shape, generator=generator, device=generator.device, dtype=noise.dtype)
            x = _state(math.cos(t_next) * x0 + math.sin(t_next) * fresh.to(noise.device, acc), condition)
        else:
            x = x0
        if progress is not None:
            progress(i + 1, len(grid) - 1)
    return x.to(noise.dtype)


class StudentSampler(Sampler):
    """The sampling pipeline (cosmos_models.sampling.sampler.Sampler: every mode, conditioning frames, long
    videos, VAE, mp4) with each denoising run replaced by the few-step sampler of a distilled student:
    `num_steps` defaults to 4, no classifier-free guidance (the student learned the guided teacher).
    Conditioning frames are held at gt with the official conditioning timestep."""

    def __init__(self, model: nn.Module, vae: nn.Module | None = None, *, device=None, dtype=None,
                 mid_t: Sequence[float] | None = None, sigma_max: float = DEFAULT_SIGMA_MAX, offload: bool = False):
        super().__init__(model, vae, device=device, dtype=dtype, offload=offload)
        self.mid_t, self.sigma_max = mid_t, sigma_max

    def generate(self, mode: str = "text2world", *, num_steps: int | None = None, guidance_scale: float | None = None,
                 solver: str = "unipc", **kwargs):
        if guidance_scale not in (None, 0, 0.0):
            raise ValueError(f"guidance_scale={guidance_scale!r}: a distilled student samples without classifier-free "
                             "guidance (it learned the guided teacher); leave it unset or 0")
        steps = STUDENT_STEPS if num_steps is None else num_steps
        sampling_times(steps, self.mid_t, self.sigma_max)  # validate before any work
        return super().generate(mode, num_steps=steps, guidance_scale=0.0, solver=solver, **kwargs)

    @torch.no_grad()
    def sample_latents(self, latent_shape: tuple[int, int, int], *, context: Tensor, negative_context: Tensor | None,
                       guidance: float, generator: torch.Generator, condition: tuple[Tensor, Tensor] | None = None,
                       num_steps: int | None = None, solver: str = "unipc", shift: float = 5.0, grid: str = "shifted",
                       condition_sigma: float | None = CONDITION_SIGMA, model_inputs: Mapping | None = None,
                       progress=None) -> Tensor:
        """Latents (1, 16, T, h, w) fp32 of one few-step run (solver, shift and grid do not apply)."""
        cfg = self.config
        T, h, w = latent_shape
        self._use("dit")
        noise = torch.randn((1, cfg.latent_channels, T, h, w), generator=generator, device=generator.device,
                            dtype=torch.float32).to(self.device)
        cond = None
        if condition is not None:
            gt, mask = (t.to(self.device, torch.float32) for t in condition)
            cond = Condition(gt, mask.reshape(1, T), CONDITION_SIGMA if condition_sigma is None else condition_sigma)
        inputs = {"fps": cfg.fps, **dict(model_inputs or {})}
        return few_step_sample(self.model, noise, context.to(self.device), generator=generator,
                               steps=STUDENT_STEPS if num_steps is None else num_steps, mid_t=self.mid_t,
                               sigma_max=self.sigma_max, condition=cond, model_inputs=inputs, progress=progress)
