"""rCM distillation (cosmos_models/distill/rcm.py, distill_cli.py): the TrigFlow wrapper, the sCM tangent
math on analytic networks (exact consistency function of Gaussian data), the loss against a direct
transcription of rCM's training_step_generator, DMD / fake-score terms, the JVP of the whole tiny DiT
through our kernels against torch.func.jvp over the plain-PyTorch reference path (float64) and on the
Triton backend in the interpreter, FSDP2 and context parallelism on 2 gloo ranks against one process,
exact resume, a toy teacher distilled into a measurably better 4-step student, the few-step sampler
and `cosmos sample --student` / `cosmos distill`."""
import copy
import importlib
import math
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import cosmos_kernels as ck
import cosmos_models as cm
from cosmos_kernels.reference import adaln as ref_adaln
from cosmos_kernels.reference import flash_attention as ref_fa
from cosmos_kernels.reference import neighborhood_attention as ref_na
from cosmos_kernels.reference import rope as ref_rope
from cosmos_kernels.testing import assert_close
from cosmos_models.data import prepare as train_data
from cosmos_models.distill import rcm as D
from cosmos_models.nets import dit
from cosmos_models.sampling import solvers
from cosmos_models.training import objective as flow
from cosmos_models.distill.distiller import DistillConfig, Distiller
from tests import helpers
from tests.helpers import assert_curves_close, runnable_backends

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# analytic networks in the DiT's interface: (x, timesteps, context, condition_video_input_mask=None)
# ---------------------------------------------------------------------------------------------
class GaussianFlow(nn.Module):
    """Exact rectified-flow velocity of data x0 ~ N(mu + shift·mean(context), std²) per element:
    v = (x_s − E[x0 | x_s])/s. The context shift makes classifier-free guidance meaningful."""

    config = SimpleNamespace(timestep_scale=0.001)

    def __init__(self, mu, std, shift=0.0):
        super().__init__()
        self.register_buffer("mu", mu)
        self.std, self.shift = std, shift

    def forward(self, x, timesteps, context, condition_video_input_mask=None):
        s = (timesteps * self.config.timestep_scale)[:, None, :, None, None].to(x.dtype)
        mu = self.mu + self.shift * context.mean(dim=(1, 2)).to(x.dtype)[:, None, None, None, None]
        var = self.std ** 2
        x0 = mu + (1 - s) * var / ((1 - s) ** 2 * var + s ** 2) * (x - (1 - s) * mu)
        return (x - x0) / s


class GaussianConsistency(nn.Module):
    """A rectified-flow network whose x0 is f(x_t, t) = mu + std·(x_t − cos t·mu)/√(cos² t·(a·std)² + sin² t):
    for a = 1 the exact consistency function of GaussianFlow's probability-flow ODE (the ODE keeps
    (x_t − cos t·mu)/σ_t constant, σ_t² = cos² t·std² + sin² t); `a` (a parameter) breaks it."""

    config = SimpleNamespace(timestep_scale=0.001)

    def __init__(self, mu, std, a=1.0):
        super().__init__()
        self.register_buffer("mu", mu)
        self.std = std
        self.a = nn.Parameter(torch.tensor(a, dtype=mu.dtype))

    def consistency(self, x_t, t):
        cos, sin = torch.cos(t), torch.sin(t)
        return self.mu + self.std * (x_t - cos * self.mu) / torch.sqrt(cos ** 2 * (self.a * self.std) ** 2 + sin ** 2)

    def forward(self, x, timesteps, context, condition_video_input_mask=None):
        s = (timesteps * self.config.timestep_scale)[:, None, :, None, None].to(x.dtype)
        t = torch.atan2(s, 1 - s)
        f = self.consistency(x * (torch.cos(t) + torch.sin(t)), t)
        return (x - f) / s  # x0 = x_s − s·v = f


def _gaussian_setup(B=3, shape=(2, 3, 2, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(1, *shape, generator=g, dtype=F64)
    x_t = torch.randn(B, *shape, generator=g, dtype=F64) * 1.3
    t = torch.rand(B, generator=g, dtype=F64) * 1.2 + 0.2
    ctx = torch.zeros(B, 1, 4, dtype=F64)
    return mu, x_t, t, ctx


def test_trigflow_wrapper_is_the_rectified_flow_network():
    mu, x_t, t, ctx = _gaussian_setup()
    net = GaussianFlow(mu, 0.7)
    pred = D.denoise(net, x_t, t, ctx)
    s = (torch.sin(t) / (torch.cos(t) + torch.sin(t)))[:, None, None, None, None]
    x_s = x_t / (torch.cos(t) + torch.sin(t))[:, None, None, None, None]
    v = net(x_s, s[:, 0, :, 0, 0] / 0.001, ctx)
    torch.testing.assert_close(pred.x0, x_s - s * v)
    c, sn = torch.cos(t)[:, None, None, None, None], torch.sin(t)[:, None, None, None, None]
    torch.testing.assert_close(pred.F, (c * x_t - pred.x0) / sn)
    # the exact RF denoiser of Gaussian data, in TrigFlow terms
    var = 0.49
    expect = mu + c * var / (c ** 2 * var + sn ** 2) * (x_t - c * mu)
    torch.testing.assert_close(pred.x0, expect)
    # coefficient identities (rCM's RectifiedFlow_TrigFlowWrapper)
    c_skip, c_out, c_in, c_noise = D.trigflow_coefficients(t)
    torch.testing.assert_close(c_skip, c_in)
    torch.testing.assert_close(c_out, -torch.sin(t) * c_in)
    torch.testing.assert_close(c_noise, -c_out)
    assert D.rf_to_trig(0.5) == pytest.approx(math.pi / 4)


# ---------------------------------------------------------------------------------------------
# the sCM tangent on analytic networks
# ---------------------------------------------------------------------------------------------
def _along_ode(fn, teacher_F, x_t, t, h=1e-5):
    """d/dt fn(x(t), t) along dx/dt = F_T by central differences (x(t ± h) ≈ x ± h·F_T, error O(h²))."""
    t5 = t[:, None, None, None, None]
    return (fn(x_t + h * teacher_F, t + h, t5 + h) - fn(x_t - h * teacher_F, t - h, t5 - h)) / (2 * h)


def test_scm_direction_vanishes_for_the_exact_consistency_function():
    mu, x_t, t, ctx = _gaussian_setup()
    teacher, student = GaussianFlow(mu, 0.7), GaussianConsistency(mu, 0.7)
    F_T = D.denoise(teacher, x_t, t, ctx).F
    tf = D.frame_times(t, x_t.shape[0])
    tx, tt = D.scm_tangents(x_t, tf, F_T)
    F, dF = D.student_jvp(student, x_t, tf, tx, tt, ctx)
    g = D.scm_direction(F.detach(), F_T, x_t, dF, tf, r=1.0)
    # the terms are O(1); their combination cancels to rounding
    assert float(F_T.abs().max()) > 0.3 and float(dF.abs().max()) > 0.1
    assert float(g.abs().max()) < 1e-12


def test_scm_tangent_and_direction_match_finite_differences_along_the_teacher_ode():
    mu, x_t, t, ctx = _gaussian_setup(seed=1)
    teacher, student = GaussianFlow(mu, 0.7), GaussianConsistency(mu, 0.7, a=0.8)
    F_T = D.denoise(teacher, x_t, t, ctx).F
    tf = D.frame_times(t, x_t.shape[0])
    tx, tt = D.scm_tangents(x_t, tf, F_T)
    F, dF = D.student_jvp(student, x_t, tf, tx, tt, ctx)
    assert F.requires_grad and not dF.requires_grad  # one pass: F keeps its graph, the tangent is a target
    cs = (torch.cos(t) * torch.sin(t))[:, None, None, None, None]
    c = torch.cos(t)[:, None, None, None, None]
    # ∂F = cos·sin·dF/dt along the ODE
    dF_fd = _along_ode(lambda x, tt_, t5: D.denoise(student, x, tt_, ctx).F, F_T, x_t, t)
    torch.testing.assert_close(dF, cs * dF_fd, rtol=1e-7, atol=1e-9)
    # with r = 1, g = cos·df/dt for f = cos·x_t − sin·F (the consistency parameterization)
    g = D.scm_direction(F.detach(), F_T, x_t, dF, tf, r=1.0)
    df_fd = _along_ode(lambda x, tt_, t5: torch.cos(t5) * x - torch.sin(t5) * D.denoise(student, x, tt_, ctx).F,
                       F_T, x_t, t)
    torch.testing.assert_close(g, c * df_fd, rtol=1e-7, atol=1e-9)
    assert float(g.abs().max()) > 1e-2
    # warmup r < 1: rCM's formula term by term
    r = 0.3
    s = torch.sin(t)[:, None, None, None, None]
    expect = -c * torch.sqrt(1 - r ** 2 * s ** 2) * (F.detach() - F_T) - r * (cs * x_t + dF)
    torch.testing.assert_close(D.scm_direction(F.detach(), F_T, x_t, dF, tf, r), expect)


def _direct_rcm_student_loss(student, teacher, x0, eps, t, ctx, neg, guidance, r, scale=100.0):
    """rCM training_step_generator (sCM part) written out independently: separate no-grad JVP, then
    a forward with grad; float64 tangent normalization; sum over (C, T, H, W)."""
    c, s = torch.cos(t)[:, None, None, None, None], torch.sin(t)[:, None, None, None, None]
    x_t = c * x0 + s * eps

    def F_of(net, x, time, context):
        time5 = time[:, None, None, None, None]
        cos, sin = torch.cos(time5), torch.sin(time5)
        c_skip, c_out, c_in = 1 / (cos + sin), -sin / (cos + sin), 1 / (cos + sin)
        c_noise = sin / (cos + sin) * 1000.0
        v = net(x * c_in, c_noise[:, 0, :, 0, 0], context)
        return (cos * x - (c_skip * x + c_out * v)) / sin

    with torch.no_grad():
        F_c, F_u = F_of(teacher, x_t, t, ctx), F_of(teacher, x_t, t, neg)
        F_T = F_c + guidance * (F_c - F_u)
        _, tF = torch.func.jvp(lambda x, time: F_of(student, x, time, ctx), (x_t, t),
                               (c * s * F_T, (c * s)[:, 0, 0, 0, 0]))
    F = F_of(student, x_t, t, ctx)
    g = -c * torch.sqrt(1 - r ** 2 * s ** 2) * (F.detach() - F_T) - r * (c * s * x_t + tF)
    g = g.double() / (g.double().norm(p=2, dim=(1, 2, 3, 4), keepdim=True) + 0.1)
    return scale * ((F - F.detach() - g) ** 2).sum(dim=(1, 2, 3, 4))


@pytest.mark.parametrize("one_pass", [True, False])
def test_student_loss_and_gradient_match_a_direct_transcription_of_rcm(one_pass):
    mu, _, _, _ = _gaussian_setup()
    g = torch.Generator().manual_seed(3)
    B, shape = 3, tuple(mu.shape[1:])
    x0 = torch.randn(B, *shape, generator=g, dtype=F64)
    ctx = torch.randn(B, 2, 4, generator=g, dtype=F64)
    neg = torch.zeros_like(ctx)
    teacher = GaussianFlow(mu, 0.7, shift=0.5)
    student = GaussianConsistency(mu, 0.7, a=0.9)
    cfg = D.RCMConfig(teacher_guidance=2.0, tangent_warmup=10, loss_scale_dmd=0.0, one_pass_jvp=one_pass)
    draws = D.draw([torch.Generator().manual_seed(i) for i in range(B)], shape, cfg, dtype=F64)
    it = 4
    loss, metrics = D.student_loss(student, teacher, None, D.Batch(x0, ctx, neg), draws, cfg, it)
    (grad,) = torch.autograd.grad(loss.sum(), [student.a])
    direct = _direct_rcm_student_loss(student, teacher, x0, draws.eps, draws.t, ctx, neg, 2.0, r=0.4)
    (grad_direct,) = torch.autograd.grad(direct.sum(), [student.a])
    torch.testing.assert_close(loss, direct)
    torch.testing.assert_close(grad, grad_direct)
    assert metrics["r"] == 0.4 and metrics["nan_samples"] == 0 and float(grad.abs()) > 0


def test_samples_with_a_nan_tangent_contribute_nothing():
    """A NaN in the teacher's prediction of one sample (so in its g) zeroes that sample's loss and
    leaves the gradient of the others untouched (rCM's NaN masks)."""
    mu, _, _, _ = _gaussian_setup()
    B, shape = 2, tuple(mu.shape[1:])
    x0 = torch.randn(B, *shape, dtype=F64)
    ctx = torch.zeros(B, 1, 4, dtype=F64)
    ctx[1, 0, 0] = float("nan")  # the teacher shifts its mean by the context: NaN for sample 1
    cfg = D.RCMConfig(teacher_guidance=0.0, tangent_warmup=0, loss_scale_dmd=0.0)
    student = GaussianConsistency(mu, 0.7, a=0.9)
    teacher = GaussianFlow(mu, 0.7, shift=1.0)
    draws = D.draw([torch.Generator().manual_seed(i) for i in range(B)], shape, cfg, dtype=F64)
    loss, metrics = D.student_loss(student, teacher, None, D.Batch(x0, ctx), draws, cfg, 5)
    assert metrics["nan_samples"] == 1 and float(loss[1].detach()) == 0.0 and math.isfinite(float(loss[0].detach()))
    (grad,) = torch.autograd.grad(loss.sum(), [student.a])
    only = D.student_loss(student, teacher, None, D.Batch(x0[:1], ctx[:1]), D.Draws(*(
        d[:, :1] if d.dim() > 1 and d.shape[0] == cfg.max_simulation_steps else d[:1] for d in draws)), cfg, 5)[0]
    (expect,) = torch.autograd.grad(only.sum(), [student.a])
    torch.testing.assert_close(grad, expect)


# ---------------------------------------------------------------------------------------------
# DMD and fake-score terms, schedule, draws
# ---------------------------------------------------------------------------------------------
def test_dmd_gradient_is_the_normalized_score_difference():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(2, 3, 2, 2, 2, generator=g, dtype=F64, requires_grad=True)
    fake, teach = torch.randn(2, 3, 2, 2, 2, generator=g, dtype=F64), torch.randn(2, 3, 2, 2, 2, generator=g, dtype=F64)
    loss = D.dmd_loss(G, fake, teach)
    (dG,) = torch.autograd.grad(loss.sum(), [G])
    weight = (G.detach() - teach).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(dG, 2 * (fake - teach) / weight)
    torch.testing.assert_close(loss, ((fake - teach) / weight).square().sum((1, 2, 3, 4)))
    # masked frames: no gradient there, weight over the kept frames only
    keep = torch.tensor([1.0, 0.0], dtype=F64)[None, None, :, None, None].expand(2, 1, 2, 1, 1)
    (dGm,) = torch.autograd.grad(D.dmd_loss(G, fake, teach, keep=keep).sum(), [G])
    w = (G.detach() - teach)[:, :, :1].abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(dGm[:, :, :1], 2 * (fake - teach)[:, :, :1] / w)
    assert float(dGm[:, :, 1:].abs().max()) == 0.0
    bad = fake.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    out = D.dmd_loss(G, bad, teach).detach()
    assert float(out[0]) == 0.0 and math.isfinite(float(out[1]))


def test_fake_score_loss_formula():
    G, x0 = torch.randn(2, 3, 2, 2, 2, dtype=F64), torch.randn(2, 3, 2, 2, 2, dtype=F64)
    t = torch.tensor([0.3, 1.1], dtype=F64)
    expect = ((G - x0) ** 2 / torch.sin(t)[:, None, None, None, None] ** 2).sum((1, 2, 3, 4))
    torch.testing.assert_close(D.fake_score_loss(G, x0, t[:, None]), expect)


def test_alternation_schedule_follows_rcm():
    cfg = D.RCMConfig(tangent_warmup=10, student_update_freq=5)
    student = [i for i in range(30) if cfg.is_student_iteration(i)]
    assert student == list(range(11)) + [15, 20, 25]
    assert [cfg.student_iteration_count(i) for i in (0, 9, 10, 14, 15, 29)] == [0, 9, 10, 10, 11, 13]
    assert [cfg.fake_iteration_count(i) for i in (11, 12, 14, 16)] == [0, 1, 3, 4]
    assert not cfg.dmd_active(10) and cfg.dmd_active(11)
    assert cfg.warmup_ratio(5) == 0.5 and cfg.warmup_ratio(50) == 1.0
    sc = D.RCMConfig(loss_scale_dmd=0.0)
    assert all(sc.is_student_iteration(i) for i in range(2000)) and not sc.dmd_active(5000)


def test_draws_are_per_sample_and_reproducible():
    cfg = D.RCMConfig(max_simulation_steps=3)
    shape = (4, 3, 2, 2)
    both = D.draw([torch.Generator().manual_seed(s) for s in (5, 6)], shape, cfg)
    one = D.draw([torch.Generator().manual_seed(6)], shape, cfg)
    assert both.chain_noise.shape == (3, 2, *shape) and both.chain_t.shape == (3, 2)
    for a, b in zip(both, one):
        torch.testing.assert_close(a[:, 1:] if a.dim() > 1 and a.shape[0] == 3 else a[1:], b)
    # times: sCM with the video multiplier sqrt(T); DMD shifted-uniform; all within (0, π/2)
    g = torch.Generator().manual_seed(0)
    t = D.sample_scm_time(200_000, g, D.RCMConfig(), latent_frames=4)
    log_sigma = torch.log(torch.tan(t))
    assert abs(float(log_sigma.mean()) - (-0.8 + math.log(2))) < 0.02 and abs(float(log_sigma.std()) - 1.6) < 0.02
    td = D.sample_dmd_time(200_000, g, D.RCMConfig())
    s = torch.tan(td) / (1 + torch.tan(td))  # RF time
    u = s / (5 - 4 * s)  # inverse shift
    assert abs(float(u.mean()) - 0.5) < 0.005 and float(td.min()) > 0 and float(td.max()) <= math.pi / 2


def test_config_validation():
    with pytest.raises(ValueError, match="tangent_warmup"):
        D.RCMConfig(tangent_warmup=-1)
    with pytest.raises(ValueError, match="student_lr"):
        D.RCMConfig(student_lr=0.0)
    with pytest.raises(ValueError, match="betas"):
        D.RCMConfig(betas=(0.0, 1.0))
    with pytest.raises(ValueError, match="teacher_guidance"):
        D.RCMConfig(teacher_guidance=float("nan"))
    with pytest.raises(ValueError, match="t must be"):
        D.frame_times(torch.zeros(3, 2, 1), 3)


# ---------------------------------------------------------------------------------------------
# the JVP of the whole DiT through our kernels
# ---------------------------------------------------------------------------------------------
def _reference_kernels():
    """cosmos_kernels as dit.py uses it, with every op replaced by its plain-PyTorch reference
    (torch's own autograd and forward-AD rules instead of the custom ops' hand-written ones)."""
    def na(q, k, v, grid, kernel_size, dilation, stride, is_causal, backend=None):
        return ref_na.neighborhood_attention_3d(q, k, v, grid, kernel_size, dilation, stride, is_causal,
                                                q.shape[-1] ** -0.5)[0]

    return SimpleNamespace(
        BACKENDS=ck.BACKENDS, rope3d_freqs=ck.rope3d_freqs, UlyssesAttention=ck.UlyssesAttention,
        adaln_modulate=lambda x, shift, scale, eps=1e-6, backend=None: ref_adaln.adaln_modulate(x, shift, scale, eps),
        gated_residual=lambda x, y, gate, backend=None: ref_adaln.gated_residual(x, y, gate),
        gated_residual_adaln=lambda x, y, gate, shift, scale, eps=1e-6, backend=None: ref_adaln.gated_residual_adaln(
            x, y, gate, shift, scale, eps),
        qk_norm_rope=lambda q, k, qw, kw, freqs, eps=1e-6, backend=None: ref_rope.qk_norm_rope(
            q, k, qw, kw, freqs, eps),
        flash_attention=lambda q, k, v, softmax_scale=None, backend=None: ref_fa.attention(q, k, v, softmax_scale),
        neighborhood_attention_3d=na)


def _perturbed(name, dtype, seed=0):
    torch.manual_seed(seed)
    model = cm.build(name, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:  # zero-initialized projections: give every path signal
                p.normal_(0, 0.2)
    return model


def _jvp_inputs(dtype, B=2, T=2, H=4, W=4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 16, T, H, W, generator=g, dtype=dtype)
    t = (torch.rand(B, 1, generator=g, dtype=F64) + 0.2)
    ctx = torch.randn(B, 3, 48, generator=g, dtype=dtype)
    return x, t, ctx, torch.randn(x.shape, generator=g, dtype=dtype), torch.rand(t.shape, generator=g, dtype=F64)


@pytest.mark.parametrize("name", ["tiny", "tiny-natten"])
def test_jvp_of_the_tiny_dit_through_our_kernels_matches_the_reference_path(name, monkeypatch):
    model = _perturbed(name, F64)
    x, t, ctx, tx, tt = _jvp_inputs(F64, H=8, W=8)  # token grid 2x4x4: tiny-natten's 3x3 window is sparse
    F, dF = D.student_jvp(model, x, t, tx, tt, ctx)
    (F * torch.linspace(-1, 1, F.numel(), dtype=F64).reshape(F.shape)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    monkeypatch.setattr(dit, "ck", _reference_kernels())
    F_ref, dF_ref = torch.func.jvp(lambda a, b: D.denoise(model, a, b, ctx).F, (x, t), (tx, tt))
    (F_ref * torch.linspace(-1, 1, F.numel(), dtype=F64).reshape(F.shape)).sum().backward()
    for got, want in ((F, F_ref), (dF, dF_ref)):
        assert float((got - want).norm() / want.norm()) < 1e-12
    for n, p in model.named_parameters():
        assert float((grads[n] - p.grad).norm()) <= 1e-12 * max(float(p.grad.norm()), 1e-30), n


def test_jvp_of_the_tiny_dit_on_the_triton_backend_in_the_interpreter(monkeypatch):
    if "triton" not in runnable_backends("flash_attention"):
        pytest.skip("no Triton backend here")
    model = _perturbed("tiny", torch.float32)
    x, t, ctx, tx, tt = _jvp_inputs(torch.float32, B=1)
    F, dF = D.student_jvp(model, x, t, tx, tt, ctx)
    F.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fa_triton = importlib.import_module("cosmos_kernels.triton.flash_attention")
    calls = {"forward": 0, "forward_jvp": 0}
    for name in calls:
        def counted(*a, _fn=getattr(fa_triton, name), _name=name):
            calls[_name] += 1
            return _fn(*a)
        monkeypatch.setattr(fa_triton, name, counted)
    with ck.use_backend("triton"):
        F_t, dF_t = D.student_jvp(model, x, t, tx, tt, ctx)
        # the rCM step's JVP pays one fused pass per attention call, no separate forward
        assert calls["forward"] == 0 and calls["forward_jvp"] >= 2 * len(model.blocks), calls
        F_t.square().sum().backward()
    assert_close(F_t, F, torch.float32, long_reduction=True)
    assert_close(dF_t, dF, torch.float32, grad=True, long_reduction=True)
    for p, g in zip(model.parameters(), grads):
        if g.norm() > 0:
            assert_close(p.grad, g, torch.float32, grad=True, long_reduction=True)


# ---------------------------------------------------------------------------------------------
# distillation runs: FSDP2 and context parallel vs one process, resume
# ---------------------------------------------------------------------------------------------
FRAMES = 5


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    """Synthetic clips with cached latents and a tiny teacher file."""
    root = tmp_path_factory.mktemp("distill")
    train_data.prepare_synthetic(str(root / "data"), cm.get_config("tiny"), num_frames=FRAMES, size=(64, 64),
                                 clips=4, vae_dir=str(root / "vae"), device=torch.device("cpu"))
    teacher = _perturbed("tiny", torch.float32, seed=3)
    cm.save_checkpoint(teacher, str(root / "teacher.safetensors"))
    return SimpleNamespace(data=str(root / "data"), teacher=str(root / "teacher.safetensors"))


def distill_config(out, inputs, **changes) -> DistillConfig:
    base = dict(teacher=inputs.teacher, config="tiny", out=str(out), data=inputs.data, frames=FRAMES, steps=6,
                batch=2, log_every=1, save_every=0, kernel_backend="torch", progress=False, dist_timeout=60.0,
                guidance=1.5, tangent_warmup=2, student_update_freq=2, student_lr=1e-3, fake_lr=1e-3)
    base.update(changes)
    return DistillConfig(**base)


def run_in_process(cfg: DistillConfig):
    distiller = Distiller(cfg)
    try:
        return distiller.train()
    finally:
        distiller.close()


def run_forked(cfg: DistillConfig, world: int = 2) -> dict[int, list]:
    """Run `cfg` on `world` ranks of a gloo group; {rank: [(step, loss)]}."""
    return helpers.run_ranks(run_in_process, cfg, world=world)


def _jvp_through_fsdp() -> bool:
    from cosmos_models.training import parallel
    layout = parallel.init("cpu")
    try:
        return parallel.jvp_through_fsdp_supported(layout)
    finally:
        parallel.close(layout)


@pytest.mark.timeout(300)
def test_fsdp2_and_context_parallel_on_two_ranks_match_one_process(tmp_path, run_inputs):
    """Iterations 1-2 student (warmup), 3 student + DMD, 4 fake score, 5 student + DMD, 6 fake score.
    On a torch that cannot run torch.func.jvp through FSDP2 (2.11) several ranks are refused up front."""
    single = run_in_process(distill_config(tmp_path / "one", run_inputs))
    if not _jvp_through_fsdp():
        with pytest.raises(AssertionError, match="needs torch.func.jvp through FSDP2"):
            run_forked(distill_config(tmp_path / "fsdp", run_inputs, batch=1))
        return
    fsdp = run_forked(distill_config(tmp_path / "fsdp", run_inputs, batch=1))
    # cp 2 with activation checkpointing: the separate no-grad JVP pass
    cp = run_forked(distill_config(tmp_path / "cp", run_inputs, cp=2, sac="predict2_2b_720_aggressive"))
    for curves in (fsdp, cp):
        assert_curves_close(curves[0], curves[1], rtol=0)  # every rank logs the same reduced loss
        assert_curves_close(curves[0], single)


def test_resume_continues_bit_identically(tmp_path, run_inputs):
    full = run_in_process(distill_config(tmp_path / "full", run_inputs))
    first = run_in_process(distill_config(tmp_path / "part", run_inputs, steps=3, save_every=3))
    assert first == full[:3]
    rest = run_in_process(distill_config(tmp_path / "part", run_inputs, resume=True))
    assert rest == full[3:]
    for name in ("student.safetensors", "student_ema.safetensors"):
        assert os.path.isfile(tmp_path / "part" / name)
    with pytest.raises(FileExistsError, match="--resume"):
        Distiller(distill_config(tmp_path / "part", run_inputs))


def test_distiller_rejects_a_missing_teacher(tmp_path, run_inputs):
    with pytest.raises(ValueError, match="--teacher is required"):
        Distiller(distill_config(tmp_path, run_inputs, teacher=""))
    with pytest.raises(FileNotFoundError, match="no such file"):
        Distiller(distill_config(tmp_path, run_inputs, teacher=str(tmp_path / "nope.safetensors")))


# ---------------------------------------------------------------------------------------------
# a toy teacher distilled into a better 4-step student
# ---------------------------------------------------------------------------------------------
TOY_SHAPE = (16, 2, 2, 2)  # (C, T, H, W): 2 latent frames of 1 token each on the tiny DiT


def _toy_data():
    """Two classes (a one-token text embedding each), each a pair of modes ±p_c plus 0.05 noise."""
    g = torch.Generator().manual_seed(0)
    p = torch.randn(2, *TOY_SHAPE, generator=g)
    modes = torch.stack([p, -p], 1)
    emb = torch.randn(2, 1, 48, generator=g)

    def sample(n, gen):
        cls = torch.randint(0, 2, (n,), generator=gen)
        mode = torch.randint(0, 2, (n,), generator=gen)
        return modes[cls, mode] + 0.05 * torch.randn(n, *TOY_SHAPE, generator=gen), emb[cls]

    return sample, emb


def _train_toy_teacher(sample, steps=600):
    torch.manual_seed(0)
    teacher = cm.build("tiny")
    opt = torch.optim.AdamW(teacher.parameters(), lr=2e-3, weight_decay=0.0)
    objective = flow.FlowMatching(condition=None, timesteps=flow.TimestepSampler(shift=1.0, num_train_timesteps=None))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x0, ctx = sample(32, g)
        keep = (torch.rand(32, generator=g) > 0.2).float()[:, None, None]  # text dropout for CFG
        inputs = objective.prepare(x0, g)
        loss = objective.loss(teacher(inputs.x_t, inputs.timesteps, ctx * keep), inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return teacher.requires_grad_(False)


def _rms(a, b):
    return float((a - b).flatten(1).norm(dim=1).mean() / math.sqrt(a[0].numel()))


def _energy_distance(a, b):
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


@pytest.mark.timeout(300)
def test_distilled_student_4_step_samples_get_closer_to_the_teachers_35_step_samples():
    """Metric: rms latent L2 (per element) between the student's 4-step samples and the teacher's
    35-step UniPC samples (CFG 1.0, shift 5) from the same initial noise, 256 samples; also the
    energy distance between the two sample sets (per class) and the 1-step L2."""
    sample, emb = _toy_data()
    teacher = _train_toy_teacher(sample)
    guidance = 1.0
    n = 256
    cls = torch.arange(n) % 2
    ctx = emb[cls]
    noise = torch.randn(n, *TOY_SHAPE, generator=torch.Generator().manual_seed(123))
    neg = torch.zeros_like(ctx)

    def velocity(x, sigma):
        ts = torch.full((n, 1), sigma / teacher.config.timestep_scale)
        return solvers.guided_velocity(teacher(x, ts, ctx), teacher(x, ts, neg), guidance)

    with torch.no_grad():
        reference = solvers.sample(velocity, noise, solvers.flow_sigmas(35, 5.0))

    def metrics(student):
        four = D.few_step_sample(student, noise, ctx, generator=torch.Generator().manual_seed(7))
        one = D.few_step_sample(student, noise, ctx, generator=torch.Generator().manual_seed(7), steps=1)
        energy = sum(_energy_distance(four[cls == c], reference[cls == c]) for c in (0, 1)) / 2
        return {"l2_4step": _rms(four, reference), "energy_4step": energy, "l2_1step": _rms(one, reference)}

    student = copy.deepcopy(teacher).requires_grad_(True)
    fake = copy.deepcopy(teacher).requires_grad_(True)
    before = metrics(student)
    cfg = D.RCMConfig(teacher_guidance=guidance, tangent_warmup=100, student_lr=1e-3, fake_lr=1e-3)
    opt_s = torch.optim.AdamW(student.parameters(), lr=cfg.student_lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_f = torch.optim.AdamW(fake.parameters(), lr=cfg.fake_lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(2)
    for it in range(400):
        x0, c = sample(16, g)
        draws = D.draw([torch.Generator().manual_seed(it * 100 + i) for i in range(16)], TOY_SHAPE, cfg)
        batch = D.Batch(x0, c, torch.zeros_like(c))
        if cfg.is_student_iteration(it):
            loss, _ = D.student_loss(student, teacher, fake, batch, draws, cfg, it)
            opt = opt_s
        else:
            loss, _ = D.fake_score_step_loss(student, fake, batch, draws, cfg, it)
            opt = opt_f
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    after = metrics(student)
    print(f"\ntoy rCM distillation (400 iterations):\n  before {before}\n  after  {after}")
    assert after["l2_4step"] < 0.98 * before["l2_4step"], (before, after)
    assert after["energy_4step"] < 0.8 * before["energy_4step"], (before, after)
    assert after["l2_1step"] < 0.95 * before["l2_1step"], (before, after)


# ---------------------------------------------------------------------------------------------
# the few-step sampler
# ---------------------------------------------------------------------------------------------
def test_sampling_times_and_validation():
    assert D.sampling_times() == [math.atan(80), 1.5, 1.4, 1.0, 0.0]
    assert D.sampling_times(2) == [math.atan(80), 1.5, 0.0]
    assert D.sampling_times(6, mid_t=[1.5, 1.3, 1.1, 0.8, 0.5])[-2] == 0.5
    with pytest.raises(ValueError, match="pass mid_t"):
        D.sampling_times(6)
    with pytest.raises(ValueError, match="decrease"):
        D.sampling_times(3, mid_t=[1.0, 1.2])
    with pytest.raises(ValueError, match="steps must be"):
        D.sampling_times(0)


def test_few_step_sampler_steps_and_conditioning_frames():
    model = _perturbed("tiny", torch.float32)
    noise = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 3, 48)
    one = D.few_step_sample(model, noise, ctx, generator=torch.Generator().manual_seed(1), steps=1)
    first = D.denoise(model, noise, torch.full((2,), math.atan(80), dtype=F64), ctx).x0
    torch.testing.assert_close(one, first)
    a = D.few_step_sample(model, noise, ctx, generator=torch.Generator().manual_seed(1))
    b = D.few_step_sample(model, noise, ctx, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, one)
    gt = torch.randn_like(noise)
    frames = flow.frame_mask(torch.tensor([1, 2]), 3)
    out = D.few_step_sample(model, noise, ctx, generator=torch.Generator().manual_seed(1),
                            condition=D.Condition(gt, frames))
    assert torch.equal(out[0, :, :1], gt[0, :, :1]) and torch.equal(out[1, :, :2], gt[1, :, :2])
    assert not torch.allclose(out[0, :, 1:], gt[0, :, 1:])


def test_conditioning_frames_hold_ground_truth_without_tangent():
    """Conditioning frames: the network sees gt at the conditioning time, they get no tangent, and
    the student loss stays finite with finite gradients."""
    model = _perturbed("tiny", torch.float32)
    x0 = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(2, 3, 48)
    cfg = D.RCMConfig(teacher_guidance=0.0, tangent_warmup=0, loss_scale_dmd=0.0)
    draws = D.draw([torch.Generator().manual_seed(i) for i in range(2)], x0.shape[1:], cfg)
    cond = D.Condition(x0, flow.frame_mask(torch.tensor([1, 2]), 3))
    x_t = cond.impose(torch.cos(draws.t).float()[:, None, None, None, None] * x0)
    torch.testing.assert_close(x_t[:, :, :1] / (math.cos(cond.t) + math.sin(cond.t)), x0[:, :, :1])
    tf = cond.times(draws.t)
    assert float(tf[0, 0]) == pytest.approx(math.atan2(1e-4, 1 - 1e-4)) and float(tf[0, 1]) == float(draws.t[0])
    teacher = copy.deepcopy(model).requires_grad_(False)
    loss, _ = D.student_loss(model, teacher, None, D.Batch(x0, ctx, None, cond), draws, cfg, 3)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and all(torch.isfinite(p.grad).all() for p in model.parameters())
    F_T = D.teacher_prediction(teacher, x_t, tf, ctx, None, 0.0, condition_mask=cond.mask_channel(x0)).F
    tx, tt = D.scm_tangents(x_t, tf, F_T, cond.frames)
    assert float(tt[0, 0]) == 0.0 and float(tx[1, :, :2].abs().max()) == 0.0


# ---------------------------------------------------------------------------------------------
# sampling from a student, the CLIs
# ---------------------------------------------------------------------------------------------
def test_student_sampler_and_cosmos_sample_student(tmp_path):
    from cosmos_models.cli import main

    model = _perturbed("tiny", torch.float32)
    path = str(tmp_path / "student.safetensors")
    cm.save_checkpoint(model, path)
    sampler = D.StudentSampler(model, None)
    emb = torch.randn(1, 8, 48)
    latents = sampler.generate("text2world", prompt_embedding=emb, height=32, width=32, num_frames=5, seed=3,
                               output="latent", progress=False)
    assert latents.shape == (16, 2, 4, 4) and torch.isfinite(latents).all()
    g = torch.Generator().manual_seed(3)  # the pipeline's draws: the initial noise, then the fresh noises
    noise = torch.randn((1, 16, 2, 4, 4), generator=g)
    direct = D.few_step_sample(model, noise, emb, generator=g, model_inputs={"fps": model.config.fps})
    torch.testing.assert_close(latents, direct[0])
    with pytest.raises(ValueError, match="without classifier-free guidance"):
        sampler.generate("text2world", prompt_embedding=emb, guidance_scale=3.0, output="latent")
    out = str(tmp_path / "s.mp4")
    assert main(["sample", "--student", path, "--out", out, "--frames", "5", "--height", "32", "--width", "32",
                 "--no-progress", "--steps", "2"]) == 0
    assert os.path.getsize(out) > 0
    # both given: one line and exit 2 (the CLI's error handling), not a traceback
    assert main(["sample", "--student", path, "--checkpoint", path, "--out", out]) == 2


def test_cosmos_distill_cli(tmp_path, run_inputs, capsys):
    from cosmos_models.cli import main

    out = tmp_path / "run"
    assert main(["distill", "--teacher", run_inputs.teacher, "--config", "tiny", "--data", run_inputs.data,
                 "--frames", str(FRAMES), "--out", str(out), "--steps", "3", "--log-every", "1", "--guidance", "1",
                 "--kernel-backend", "torch", "--condition", "final", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "cosmos distill: tiny" in text and "one-pass JVP" in text and "iter       3" in text
    assert (out / "student.safetensors").is_file() and (out / "checkpoints" / "latest").is_file()
    log = (out / "distill_log.jsonl").read_text().splitlines()
    assert len(log) == 3
