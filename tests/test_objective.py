"""Flow-matching objective: timestep distributions on 100k draws, conditioning-frame probabilities,
conditioning replacement and a loss that is exactly zero on conditioning frames, determinism."""
import math

import pytest
import torch

from cosmos_models.training import objective as F
N = 100_000


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def logit(t):
    t = t.double()
    return torch.log(t) - torch.log1p(-t)


# ----------------------------------------------------------------------------- timesteps
def test_unshifted_logit_normal_statistics():
    t = F.TimestepSampler(shift=1.0, num_train_timesteps=None).sample(N, gen(), dtype=torch.float64)
    z = logit(t)
    assert abs(z.mean().item()) < 0.015 and abs(z.std().item() - 1.0) < 0.015  # SE 0.003 / 0.002
    t = F.TimestepSampler(shift=1.0, logit_mean=0.5, logit_std=1.5, num_train_timesteps=None).sample(
        N, gen(1), dtype=torch.float64)
    z = logit(t)
    assert abs(z.mean().item() - 0.5) < 0.02 and abs(z.std().item() - 1.5) < 0.02


@pytest.mark.parametrize("beta", [1.0, 3.0, 5.0])
def test_shifted_median_matches_formula(beta):
    t = F.TimestepSampler(shift=beta, num_train_timesteps=None).sample(N, gen(2), dtype=torch.float64)
    # the median of sigmoid(N(0,1)) is 1/2 and the shift is monotone: median = β·½ / (1 + (β−1)·½)
    assert abs(t.median().item() - beta / (beta + 1)) < 0.004
    # the shift is a translation of the logit by ln β
    assert abs(logit(t).mean().item() - math.log(beta)) < 0.015
    assert F.shift_timesteps(0.5, beta) == pytest.approx(beta / (beta + 1))


def test_official_sampler_on_the_1000_step_grid():
    sampler = F.TimestepSampler.official()
    grid = sampler.grid()
    assert grid.shape == (1000,) and grid[0] == 1.0 and bool((grid[1:] < grid[:-1]).all())
    assert grid[-1].item() == pytest.approx(5 * 0.001 / (1 + 4 * 0.001))
    t = sampler.sample(N, gen(3), dtype=torch.float64)
    on_grid = torch.isin(t, grid)
    assert bool(on_grid.all())
    assert abs(t.median().item() - 5 / 6) < 0.005
    # the network is fed t·1000 (it scales by 0.001)
    torch.testing.assert_close(F.network_timesteps(t), t * 1000, rtol=1e-12, atol=0)


def test_paper_tail_fraction_and_range():
    t, tail = F.TimestepSampler.paper(shift=1.0).sample_with_tail(N, gen(4), dtype=torch.float64)
    assert abs(tail.double().mean().item() - 0.05) < 0.003  # SE 0.0007
    tail_t = t[tail]
    assert tail_t.min() >= 0.98 and tail_t.max() <= 1.0
    assert abs(tail_t.mean().item() - 0.99) < 0.0005  # uniform on [0.98, 1]
    # with β = 1 the base distribution puts ~5e-5 above 0.98: the top 2 % holds ~5 % of all draws
    assert abs((t >= 0.98).double().mean().item() - 0.05) < 0.003


def test_discrete_top_tail_and_sigma_tail():
    sampler = F.TimestepSampler(shift=5.0, tail="top", tail_prob=0.05)
    t, tail = sampler.sample_with_tail(N, gen(5), dtype=torch.float64)
    top = sampler.grid()[sampler.grid() >= 0.98]
    assert bool(torch.isin(t[tail], top).all()) and abs(tail.double().mean().item() - 0.05) < 0.003
    t, tail = F.TimestepSampler(tail="sigma", tail_prob=0.05).sample_with_tail(N, gen(6), dtype=torch.float64)
    sigma = t[tail] / (1 - t[tail])
    assert sigma.min() >= 200 * (1 - 1e-9) and sigma.max() <= 1e5 * (1 + 1e-6)
    log_mid = (math.log(200) + math.log(1e5)) / 2  # log-uniform: ln σ uniform
    assert abs(sigma.log().mean().item() - log_mid) < 0.05


def test_timesteps_are_deterministic_and_resumable():
    sampler = F.TimestepSampler.paper(shift=3.0)
    g = gen(7)
    first = sampler.sample(16, g)
    state = g.get_state()
    second = sampler.sample(16, g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(sampler.sample(16, g2), second)
    assert torch.equal(sampler.sample(16, gen(7)), first)


# ----------------------------------------------------------------------------- conditioning frames
def test_final_stage_condition_frame_probabilities():
    counts = F.ConditionFrames.final_stage().sample(N, 24, gen(8))
    for k, p in {0: 0.5, 1: 0.25, 2: 0.25}.items():
        assert abs((counts == k).double().mean().item() - p) < 0.006
    assert counts.dtype == torch.int64 and set(counts.unique().tolist()) == {0, 1, 2}


def test_early_stage_pixel_frames_and_caps():
    stage = F.ConditionFrames.early_stage()  # 1 or 5 pixel frames -> 1 or 2 latent frames
    assert stage.latent_counts() == {1: 0.5, 2: 0.5}
    counts = stage.sample(N, 24, gen(9))
    assert abs((counts == 2).double().mean().item() - 0.5) < 0.006
    assert set(F.ConditionFrames({9: 1.0}, "pixel").latent_counts()) == {3}
    # an image is never conditioned
    assert int(F.ConditionFrames.final_stage().sample(64, 1, gen(10)).max()) == 0


@pytest.mark.parametrize("T", [2, 3, 24])
def test_condition_frame_draw_matches_the_official_for_every_length(T):
    """Official set_video_condition: random.choices over {0: 0.5, 1: 0.25, 2: 0.25} for any T > 1,
    no cap (at T = 2 a draw of 2 conditions both frames, and that sample has no loss)."""
    counts = F.ConditionFrames.final_stage().sample(N, T, gen(11))
    for k, p in {0: 0.5, 1: 0.25, 2: 0.25}.items():
        assert abs((counts == k).double().mean().item() - p) < 0.006, (T, k)


def test_condition_frames_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        F.ConditionFrames({0: 0.5, 1: 0.4})
    with pytest.raises(ValueError, match="4k\\+1"):
        F.ConditionFrames({2: 1.0}, "pixel")
    with pytest.raises(ValueError, match="unit"):
        F.ConditionFrames({0: 1.0}, "frames")
    with pytest.raises(TypeError, match="generator"):
        F.ConditionFrames.final_stage().sample(4, 8, None)


def test_masks_and_frame_timesteps():
    counts = torch.tensor([0, 1, 2])
    frames = F.frame_mask(counts, 4)
    assert frames.tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    mask = F.condition_mask(frames, 3, 5)
    assert mask.shape == (3, 1, 4, 3, 5) and torch.equal(mask[:, 0, :, 1, 2], frames)
    t = torch.tensor([0.9, 0.5, 0.3])
    assert torch.equal(F.frame_timesteps(t, frames), t[:, None].expand(3, 4))
    per_frame = F.frame_timesteps(t, frames, conditional_frame_timestep=1e-4)
    assert torch.equal(per_frame[frames.bool()], torch.full((3,), 1e-4))
    assert torch.equal(per_frame[~frames.bool()], t[:, None].expand(3, 4)[~frames.bool()])


# ----------------------------------------------------------------------------- loss
def _video(b=3, c=4, t=5, h=3, w=2, seed=0, dtype=torch.float32):
    return torch.randn(b, c, t, h, w, generator=gen(seed), dtype=dtype)


def test_loss_is_zero_on_conditioning_frames_and_the_hand_formula_elsewhere():
    x0, noise, pred = _video(seed=1), _video(seed=2), _video(seed=3).requires_grad_()
    frames = F.frame_mask(torch.tensor([0, 1, 2]), 5)
    loss = F.flow_matching_loss(pred, x0, noise, frames, loss_scale=10.0)
    keep = (1 - frames)[:, None, :, None, None]
    hand = 10.0 * ((pred - (noise - x0)) ** 2 * keep).sum() / pred.numel()
    torch.testing.assert_close(loss, hand, rtol=1e-6, atol=0)
    loss.backward()
    assert torch.count_nonzero(pred.grad * (1 - keep)) == 0  # conditioning frames get no gradient
    assert torch.count_nonzero(pred.grad * keep) > 0
    noisy = F.flow_matching_loss(pred, x0, noise, frames, loss_scale=10.0, mean_over="noisy")
    torch.testing.assert_close(noisy, hand * pred.numel() / (keep.sum() * 4 * 3 * 2), rtol=1e-6, atol=0)
    # every frame conditioning: exactly zero, whatever the prediction
    all_cond = F.flow_matching_loss(pred, x0, noise, torch.ones(3, 5))
    assert all_cond.item() == 0.0
    # the official replacement: prediction on conditioning frames is ε − gt
    replaced = F.replace_prediction(pred.detach(), x0, noise, frames)
    assert torch.equal(replaced[1, :, 0], (noise - x0)[1, :, 0]) and torch.equal(replaced[0], pred.detach()[0])


def test_the_default_loss_is_the_official_plain_mse():
    """No x10: mean((v_pred - (eps - x0))^2) on a case small enough to compute by hand."""
    x0 = torch.tensor([1.0, 2.0]).reshape(1, 1, 2, 1, 1)
    noise = torch.tensor([0.5, -1.0]).reshape(1, 1, 2, 1, 1)
    pred = torch.tensor([0.0, -2.0]).reshape(1, 1, 2, 1, 1)
    # v = eps - x0 = (-0.5, -3.0); errors (0.5, 1.0); mean of squares (0.25 + 1.0) / 2
    assert F.flow_matching_loss(pred, x0, noise).item() == pytest.approx(0.625)
    assert F.FlowMatching().loss_scale == 1.0


def test_loss_without_mask_is_scaled_mse():
    x0, noise, pred = _video(seed=4, dtype=torch.float64), _video(seed=5, dtype=torch.float64), _video(seed=6)
    loss = F.flow_matching_loss(pred.double(), x0, noise, loss_scale=2.0)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, 2.0 * ((pred.double() - noise + x0) ** 2).mean())


def test_prepare_builds_the_network_inputs():
    objective = F.FlowMatching(timesteps=F.TimestepSampler.paper(shift=2.0), conditional_frame_timestep=1e-4)
    x0 = _video(b=8, seed=7)
    inputs = objective.prepare(x0, gen(12))
    frames = inputs.frames
    assert frames.shape == (8, 5) and torch.equal(frames, F.frame_mask(inputs.num_condition, 5))
    keep = (1 - frames)[:, None, :, None, None]
    tt = inputs.t[:, None, None, None, None]
    expected = (1 - tt) * x0 + tt * inputs.noise
    torch.testing.assert_close(inputs.x_t * keep, expected * keep)
    cond = frames.bool()
    assert torch.equal(inputs.x_t.permute(0, 2, 1, 3, 4)[cond], x0.permute(0, 2, 1, 3, 4)[cond])  # exact gt
    assert inputs.condition_mask.shape == (8, 1, 5, 3, 2)
    torch.testing.assert_close(inputs.timesteps[cond], torch.full_like(inputs.timesteps[cond], 0.1))
    torch.testing.assert_close(inputs.timesteps[~cond], (inputs.t[:, None] * 1000).expand(8, 5)[~cond])
    # a perfect velocity on the noisy frames gives zero loss whatever the conditioning frames hold
    pred = inputs.noise - x0 + 100.0 * (1 - keep)
    assert objective.loss(pred, inputs).item() == 0.0
    again = objective.prepare(x0, gen(12))
    assert torch.equal(again.x_t, inputs.x_t) and torch.equal(again.timesteps, inputs.timesteps)


def test_validation_messages():
    x0 = _video()
    with pytest.raises(ValueError, match="noise"):
        F.flow_matching_loss(x0, x0, x0[:, :2])
    with pytest.raises(ValueError, match="frame mask"):
        F.flow_matching_loss(x0, x0, x0, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="mean_over"):
        F.flow_matching_loss(x0, x0, x0, mean_over="sum")
    with pytest.raises(ValueError, match="shift"):
        F.TimestepSampler(shift=0.0)
    with pytest.raises(ValueError, match="tail"):
        F.TimestepSampler(tail="none", tail_prob=0.1)
    with pytest.raises(TypeError, match="generator"):
        F.TimestepSampler().sample(4, None)
    with pytest.raises(ValueError, match="t must be"):
        F.interpolate(x0, x0, torch.zeros(3, 4))
