"""Flow ODE solvers on problems whose exact flow is known, against diffusers' UniPC, and the
guidance / conditioning-frame helpers."""
import math

import pytest
import torch

from cosmos_models.sampling import solvers as S
F64 = torch.float64


def gaussian_problem(mu: float, s: float):
    """Data x0 ~ N(mu, s²) per element. The posterior mean is linear in x, and the exact flow from
    z = x(σ=1) is x(σ) = (1 − σ)·mu + sqrt((1 − σ)²s² + σ²)·z."""
    def velocity(x, sigma):
        a = 1 - sigma
        var = a * a * s * s + sigma * sigma
        x0 = mu + a * s * s / var * (x - a * mu)
        return (x - x0) / sigma

    def exact(z, sigma):
        a = 1 - sigma
        return a * mu + math.sqrt(a * a * s * s + sigma * sigma) * z

    return velocity, exact


def mixture_velocity(means=(-1.0, 1.0), s2=0.25):
    """Data an even mixture of N(m_k, s2): a nonlinear velocity, still in closed form."""
    def velocity(x, sigma):
        a = 1 - sigma
        var = a * a * s2 + sigma * sigma
        w = torch.softmax(torch.stack([-(x - a * m) ** 2 / (2 * var) for m in means]), 0)
        x0 = sum(w[k] * (m + a * s2 / var * (x - a * m)) for k, m in enumerate(means))
        return (x - x0) / sigma
    return velocity


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def fitted_order(steps, errors):
    """Slope of −log(error) against log(steps), least squares."""
    xs = [math.log(n) for n in steps]
    ys = [math.log(e) for e in errors]
    xm, ym = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((x - xm) * (y - ym) for x, y in zip(xs, ys)) / sum((x - xm) ** 2 for x in xs)


# ----------------------------------------------------------------------------- grid
def test_flow_sigmas_is_the_official_shifted_grid():
    sig = S.flow_sigmas()
    assert sig.dtype == F64 and sig.shape == (S.DEFAULT_STEPS + 1,)
    base = [0.999 * (1 - i / 35) for i in range(35)]
    expect = [5 * b / (1 + 4 * b) for b in base] + [0.0]
    assert torch.allclose(sig, torch.tensor(expect, dtype=F64), rtol=0, atol=1e-15)
    assert (sig[1:] < sig[:-1]).all() and sig[-1] == 0
    # shift 1 leaves the linear grid; a larger shift moves every σ up (more steps at high noise)
    assert torch.allclose(S.flow_sigmas(10, 1.0)[:-1], torch.linspace(0.999, 0, 11, dtype=F64)[:-1])
    assert (S.flow_sigmas(10, 5.0)[1:-1] > S.flow_sigmas(10, 1.0)[1:-1]).all()
    assert S.shift_sigma(0.5, 5.0) == pytest.approx(2.5 / 3)


def test_official_timesteps_truncate_to_the_training_grid():
    ts = S.official_timesteps(S.flow_sigmas(35))
    assert ts.dtype == torch.int64 and ts.shape == (35,)
    assert ts[0] == 999 and (ts[1:] <= ts[:-1]).all()


@pytest.mark.parametrize("kwargs", [dict(num_steps=0), dict(num_steps=2.5), dict(shift=0.0),
                                    dict(shift=float("nan")), dict(sigma_max=1.0), dict(sigma_min=0.5, sigma_max=0.4)])
def test_flow_sigmas_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        S.flow_sigmas(**kwargs)


@pytest.mark.parametrize("sigmas", [[0.5], [1.0, 0.0], [0.5, 0.6, 0.0], [0.5, 0.5, 0.0], [0.9, -0.1]])
def test_solvers_reject_bad_grids(sigmas):
    for solver in ("euler", "unipc"):
        with pytest.raises(ValueError):
            S.make_solver(solver, sigmas)


def test_solver_arguments_and_exhaustion():
    with pytest.raises(ValueError, match="solver="):
        S.make_solver("heun", [0.5, 0.0])
    with pytest.raises(ValueError, match="order"):
        S.UniPCSolver([0.5, 0.0], order=3)
    with pytest.raises(ValueError, match="variant"):
        S.UniPCSolver([0.5, 0.0], variant="bh3")
    solver = S.UniPCSolver([0.5, 0.0])
    x = torch.ones(3)
    solver.step(x, x)
    with pytest.raises(RuntimeError, match="steps are done"):
        solver.step(x, x)
    with pytest.raises(ValueError, match="shape"):
        S.sample(lambda x, s: x[:1], torch.zeros(4), [0.5, 0.0])


# ----------------------------------------------------------------------------- convergence
def test_point_mass_is_integrated_exactly_by_both_solvers():
    # x0 = mu always: the data prediction is constant and the flow is a straight line, which
    # both the Euler and the exponential-integrator updates follow without error.
    mu = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    velocity = lambda x, sigma: (x - mu) / sigma  # noqa: E731
    noise = torch.randn(3, dtype=F64)
    for solver in ("euler", "unipc"):
        out = S.sample(velocity, noise, S.flow_sigmas(7), solver=solver)
        assert torch.allclose(out, mu, rtol=0, atol=1e-12), solver


def test_euler_is_first_and_unipc_second_order():
    # On the uniform grid (shift 1) the asymptotic orders show cleanly: Euler 1, UniPC 2 (its
    # last step is first order, which caps the global error at O(h²)).
    velocity, exact = gaussian_problem(mu=1.0, s=0.5)
    z = torch.randn(64, dtype=F64)
    steps = [40, 80, 160, 320]
    order = {}
    for solver in ("euler", "unipc"):
        errors = []
        for n in steps:
            sig = S.flow_sigmas(n, shift=1.0)
            out = S.sample(velocity, exact(z, float(sig[0])), sig, solver=solver)
            errors.append((out - exact(z, 0.0)).abs().max().item())
        order[solver] = fitted_order(steps, errors)
    assert 0.9 < order["euler"] < 1.1, order
    assert 1.85 < order["unipc"] < 2.3, order


def test_both_converge_on_the_official_grid_and_unipc_faster():
    velocity, exact = gaussian_problem(mu=0.5, s=0.6)
    z = torch.randn(64, dtype=F64)
    err = {}
    for solver in ("euler", "unipc"):
        for n in (35, 140, 560):
            sig = S.flow_sigmas(n)
            out = S.sample(velocity, exact(z, float(sig[0])), sig, solver=solver)
            err[solver, n] = (out - exact(z, 0.0)).abs().max().item()
    assert err["euler", 35] > err["euler", 140] > err["euler", 560]
    assert err["unipc", 35] > err["unipc", 140] > err["unipc", 560]
    assert err["unipc", 560] < 1e-3 < err["euler", 560]
    for n in (35, 140, 560):
        assert err["unipc", n] < err["euler", n] / 5, err


def test_euler_with_many_steps_converges_to_the_unipc_result():
    velocity = mixture_velocity()
    noise = torch.randn(64, dtype=F64)
    converged = S.sample(velocity, noise, S.flow_sigmas(400))  # within ~2e-4 of the exact flow
    euler = [rel(S.sample(velocity, noise, S.flow_sigmas(n), solver="euler"), converged) for n in (200, 400, 800)]
    assert euler[2] < 4e-3 and euler[1] < 0.6 * euler[0] and euler[2] < 0.6 * euler[1], euler
    # the official 35-step UniPC lands near the converged flow already
    assert rel(S.sample(velocity, noise), converged) < 4e-2


def test_sample_works_in_float32_and_keeps_the_dtype():
    velocity = mixture_velocity()
    noise = torch.randn(2, 4, 3, 8, 8)
    out = S.sample(velocity, noise)
    ref = S.sample(velocity, noise.double())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel(out.double(), ref) < 1e-5


# ----------------------------------------------------------------------------- diffusers
def _diffusers_scheduler(variant="bh2"):
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers)")
    return diffusers.UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=5.0, prediction_type="flow_prediction", solver_order=2,
        solver_type=variant, predict_x0=True, lower_order_final=True)


def _run_both(scheduler, velocity, noise, steps=None):
    ours = S.UniPCSolver([float(s) for s in scheduler.sigmas], variant=scheduler.config.solver_type)
    x, y = noise.clone(), noise.clone()
    for i, t in enumerate(scheduler.timesteps[:steps]):
        x = scheduler.step(velocity(x, float(scheduler.sigmas[i])), t, x).prev_sample
        y = ours.step(y, velocity(y, ours.sigmas[i]))
        assert rel(y, x) < 1e-6, f"step {i}: {rel(y, x)}"
    return x, y


@pytest.mark.parametrize("steps", [1, 2, 3, 35])
def test_unipc_matches_diffusers_on_the_official_grid(steps):
    scheduler = _diffusers_scheduler()
    # diffusers shifts the σ it is given: the unshifted official linspace gives the official grid
    scheduler.set_timesteps(sigmas=torch.linspace(0.999, 0.0, steps + 1, dtype=F64)[:-1].numpy())
    assert torch.allclose(scheduler.sigmas.double(), S.flow_sigmas(steps), rtol=0, atol=1e-6)
    noise = torch.randn(1, 4, 3, 4, 4, dtype=F64)  # fp64 state: only the fp32 σ arithmetic differs
    theirs, ours = _run_both(scheduler, mixture_velocity(), noise)
    assert rel(ours, theirs) < 1e-6


@pytest.mark.parametrize("variant", ["bh2", "bh1"])
def test_unipc_matches_diffusers_on_its_default_flow_grid(variant):
    scheduler = _diffusers_scheduler(variant)
    scheduler.set_timesteps(20)
    noise = torch.randn(2, 4, 2, 4, 4, dtype=F64)
    # diffusers' bh1 makes its last step (to σ = 0, where B(h) = −h = −∞) inf·0 = NaN: compare
    # the steps before it there; ours lands on the data prediction (checked above for bh2)
    _run_both(scheduler, mixture_velocity(means=(-0.5, 1.5), s2=0.1), noise,
              steps=None if variant == "bh2" else -1)


# ----------------------------------------------------------------------------- guidance
def test_guidance_zero_is_the_conditional_prediction():
    cond, uncond = torch.randn(2, 3), torch.randn(2, 3)
    assert S.guided_velocity(cond, uncond, 0.0) is cond
    assert S.guided_velocity(cond, None, 0) is cond  # no unconditional pass needed


def test_guidance_is_the_official_form():
    cond, uncond = torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64)
    out = S.guided_velocity(cond, uncond, 7.0)
    torch.testing.assert_close(out, cond + 7.0 * (cond - uncond))
    # the textbook form uncond + w·(cond − uncond) with w = 1 + g
    torch.testing.assert_close(out, uncond + 8.0 * (cond - uncond))


@pytest.mark.parametrize("bad", [-0.5, -1, float("nan"), float("inf"), "7", True])
def test_bad_guidance_is_rejected(bad):
    with pytest.raises(ValueError, match="guidance"):
        S.guided_velocity(torch.zeros(2), torch.zeros(2), bad)


def test_guidance_needs_uncond_of_the_same_shape():
    with pytest.raises(ValueError, match="uncond is None"):
        S.guided_velocity(torch.zeros(2), None, 1.0)
    with pytest.raises(ValueError, match="shape"):
        S.guided_velocity(torch.zeros(2), torch.zeros(3), 1.0)


# ----------------------------------------------------------------------------- conditioning
@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_conditioning_frames_are_kept_exactly(solver):
    B, C, T, H, W = 2, 4, 5, 3, 3
    gt = torch.randn(B, C, T, H, W)
    mask = S.condition_mask(T, 2)
    assert mask.shape == (1, 1, T, 1, 1) and mask.sum() == 2
    seen = []

    def velocity(x, sigma):
        seen.append(x[:, :, :2].clone())
        return torch.tanh(x) + sigma  # any field: the hook must hold the frames regardless

    out = S.sample(velocity, torch.randn(B, C, T, H, W), S.flow_sigmas(6), solver=solver,
                   callback=S.condition_frames(gt, mask))
    assert len(seen) == 6 and all(torch.equal(s, gt[:, :, :2]) for s in seen)
    assert torch.equal(out[:, :, :2], gt[:, :, :2])
    free = S.sample(velocity, torch.randn(B, C, T, H, W), S.flow_sigmas(6), solver=solver)
    assert not torch.equal(free[:, :, :2], gt[:, :, :2])


def test_condition_mask_and_hook_validate():
    assert S.condition_mask(4, 0).sum() == 0
    with pytest.raises(ValueError, match="num_condition_frames"):
        S.condition_mask(3, 4)
    with pytest.raises(ValueError, match="broadcast"):
        S.condition_frames(torch.zeros(1, 2, 3, 1, 1), torch.zeros(1, 1, 4, 1, 1))
    hook = S.condition_frames(torch.zeros(1, 2, 3, 1, 1), S.condition_mask(3, 1))
    with pytest.raises(ValueError, match="shape"):
        hook(torch.zeros(1, 2, 4, 1, 1), 0.5)


def test_condition_velocity_makes_the_data_prediction_the_ground_truth():
    # the official wrapper: on conditioning frames at x = (1−σ)·gt + σ·noise, v = noise − gt, so
    # the data prediction x − σ·v is gt; elsewhere the network's velocity passes through
    gt, noise, v = torch.randn(3, 1, 2, 4, 2, 2, dtype=F64).unbind(0)
    mask = S.condition_mask(4, 1, dtype=F64)
    sigma = 0.3
    x = (1 - sigma) * gt + sigma * noise
    out = S.condition_velocity(v, noise, gt, mask)
    torch.testing.assert_close((x - sigma * out)[:, :, :1], gt[:, :, :1])
    assert torch.equal(out[:, :, 1:], v[:, :, 1:])


def test_progress_reports_every_step():
    calls = []
    S.sample(lambda x, s: x, torch.ones(2), S.flow_sigmas(4), progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
