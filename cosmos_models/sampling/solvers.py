"""Rectified-flow ODE solvers for sampling, the official timestep grid, classifier-free guidance
and the conditioning-frame hook.

Convention (DESIGN.md "Reference facts"): `x_σ = (1 − σ)·x0 + σ·ε`, the network predicts the
velocity `v = ε − x0`, and sampling integrates `dx/dσ = v(x, σ)` from σ ≈ 1 (noise) down to σ = 0
(data). A velocity function has the signature `velocity(x, sigma: float) -> Tensor`.

Solvers, both driven step by step (`x = solver.step(x, v)`) or through `sample(...)`:
- `EulerSolver`: `x ← x + (σ_next − σ)·v`.
- `UniPCSolver`: the official default, `FlowUniPCMultistepScheduler` of the public code (order 2,
  "bh2", data prediction, lower order final); the same update as diffusers'
  `UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")`.

Grids (`sigma_grid(kind, N, shift)`, the one implementation sampling, training and distillation use):
- "shifted" (`flow_sigmas`): `linspace(σ_max, σ_min, N + 1)[:-1]` with the official σ_max = 0.999,
  σ_min = 0 (= 1 − 1/1000 and 0 of the 1000-step training grid), each shifted by
  `σ' = shift·σ / (1 + (shift − 1)·σ)` (shift 5), then a final 0: N steps. 35 by default.
- "karras" (`karras_sigmas`): the official `use_kerras_sigma` schedule (the post-trained 2B): EDM σ
  `(σ_max^(1/ρ) + i/N·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ` for i = 0…N with σ_max 200, σ_min 0.01, ρ 7,
  each mapped to the flow time σ/(1 + σ), then a final 0: N + 1 steps, as the official scheduler runs.
- the training grid (`training_grid`): `shift(k/1000)` for k = 1000…1 (flow matching's timesteps).

Why our own solver rather than diffusers' UniPCMultistepScheduler: diffusers is optional here (the GPU
images we target do not have it) and has no Karras-to-flow mapping of the official kind; its flow-
sigma UniPC equals ours to < 1e-6 per step (tests/test_solvers.py keeps that comparison).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

DEFAULT_STEPS = 35
DEFAULT_SHIFT = 5.0
NUM_TRAIN_TIMESTEPS = 1000
# The official scheduler's grid runs from 1 − 1/1000 (its largest training σ) down to 0.
OFFICIAL_SIGMA_MAX = 1.0 - 1.0 / NUM_TRAIN_TIMESTEPS
OFFICIAL_SIGMA_MIN = 0.0

Velocity = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[torch.Tensor, float], torch.Tensor]


# ----------------------------------------------------------------------------- timestep grid
def shift_sigma(sigma, shift: float = DEFAULT_SHIFT):
    """The flow timestep shift `σ' = shift·σ / (1 + (shift − 1)·σ)` (works on floats and tensors);
    shift > 1 spends more of the steps at high noise."""
    _check_shift(shift)
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_sigmas(num_steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT, *,
                sigma_max: float = OFFICIAL_SIGMA_MAX, sigma_min: float = OFFICIAL_SIGMA_MIN) -> torch.Tensor:
    """The σ grid of `num_steps` steps: `num_steps + 1` float64 values, strictly decreasing, the
    last one 0. `shift_sigma(linspace(sigma_max, sigma_min, num_steps + 1)[:-1])` then 0.

    The defaults are the official scheduler's. diffusers' `use_flow_sigmas` grid is
    `sigma_max=1, sigma_min=1/1000` with its first σ lowered by 1e-6 (σ = 1 has no log-SNR)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"flow_sigmas: num_steps must be an int >= 1, got {num_steps!r}")
    if not 0.0 <= sigma_min < sigma_max < 1.0:
        raise ValueError(f"flow_sigmas: need 0 <= sigma_min < sigma_max < 1, got sigma_min={sigma_min!r}, "
                         f"sigma_max={sigma_max!r} (sigma = 1 is pure noise, where the log-SNR is -inf)")
    base = torch.linspace(sigma_max, sigma_min, int(num_steps) + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigma(base, shift), base.new_zeros(1)])


KARRAS_SIGMA_MAX, KARRAS_SIGMA_MIN, KARRAS_RHO = 200.0, 0.01, 7.0
GRIDS = ("shifted", "karras")


def karras_sigmas(num_steps: int = DEFAULT_STEPS) -> torch.Tensor:
    """The official Karras/EDM grid in flow time (see the module docstring): num_steps + 2 float64
    values, strictly decreasing, the last one 0 (num_steps + 1 solver steps)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"karras_sigmas: num_steps must be an int >= 1, got {num_steps!r}")
    ramp = torch.arange(int(num_steps) + 1, dtype=torch.float64) / int(num_steps)
    lo, hi = KARRAS_SIGMA_MIN ** (1 / KARRAS_RHO), KARRAS_SIGMA_MAX ** (1 / KARRAS_RHO)
    edm = (hi + ramp * (lo - hi)) ** KARRAS_RHO
    return torch.cat([edm / (1 + edm), edm.new_zeros(1)])


def sigma_grid(kind: str, num_steps: int = DEFAULT_STEPS, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """The sampling grid of a preset: "shifted" (flow_sigmas, shift applies) or "karras" (no shift)."""
    if kind == "shifted":
        return flow_sigmas(num_steps, shift)
    if kind == "karras":
        return karras_sigmas(num_steps)
    raise ValueError(f"unknown sigma grid {kind!r}; expected one of {GRIDS}")


def training_grid(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """The official discrete training grid (float64, descending), the shift applied:
    `shift(k / N)` for k = N, N−1, …, 1."""
    n = int(num_train_timesteps)
    return shift_sigma(torch.arange(n, 0, -1, dtype=torch.float64) / n, shift)


def official_timesteps(sigmas: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """What the official loop feeds the network for each step: the scheduler's integer timesteps
    `trunc(1000·σ)` (int64, one per step, the final 0 excluded); the network scales them by 0.001.
    diffusers' Cosmos 2.5 pipeline feeds σ itself instead."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64)[:-1]
    return (sig * NUM_TRAIN_TIMESTEPS).to(torch.int64)


def _check_shift(shift: float) -> None:
    if isinstance(shift, bool) or not isinstance(shift, numbers.Real) or not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")


def _as_sigma_list(sigmas, who: str) -> list[float]:
    if isinstance(sigmas, torch.Tensor):
        if sigmas.dim() != 1:
            raise ValueError(f"{who}: sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
        sigmas = sigmas.tolist()
    values = [float(s) for s in sigmas]
    if len(values) < 2:
        raise ValueError(f"{who}: sigmas needs at least 2 values (one step), got {len(values)}")
    if not all(math.isfinite(s) for s in values) or not 0.0 <= values[-1] or not values[0] < 1.0:
        raise ValueError(f"{who}: sigmas must lie in [0, 1) (sigma = 1 is pure noise, where the log-SNR is "
                         f"-inf), got first={values[0]!r}, last={values[-1]!r}")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{who}: sigmas must be strictly decreasing (noise to data), got {values}")
    return values


# ----------------------------------------------------------------------------- solvers
class EulerSolver:
    """Explicit Euler on the flow ODE: `x_{i+1} = x_i + (σ_{i+1} − σ_i)·v(x_i, σ_i)`."""

    def __init__(self, sigmas: torch.Tensor | Sequence[float]):
        self.sigmas = _as_sigma_list(sigmas, "EulerSolver")
        self.index = 0

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def step(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Advance `x` from `sigmas[index]` to `sigmas[index + 1]` given `v = velocity(x, sigmas[index])`."""
        i = _next_index(self, "EulerSolver")
        self.index += 1
        return x + (self.sigmas[i + 1] - self.sigmas[i]) * v


class UniPCSolver:
    """UniPC multistep (predictor UniP + corrector UniC) in data prediction for rectified flow.

    With `α = 1 − σ`, log-SNR `λ = log(α/σ)`, the step from s = σ_i to t = σ_{i+1} has
    `h = λ_t − λ_s > 0` and `φ = 1 − e^{−h}`. The network's velocity becomes a data prediction
    `m_i = x_i − σ_i·v_i`. With `r = (λ_{i−1} − λ_s)/h` and `D = (m_{i−1} − m_i)/r`:

        predictor (order p):   x_t = (σ_t/σ_s)·x_s + α_t·φ·m_i − α_t·B(h)·[p = 2]·½·D
        corrector (order p):   x_s ← (σ_s/σ_u)·x_u + α_s·φ·m_u − α_s·B(h)·(ρ_D·D + ρ_s·(m_s − m_u))

    with `B(h) = e^{−h} − 1 = −φ` ("bh2", the default) or `B(h) = −h` ("bh1"). The corrector, run
    when the new prediction m_s at s = σ_i arrives, redoes the previous step u = σ_{i−1} → s
    (its h, r and D) with that step's order p. For p = 1, ρ_s = ½ (no ρ_D); for p = 2 the pair
    solves `[[1, 1], [r, 1]]·[ρ_D, ρ_s] = [b_1, b_2]` with `b_k = k!·ψ_k / B(h)`,
    `ψ_1 = (e^{−h} − 1)/(−h) − 1`, `ψ_2 = ψ_1/(−h) − ½`. Order p of step i is `min(order, i + 1, N − i)`: one warm-up step, and
    the last step is first order ("lower order final"), which lands exactly on the last data
    prediction when σ_N = 0. A first-order step equals an Euler step in this parameterization.
    """

    def __init__(self, sigmas: torch.Tensor | Sequence[float], order: int = 2, variant: str = "bh2"):
        self.sigmas = _as_sigma_list(sigmas, "UniPCSolver")
        if order not in (1, 2):
            raise ValueError(f"UniPCSolver: order={order!r} is not supported; expected 1 or 2")
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"UniPCSolver: variant={variant!r} is not supported; expected 'bh1' or 'bh2'")
        self.order, self.variant = order, variant
        self.index = 0
        self._predictions: list[torch.Tensor] = []  # data predictions m of the last `order` steps
        self._last_x: torch.Tensor | None = None     # the state the last predictor started from
        self._last_order = 0

    @property
    def num_steps(self) -> int:
        return len(self.sigmas) - 1

    def step(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Advance `x` from `sigmas[index]` to `sigmas[index + 1]` given `v = velocity(x, sigmas[index])`."""
        i = _next_index(self, "UniPCSolver")
        m = x - self.sigmas[i] * v
        if i > 0:
            x = self._corrector(m, i)
        self._predictions = (self._predictions + [m])[-self.order:]
        order = min(self.order, i + 1, self.num_steps - i)
        self._last_x, self._last_order = x, order
        self.index += 1
        return self._predictor(x, i, order)

    # The update of both halves, from s to t: (σ_t/σ_s)·x_s + α_t·φ·m_s − α_t·B(h)·correction.
    def _base(self, s: float, t: float, x_s: torch.Tensor, m_s: torch.Tensor, correction=None) -> torch.Tensor:
        if t == 0.0:  # h = ∞: the state is the data prediction itself (only first-order steps get here)
            assert correction is None, "a step to sigma = 0 is always first order"
            return m_s
        h = self._h(s, t)
        out = (t / s) * x_s + ((1.0 - t) * -math.expm1(-h)) * m_s
        if correction is not None:
            out = out + ((1.0 - t) * -self._big_b(h)) * correction
        return out

    def _big_b(self, h: float) -> float:
        return math.expm1(-h) if self.variant == "bh2" else -h

    @staticmethod
    def _log_snr(sigma: float) -> float:
        return math.log1p(-sigma) - math.log(sigma)

    def _h(self, s: float, t: float) -> float:
        return self._log_snr(t) - self._log_snr(s)

    def _predictor(self, x: torch.Tensor, i: int, order: int) -> torch.Tensor:
        s, t = self.sigmas[i], self.sigmas[i + 1]
        m_s = self._predictions[-1]
        if order == 1:
            return self._base(s, t, x, m_s)
        r = (self._log_snr(self.sigmas[i - 1]) - self._log_snr(s)) / self._h(s, t)
        d = (self._predictions[-2] - m_s) / r
        return self._base(s, t, x, m_s, 0.5 * d)

    def _corrector(self, m_new: torch.Tensor, i: int) -> torch.Tensor:
        u, s = self.sigmas[i - 1], self.sigmas[i]
        m_u = self._predictions[-1]
        h = self._h(u, s)
        if self._last_order == 1:
            return self._base(u, s, self._last_x, m_u, 0.5 * (m_new - m_u))
        r = (self._log_snr(self.sigmas[i - 2]) - self._log_snr(u)) / h
        b1, b2 = self._b_coefficients(h)
        rho_d = (b1 - b2) / (1.0 - r)
        rho_s = b1 - rho_d
        d = (self._predictions[-2] - m_u) / r
        return self._base(u, s, self._last_x, m_u, rho_d * d + rho_s * (m_new - m_u))

    def _b_coefficients(self, h: float) -> tuple[float, float]:
        hh = -h
        psi1 = math.expm1(hh) / hh - 1.0
        psi2 = psi1 / hh - 0.5
        big_b = self._big_b(h)
        return psi1 / big_b, 2.0 * psi2 / big_b


def _next_index(solver, who: str) -> int:
    if solver.index >= solver.num_steps:
        raise RuntimeError(f"{who}: all {solver.num_steps} steps are done; make a new solver to sample again")
    return solver.index


SOLVERS = {"euler": EulerSolver, "unipc": UniPCSolver}


def make_solver(name: str, sigmas: torch.Tensor | Sequence[float]):
    """`"unipc"` (the official default) or `"euler"` on the given σ grid."""
    if name not in SOLVERS:
        raise ValueError(f"make_solver: solver={name!r} is not supported; expected one of {tuple(SOLVERS)}")
    return SOLVERS[name](sigmas)


def sample(velocity: Velocity, noise: torch.Tensor, sigmas: torch.Tensor | Sequence[float] | None = None, *,
           solver: str = "unipc", callback: Callback | None = None,
           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Integrate the flow ODE from `noise` (the state at `sigmas[0]`) to `sigmas[-1]`.

    `sigmas` defaults to `flow_sigmas()` (35 steps, shift 5). `callback(x, sigma)` is applied to
    the initial state and after every step, so every state the velocity sees, and the result,
    pass through it (see `condition_frames`). `progress(step, num_steps)` is called after each step.
    """
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise TypeError(f"sample: noise must be a floating-point torch.Tensor, got "
                        f"{getattr(noise, 'dtype', type(noise).__name__)}")
    solver_ = make_solver(solver, flow_sigmas() if sigmas is None else sigmas)
    grid = solver_.sigmas
    x = noise if callback is None else callback(noise, grid[0])
    for i in range(solver_.num_steps):
        v = velocity(x, grid[i])
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            raise ValueError(f"sample: velocity returned {tuple(getattr(v, 'shape', ()))} for a state of shape "
                             f"{tuple(x.shape)}; it must return a tensor of the state's shape")
        x = solver_.step(x, v)
        if callback is not None:
            x = callback(x, grid[i + 1])
        if progress is not None:
            progress(i + 1, solver_.num_steps)
    return x


# ----------------------------------------------------------------------------- guidance, conditioning
def check_guidance(guidance: float) -> float:
    """A guidance scale is a finite number >= 0."""
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance) \
            or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r} "
                         "(0 = the conditional prediction alone; the official default is 7)")
    return float(guidance)


def guided_velocity(cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """Classifier-free guidance in the official (Video2World) form `cond + g·(cond − uncond)`.

    This is `uncond + (1 + g)·(cond − uncond)`: the official g = 7 is the textbook scale 8, and
    g = 0 returns `cond` itself (then `uncond` may be None and its network pass skipped)."""
    g = check_guidance(guidance)
    if g == 0.0:
        return cond
    if uncond is None:
        raise ValueError(f"guided_velocity: uncond is None but guidance={g} > 0 needs the unconditional prediction")
    if uncond.shape != cond.shape:
        raise ValueError(f"guided_velocity: uncond has shape {tuple(uncond.shape)}, cond {tuple(cond.shape)}; "
                         "they must match")
    return cond + g * (cond - uncond)


def condition_mask(num_frames: int, num_condition_frames: int, *, device=None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(1, 1, T, 1, 1) mask, 1 on the first `num_condition_frames` latent frames (0 for Text2World,
    1 for Image2World, 2 for Video2World), broadcastable over (B, C, T, H, W) latents."""
    if not 0 <= num_condition_frames <= num_frames:
        raise ValueError(f"condition_mask: num_condition_frames must be in [0, {num_frames}] (the latent "
                         f"frame count), got {num_condition_frames!r}")
    mask = torch.zeros(1, 1, num_frames, 1, 1, device=device, dtype=dtype)
    mask[:, :, :num_condition_frames] = 1
    return mask


def condition_frames(gt: torch.Tensor, mask: torch.Tensor) -> Callback:
    """The conditioning-frame hook for `sample(callback=...)`: `x ← gt·mask + x·(1 − mask)`, so
    the conditioning latents are re-imposed before the first and after every step."""
    if not isinstance(gt, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise TypeError("condition_frames: gt and mask must be torch.Tensors")
    try:
        torch.broadcast_shapes(mask.shape, gt.shape)
    except RuntimeError:
        raise ValueError(f"condition_frames: mask of shape {tuple(mask.shape)} does not broadcast to gt of "
                         f"shape {tuple(gt.shape)}") from None
    keep = 1 - mask

    def impose(x: torch.Tensor, sigma: float) -> torch.Tensor:
        if x.shape != gt.shape:
            raise ValueError(f"condition_frames: state has shape {tuple(x.shape)}, conditioning latents "
                             f"{tuple(gt.shape)}; they must match")
        return gt * mask + x * keep

    return impose


def condition_velocity(v: torch.Tensor, noise: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official network wrapper's replacement on conditioning frames: their velocity becomes the
    exact `noise − gt` (so their data prediction is gt on the noise–gt line): `v·(1−mask) + (noise−gt)·mask`."""
    return (noise - gt) * mask + v * (1 - mask)
