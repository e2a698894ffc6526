"""Flow-matching (rectified-flow) training objective: timestep sampling, conditioning frames, loss.

Equations (DESIGN.md "Training"; the public code `video2world_model_rectified_flow.py`,
`schedulers/rectified_flow.py` of nvidia-cosmos/cosmos-predict2.5, and the Cosmos-Predict2.5 paper):

    x_t = (1 − t)·x + t·ε                         t ∈ [0, 1], t = 1 is pure noise
    v   = ε − x                                    the velocity the network regresses
    loss = loss_scale · mean((u(x_t, t, c) − v)² · (1 − m))      m = 1 on conditioning frames, loss_scale 1

Timesteps. A base draw `u = sigmoid(n)`, `n ~ N(logit_mean, logit_std²)` (logit-normal), then the shift
`t = β·u / (1 + (β − 1)·u)`, i.e. `logit(t) = logit(u) + ln β`. Two recipes (`TimestepSampler`):
- official (the 2B rectified-flow run): β = 5, u discretized on the 1000-step grid of diffusers'
  `FlowMatchEulerDiscreteScheduler`: index `i = floor(1000·u)`, `t = shift((1000 − i)/1000)`.
  The network is fed `t·1000` and scales it by `timestep_scale` = 0.001 (`network_timesteps`).
- paper: continuous, β from the stage's resolution (1 at 256p … 5 at 720p), and 5 % of the samples
  drawn from the top 2 % of the noise range (t uniform in [0.98, 1]).
A second high-noise tail is available: σ log-uniform in [200, 1e5], t = σ/(1 + σ) (the EDM-style
"high sigma" strategy of the official configs).

Conditioning (Video2World). A number of latent frames is drawn per sample (final stage:
{0: 0.5, 1: 0.25, 2: 0.25} latent frames; earlier stages: 1 or 5 pixel frames, i.e.
1 + (f − 1)//4 latent frames); those frames are replaced by ground truth,
`x_t ← gt·m + x_t·(1 − m)`, flagged by the mask channel (B, 1, T, H, W), and the prediction on them is
replaced by `ε − gt` (official `denoise_replace_gt_frames`) so their loss is exactly zero. Timesteps
are per latent frame (B, T); the conditioning frames may carry their own small timestep
(`conditional_frame_timestep`; the official training keeps the sample's t there, the public sampler
uses 1e-4).

Every random draw takes an explicit `torch.Generator`, drawn in a fixed order and amount whatever
the outcome, so a run restored with the generator's state sees the same draws.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cosmos_models.nets.vae import latent_frames as pixel_to_latent_frames
from cosmos_models.sampling import solvers

NUM_TRAIN_TIMESTEPS = 1000
OFFICIAL_SHIFT = 5.0
# The official rectified-flow training_step never reads the config's loss_scale (10): its loss is
# mean(time_weight · mean((v_pred − v)²)) with weight 1, no scale (DESIGN.md "Reference facts").
OFFICIAL_LOSS_SCALE = 1.0
OFFICIAL_TIMESTEP_SCALE = 0.001  # the DiT multiplies its timestep input by this (DiTConfig.timestep_scale)
TAILS = ("none", "top", "sigma")


def shift_timesteps(t, shift: float):
    """`β·t / (1 + (β − 1)·t)`: moves mass toward high noise for β > 1 (floats and tensors); the same
    shift as sampling's grids (cosmos_models.sampling.solvers.shift_sigma)."""
    if not (isinstance(shift, (int, float)) and not isinstance(shift, bool) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    return solvers.shift_sigma(t, shift)


def _check_generator(generator, who: str) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{who}: generator must be a torch.Generator (explicit, so training resumes "
                        f"bit-exactly), got {type(generator).__name__}")


def _check_count(value, name: str, who: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{who}: {name} must be an int >= {minimum}, got {value!r}")


# ----------------------------------------------------------------------------- timesteps
@dataclass(frozen=True)
class TimestepSampler:
    """Training timesteps t ∈ (0, 1] (see the module docstring for the equations).

    shift: β of the shift (1 = none). logit_mean/logit_std: the logit-normal base.
    num_train_timesteps: discretize on that grid like the official scheduler; None = continuous.
    tail: "none", "top" (t uniform in [1 − tail_fraction, 1]; on the grid: uniform over the grid
    points there, like the official `high_sigma_timesteps_min/max` 980..1000) or "sigma" (σ
    log-uniform in `tail_sigma_range`, t = σ/(1+σ)). tail_prob: the fraction of samples from the tail.
    """

    shift: float = OFFICIAL_SHIFT
    logit_mean: float = 0.0
    logit_std: float = 1.0
    num_train_timesteps: int | None = NUM_TRAIN_TIMESTEPS
    tail: str = "none"
    tail_prob: float = 0.0
    tail_fraction: float = 0.02
    tail_sigma_range: tuple[float, float] = (200.0, 1e5)

    def __post_init__(self):
        shift_timesteps(0.5, self.shift)  # validates the shift
        if not (math.isfinite(self.logit_mean) and math.isfinite(self.logit_std) and self.logit_std > 0):
            raise ValueError(f"TimestepSampler: logit_mean must be finite and logit_std > 0, got "
                             f"logit_mean={self.logit_mean!r}, logit_std={self.logit_std!r}")
        if self.num_train_timesteps is not None:
            _check_count(self.num_train_timesteps, "num_train_timesteps", "TimestepSampler", 2)
        if self.tail not in TAILS:
            raise ValueError(f"TimestepSampler: tail={self.tail!r} is not supported; expected one of {TAILS}")
        if not 0.0 <= self.tail_prob <= 1.0:
            raise ValueError(f"TimestepSampler: tail_prob must be in [0, 1], got {self.tail_prob!r}")
        if self.tail_prob > 0 and self.tail == "none":
            raise ValueError(f"TimestepSampler: tail_prob={self.tail_prob} needs tail='top' or 'sigma'")
        if not 0.0 < self.tail_fraction < 1.0:
            raise ValueError(f"TimestepSampler: tail_fraction must be in (0, 1), got {self.tail_fraction!r}")
        lo, hi = self.tail_sigma_range
        if not 0 < lo < hi < math.inf:
            raise ValueError(f"TimestepSampler: tail_sigma_range must be 0 < low < high < inf, got {(lo, hi)}")

    @classmethod
    def official(cls) -> TimestepSampler:
        """The public 2B rectified-flow run: shift 5 on sigmoid(N(0, 1)), on the 1000-step grid. Its
        high-σ option is off: the rectified-flow model raises on it under context parallel, which
        that run uses (CP 2)."""
        return cls()

    @classmethod
    def paper(cls, shift: float) -> TimestepSampler:
        """The paper's recipe: continuous logit-normal shifted by β (1 at 256p … 5 at 720p), 5 % of
        the samples from the top 2 % of the noise range."""
        return cls(shift=shift, num_train_timesteps=None, tail="top", tail_prob=0.05, tail_fraction=0.02)

    def grid(self) -> Tensor:
        """The official discrete training grid (float64, descending), the shift applied:
        `shift(k / N)` for k = N, N−1, …, 1."""
        if self.num_train_timesteps is None:
            raise ValueError("TimestepSampler.grid: this sampler is continuous (num_train_timesteps=None)")
        return solvers.training_grid(self.num_train_timesteps, self.shift)

    def sample_with_tail(self, batch: int, generator: torch.Generator, *, device=None,
                         dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """(t (batch,), from_tail (batch,) bool). Draws, in this order and always all of them:
        batch normals, batch uniforms (tail choice), batch uniforms (tail values)."""
        _check_count(batch, "batch", "TimestepSampler.sample")
        _check_generator(generator, "TimestepSampler.sample")
        gdev = generator.device
        normal = torch.randn(batch, generator=generator, device=gdev, dtype=torch.float64)
        choose = torch.rand(batch, generator=generator, device=gdev, dtype=torch.float64)
        tail_u = torch.rand(batch, generator=generator, device=gdev, dtype=torch.float64)
        u = torch.sigmoid(normal * self.logit_std + self.logit_mean)
        if self.num_train_timesteps is None:
            t = shift_timesteps(u, self.shift)
        else:
            n = self.num_train_timesteps
            index = (u * n).long().clamp_(0, n - 1)  # official: floor(u·N) into the descending grid
            t = self.grid().to(gdev)[index]
        from_tail = choose < self.tail_prob
        if self.tail == "top":
            if self.num_train_timesteps is None:
                tail_t = 1.0 - self.tail_fraction * tail_u
            else:
                grid = self.grid().to(gdev)
                top = grid[grid >= 1.0 - self.tail_fraction]
                tail_t = top[(tail_u * top.numel()).long().clamp_(0, top.numel() - 1)]
            t = torch.where(from_tail, tail_t, t)
        elif self.tail == "sigma":
            lo, hi = math.log(self.tail_sigma_range[0]), math.log(self.tail_sigma_range[1])
            sigma = torch.exp(lo + (hi - lo) * tail_u)
            t = torch.where(from_tail, sigma / (1 + sigma), t)
        device = gdev if device is None else torch.device(device)
        return t.to(device=device, dtype=dtype), from_tail.to(device)

    def sample(self, batch: int, generator: torch.Generator, *, device=None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """Timesteps t (batch,) in (0, 1], one per sample (all frames of a sample share it)."""
        return self.sample_with_tail(batch, generator, device=device, dtype=dtype)[0]


def network_timesteps(t: Tensor, timestep_scale: float = OFFICIAL_TIMESTEP_SCALE) -> Tensor:
    """What the DiT takes: `t / timestep_scale` (official: t·1000, which the network scales by 0.001
    so its sinusoid sees t ∈ [0, 1]). Pass the model config's `timestep_scale`."""
    if not (isinstance(timestep_scale, (int, float)) and timestep_scale > 0):
        raise ValueError(f"network_timesteps: timestep_scale must be > 0, got {timestep_scale!r}")
    return t / timestep_scale


# ----------------------------------------------------------------------------- conditioning frames
@dataclass(frozen=True)
class ConditionFrames:
    """How many leading frames condition a sample: `probs` maps a frame count to its probability,
    counted in latent frames (`unit="latent"`) or pixel frames (`unit="pixel"`, converted by the
    VAE's 4k+1 rule: f pixel frames -> 1 + (f − 1)//4 latent frames)."""

    probs: Mapping[int, float] = field(default_factory=lambda: {0: 0.5, 1: 0.25, 2: 0.25})
    unit: str = "latent"

    def __post_init__(self):
        if self.unit not in ("latent", "pixel"):
            raise ValueError(f"ConditionFrames: unit={self.unit!r}; expected 'latent' or 'pixel'")
        if not self.probs:
            raise ValueError("ConditionFrames: probs is empty")
        for count, p in self.probs.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"ConditionFrames: frame counts must be ints >= 0, got {count!r}")
            if self.unit == "pixel" and count > 0:
                pixel_to_latent_frames(count)  # raises for a count that is not 4k+1
            if not (isinstance(p, (int, float)) and p >= 0):
                raise ValueError(f"ConditionFrames: probability of {count} frames must be >= 0, got {p!r}")
        total = sum(self.probs.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"ConditionFrames: probabilities must sum to 1, got {total} for {dict(self.probs)}")

    @classmethod
    def final_stage(cls) -> ConditionFrames:
        """Official / paper final stage: 0, 1 or 2 latent frames with 0.5 / 0.25 / 0.25."""
        return cls({0: 0.5, 1: 0.25, 2: 0.25}, "latent")

    @classmethod
    def early_stage(cls, probs: Mapping[int, float] | None = None) -> ConditionFrames:
        """Earlier stages: 1 or 5 pixel frames (the paper gives no split; equal by default)."""
        return cls(dict(probs) if probs is not None else {1: 0.5, 5: 0.5}, "pixel")

    def latent_counts(self) -> dict[int, float]:
        """The distribution in latent frames."""
        out: dict[int, float] = {}
        for count, p in self.probs.items():
            latent = count if self.unit == "latent" or count == 0 else pixel_to_latent_frames(count)
            out[latent] = out.get(latent, 0.0) + p
        return out

    def sample(self, batch: int, latent_frames: int, generator: torch.Generator, *, device=None) -> Tensor:
        """Latent conditioning-frame counts (batch,) int64, as the official `set_video_condition` draws
        them: from `probs` whatever the clip length, so at T = 2 latent frames a draw of 2 conditions
        both frames (that sample then has no loss, as officially); an image (latent_frames = 1) is
        never conditioned. Draws batch uniforms, always."""
        _check_count(batch, "batch", "ConditionFrames.sample")
        _check_count(latent_frames, "latent_frames", "ConditionFrames.sample")
        _check_generator(generator, "ConditionFrames.sample")
        dist = sorted(self.latent_counts().items())
        counts = torch.tensor([c for c, _ in dist], dtype=torch.int64)
        cdf = torch.tensor([p for _, p in dist], dtype=torch.float64).cumsum(0)
        cdf[-1] = 1.0 + 1e-9  # so rounding of the sum can never index past the end
        u = torch.rand(batch, generator=generator, device=generator.device, dtype=torch.float64).cpu()
        chosen = counts[torch.searchsorted(cdf, u, right=True)]
        chosen = chosen.clamp(max=latent_frames) if latent_frames > 1 else torch.zeros_like(chosen)
        return chosen.to(generator.device if device is None else device)


def frame_mask(num_condition: Tensor, latent_frames: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, T): 1 on the first num_condition[b] frames of sample b (the conditioning frames), else 0."""
    _check_count(latent_frames, "latent_frames", "frame_mask")
    if not isinstance(num_condition, Tensor) or num_condition.dim() != 1:
        raise ValueError(f"frame_mask: num_condition must be a 1-D tensor (B,), got "
                         f"{getattr(num_condition, 'shape', type(num_condition).__name__)}")
    frames = torch.arange(latent_frames, device=num_condition.device)
    return (frames[None, :] < num_condition[:, None]).to(dtype)


def condition_mask(frames: Tensor, height: int, width: int) -> Tensor:
    """The mask channel (B, 1, T, H, W) the DiT takes as `condition_video_input_mask`, from (B, T)."""
    _check_frame_mask(frames, None, "condition_mask")
    return frames[:, None, :, None, None].expand(-1, 1, -1, height, width).contiguous()


def frame_timesteps(t: Tensor, frames: Tensor, conditional_frame_timestep: float | None = None) -> Tensor:
    """Per-frame timesteps (B, T) from per-sample t (B,): conditioning frames (frames == 1) get
    `conditional_frame_timestep` when given (in t units, e.g. 1e-4), else the sample's t (official
    training default)."""
    _check_frame_mask(frames, None, "frame_timesteps")
    if t.dim() != 1 or t.shape[0] != frames.shape[0]:
        raise ValueError(f"frame_timesteps: t must be (B,) = ({frames.shape[0]},), got shape {tuple(t.shape)}")
    out = t[:, None].expand(-1, frames.shape[1])
    if conditional_frame_timestep is None:
        return out.contiguous()
    if not 0.0 <= conditional_frame_timestep <= 1.0:
        raise ValueError(f"frame_timesteps: conditional_frame_timestep must be in [0, 1], got "
                         f"{conditional_frame_timestep!r}")
    cond = torch.full_like(out, conditional_frame_timestep)
    return torch.where(frames.to(torch.bool), cond, out)


# ----------------------------------------------------------------------------- noising and loss
def _check_video(name: str, x, who: str, like: Tensor | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{who}: {name} must be (B, C, T, H, W), got shape {tuple(x.shape)}")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{who}: {name} has shape {tuple(x.shape)}, expected {tuple(like.shape)} like x0")


def _check_frame_mask(frames, x0: Tensor | None, who: str) -> None:
    if not isinstance(frames, Tensor) or frames.dim() != 2:
        raise ValueError(f"{who}: the frame mask must be a (B, T) tensor, got "
                         f"{getattr(frames, 'shape', type(frames).__name__)}")
    if x0 is not None and tuple(frames.shape) != (x0.shape[0], x0.shape[2]):
        raise ValueError(f"{who}: the frame mask has shape {tuple(frames.shape)}, expected (B, T) = "
                         f"{(x0.shape[0], x0.shape[2])}")


def _per_frame(t: Tensor, x: Tensor, who: str) -> Tensor:
    """(B,) or (B, T) -> broadcastable (B, 1, T|1, 1, 1) in x's dtype."""
    if t.dim() == 1 and t.shape[0] == x.shape[0]:
        return t.to(x.dtype)[:, None, None, None, None]
    if t.dim() == 2 and tuple(t.shape) == (x.shape[0], x.shape[2]):
        return t.to(x.dtype)[:, None, :, None, None]
    raise ValueError(f"{who}: t must be (B,) or (B, T) = {(x.shape[0], x.shape[2])}, got shape {tuple(t.shape)}")


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """`x_t = (1 − t)·x0 + t·ε`, t per sample (B,) or per frame (B, T)."""
    _check_video("x0", x0, "interpolate")
    _check_video("noise", noise, "interpolate", x0)
    tt = _per_frame(t, x0, "interpolate")
    return (1 - tt) * x0 + tt * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """`v = ε − x0`: dx_t/dt along the straight path."""
    _check_video("noise", noise, "velocity_target", x0)
    return noise - x0


def replace_condition(x_t: Tensor, gt: Tensor, frames: Tensor) -> Tensor:
    """`x_t ← gt·m + x_t·(1 − m)`, m the (B, T) frame mask broadcast over C, H, W."""
    _check_video("x_t", x_t, "replace_condition")
    _check_video("gt", gt, "replace_condition", x_t)
    _check_frame_mask(frames, x_t, "replace_condition")
    m = frames.to(x_t.dtype)[:, None, :, None, None]
    return gt * m + x_t * (1 - m)


def replace_prediction(pred: Tensor, x0: Tensor, noise: Tensor, frames: Tensor) -> Tensor:
    """The prediction with its conditioning frames replaced by the exact velocity `ε − gt`
    (official `denoise_replace_gt_frames`): their loss is then exactly zero and they get no gradient."""
    _check_video("pred", pred, "replace_prediction", x0)
    return replace_condition(pred, velocity_target(x0, noise).to(pred.dtype), frames)


def flow_matching_loss(pred: Tensor, x0: Tensor, noise: Tensor, frames: Tensor | None = None, *,
                       loss_scale: float = OFFICIAL_LOSS_SCALE, mean_over: str = "all") -> Tensor:
    """`loss_scale · mean((pred − (ε − x0))²)` over the non-conditioning frames, as an fp32 (fp64
    for fp64 inputs) scalar. `frames` (B, T) is 1 on conditioning frames: their prediction is
    replaced by the exact velocity, so they add exactly zero. mean_over="all" divides by every
    element (the official per-instance mean); "noisy" by the non-conditioning elements only."""
    _check_video("pred", pred, "flow_matching_loss", x0)
    _check_video("x0", x0, "flow_matching_loss")
    _check_video("noise", noise, "flow_matching_loss", x0)
    if mean_over not in ("all", "noisy"):
        raise ValueError(f"flow_matching_loss: mean_over={mean_over!r}; expected 'all' or 'noisy'")
    if not (isinstance(loss_scale, (int, float)) and math.isfinite(loss_scale)):
        raise ValueError(f"flow_matching_loss: loss_scale must be a finite number, got {loss_scale!r}")
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    pred, x0, noise = pred.to(acc), x0.to(acc), noise.to(acc)
    if frames is not None:
        _check_frame_mask(frames, x0, "flow_matching_loss")
        pred = replace_prediction(pred, x0, noise, frames)
    err = (pred - velocity_target(x0, noise)).square()
    if mean_over == "all" or frames is None:
        return loss_scale * err.mean()
    c, h, w = x0.shape[1], x0.shape[3], x0.shape[4]
    noisy = (1 - frames.to(acc)).sum() * c * h * w
    return loss_scale * err.sum() / noisy.clamp(min=1)


# ----------------------------------------------------------------------------- one training step's inputs
@dataclass
class FlowInputs:
    """Everything one training step feeds the network and the loss.

    x_t: (B, C, T, H, W) noisy latents, conditioning frames replaced by ground truth.
    timesteps: (B, T) in the network's scale (t / timestep_scale), for `DiT.forward(timesteps_B_T=)`.
    condition_mask: (B, 1, T, H, W) for `condition_video_input_mask`.
    t: (B,) the sampled t ∈ (0, 1]; frames: (B, T) 1 on conditioning frames; num_condition: (B,).
    x0, noise: the clean latents and the noise (the loss needs both).
    """

    x_t: Tensor
    timesteps: Tensor
    condition_mask: Tensor
    t: Tensor
    frames: Tensor
    num_condition: Tensor
    x0: Tensor
    noise: Tensor


@dataclass(frozen=True)
class FlowMatching:
    """The objective as configured for a stage; `prepare` then `loss` is one training step.

    condition=None trains Text2World only (no conditioning frames).
    """

    timesteps: TimestepSampler = field(default_factory=TimestepSampler.official)
    condition: ConditionFrames | None = field(default_factory=ConditionFrames.final_stage)
    loss_scale: float = OFFICIAL_LOSS_SCALE
    conditional_frame_timestep: float | None = None
    timestep_scale: float = OFFICIAL_TIMESTEP_SCALE
    mean_over: str = "all"

    def prepare(self, x0: Tensor, generator: torch.Generator) -> FlowInputs:
        """Draws t, the conditioning-frame counts and ε (in that order, on the generator's device,
        then moved to x0's) and builds the network inputs."""
        _check_video("x0", x0, "FlowMatching.prepare")
        _check_generator(generator, "FlowMatching.prepare")
        b, _, frames_t, h, w = x0.shape
        t = self.timesteps.sample(b, generator, device=x0.device, dtype=torch.float64 if
                                  x0.dtype == torch.float64 else torch.float32)
        if self.condition is None:
            counts = torch.zeros(b, dtype=torch.int64, device=x0.device)
        else:
            counts = self.condition.sample(b, frames_t, generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(x0.device)
        frames = frame_mask(counts, frames_t, dtype=x0.dtype)
        x_t = replace_condition(interpolate(x0, noise, t), x0, frames)
        per_frame = frame_timesteps(t, frames, self.conditional_frame_timestep)
        return FlowInputs(x_t=x_t, timesteps=network_timesteps(per_frame, self.timestep_scale),
                          condition_mask=condition_mask(frames, h, w), t=t, frames=frames,
                          num_condition=counts, x0=x0, noise=noise)

    def loss(self, pred: Tensor, inputs: FlowInputs) -> Tensor:
        return flow_matching_loss(pred, inputs.x0, inputs.noise, inputs.frames,
                                  loss_scale=self.loss_scale, mean_over=self.mean_over)
