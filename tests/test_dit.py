"""The DiT (cosmos_models.nets.dit, .variants, .config): official structure, forward/backward of every
variant, per-frame modulation, kernel path vs an independent plain-PyTorch block, torch.compile,
forward-mode JVP of the whole network, bad inputs."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cosmos_kernels as ck
import cosmos_models as cm
from tests import helpers
from cosmos_kernels import dispatch
from cosmos_models.nets.config import replace as replace_config
from cosmos_models.nets.dit import Block, Frames
from tests.helpers import runnable_backends

# a copy of shared/official/predict2.5-2b.params.json (official parameter names and shapes of the 2B)
OFFICIAL = Path(__file__).resolve().parent / "data" / "predict2.5-2b.params.json"
TINY = ["tiny", "tiny-natten", "tiny-transfer", "tiny-multiview", "tiny-action"]


def inputs(model, B=2, T=3, H=4, W=6, text_tokens=6, dtype=torch.float32):
    cfg = model.config
    if cfg.variant == "multiview":
        T = 2 * cfg.frames_per_view
        text_tokens = 2 * text_tokens
    x = torch.randn(B, cfg.latent_channels, T, H, W, dtype=dtype)
    t = torch.rand(B, T, dtype=dtype) * 1000
    ctx = torch.randn(B, text_tokens, cfg.text_channels, dtype=dtype)
    kw = {}
    if cfg.variant == "transfer":
        kw["control_input"] = {"edge": torch.randn_like(x), "depth": torch.randn_like(x)}
    if cfg.variant == "action":
        kw["action"] = torch.randn(B, cfg.actions_per_latent_frame * (T - 1), cfg.action_dim, dtype=dtype)
    return x, t, ctx, kw


def _perturb(model, scale=0.05):
    """Random values for the zero-initialized projections so every path carries signal."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().sum() == 0:
                p.normal_(0, scale)


# ---------------------------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------------------------
def test_2b_parameter_names_and_shapes_match_official():
    spec = json.loads(OFFICIAL.read_text())
    model = cm.build("predict2.5-2b", device="meta")
    ours = {k: tuple(p.shape) for k, p in model.named_parameters()}
    official = {k: tuple(s) for k, s in spec["params"]}
    assert sorted(set(ours) ^ set(official)) == []
    assert {k: s for k, s in official.items() if ours[k] != s} == {}
    assert sum(p.numel() for p in model.parameters()) == spec["total_params"] == 2_059_174_912


def test_configs_and_meta_builds():
    names = cm.configs()
    for name in ("predict2.5-2b", "predict2.5-14b", "transfer2.5-2b", "predict2.5-2b-multiview",
                 "predict2.5-2b-action", *TINY):
        assert name in names
    m14 = cm.build("predict2.5-14b", device="meta")
    assert len(m14.blocks) == 36 and m14.config.head_dim == 128
    assert m14.x_embedder.proj[1].weight.shape == (5120, 72)
    mv = cm.build("predict2.5-2b-multiview", device="meta")
    assert mv.x_embedder.proj[1].weight.shape == (2048, 100)  # (16 + 1 + 1 + 7) * 4
    assert mv.view_embeddings.weight.shape == (7, 7)
    tr = cm.build("transfer2.5-2b", device="meta")
    assert tr.control_embedder.proj[1].weight.shape == (2048, 130 * 4)
    assert [len(tr.control_blocks), tr.config.control_block_indices] == [4, (0, 7, 14, 21)]
    act = cm.build("predict2.5-2b-action", device="meta")
    assert act.action_embedder_B_D.fc1.weight.shape == (8192, 28)
    assert act.action_embedder_B_3D.fc2.weight.shape == (6144, 8192)
    with pytest.raises(ValueError, match="unknown model config"):
        cm.get_config("predict9")
    with pytest.raises(ValueError, match="divisible"):
        replace_config(cm.get_config("tiny"), num_heads=3)


def test_build_dtype_device_and_blocks_are_modules():
    m = cm.build("tiny", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in m.parameters())
    assert all(isinstance(b, Block) for b in m.blocks)  # per-block FSDP2 / checkpoint wrappers
    assert m.cp_group is None and all(b.cp_group is None for b in m.blocks)
    # zero-initialized second modulation layers (official init)
    assert m.blocks[0].adaln_modulation_mlp[2].weight.abs().sum() == 0
    assert m.final_layer.adaln_modulation[2].weight.abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# forward / backward of every variant
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TINY)
def test_forward_backward_every_variant(name):
    model = cm.build(name)
    _perturb(model)
    x, t, ctx, kw = inputs(model)
    x.requires_grad_()
    out = model(x, t, ctx, **kw)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


def test_bf16_forward():
    model = cm.build("tiny", dtype=torch.bfloat16)
    _perturb(model)
    x, t, ctx, _ = inputs(model)
    out = model(x.bfloat16(), t, ctx.bfloat16())
    ref = cm.build("tiny")
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    expect = ref(x, t, ctx)
    assert out.dtype == torch.bfloat16
    assert (out.float() - expect).norm() / expect.norm() < 5e-2


def test_per_frame_timesteps():
    model = cm.build("tiny")
    _perturb(model)
    x, t, ctx, _ = inputs(model, B=1)
    same = model(x, t[:, :1].expand(1, 3), ctx)
    torch.testing.assert_close(same, model(x, t[:, 0], ctx))  # (B,) broadcasts to every frame
    torch.testing.assert_close(same, model(x, t[:, :1], ctx))
    t2 = t[:, :1].expand(1, 3).clone()
    t2[:, 2] += 300
    assert not torch.allclose(model(x, t2, ctx), same)


def test_condition_and_padding_masks_enter_the_input():
    model = cm.build("tiny")
    _perturb(model)
    x, t, ctx, _ = inputs(model, B=1)
    base = model(x, t, ctx)
    cond = torch.zeros(1, 1, 3, 4, 6)
    torch.testing.assert_close(model(x, t, ctx, condition_video_input_mask=cond), base)
    cond[:, :, 0] = 1
    assert not torch.allclose(model(x, t, ctx, condition_video_input_mask=cond), base)
    per_frame = torch.tensor([1.0, 0, 0]).view(1, 1, 3, 1, 1)  # broadcast over H, W
    torch.testing.assert_close(model(x, t, ctx, condition_video_input_mask=per_frame),
                               model(x, t, ctx, condition_video_input_mask=cond))
    # a pixel-resolution padding mask is resized (nearest) to the latent grid
    pm_latent = torch.zeros(1, 1, 4, 6)
    pm_latent[..., 3:] = 1
    pm_pixels = pm_latent.repeat_interleave(8, 2).repeat_interleave(8, 3)
    a = model(x, t, ctx, padding_mask=pm_latent)
    torch.testing.assert_close(a, model(x, t, ctx, padding_mask=pm_pixels))
    assert not torch.allclose(a, base)


def test_projected_text_embedding_is_accepted():
    model = cm.build("tiny")
    x, t, ctx, _ = inputs(model, B=1)
    projected = model.crossattn_proj(ctx)
    torch.testing.assert_close(model(x, t, projected), model(x, t, ctx))


def test_multiview_rope_restarts_per_view():
    model = cm.build("tiny-multiview")
    _perturb(model)
    cfg = model.config
    freqs = model._rope((2 * cfg.frames_per_view, 4, 6), 2, None, "cpu")
    single = model._rope((cfg.frames_per_view, 4, 6), 1, None, "cpu")
    torch.testing.assert_close(freqs, torch.cat([single, single]))
    # two identical views (same content, camera index and prompt) give identical outputs only because
    # positions restart per view
    x1 = torch.randn(1, 16, cfg.frames_per_view, 4, 6)
    x = torch.cat([x1, x1], dim=2)
    t = torch.rand(1, 1) * 1000
    p = torch.randn(1, 5, cfg.text_channels)
    out = model(x, t, torch.cat([p, p], 1), view_indices=torch.tensor([[3, 3]]))
    torch.testing.assert_close(out[:, :, : cfg.frames_per_view], out[:, :, cfg.frames_per_view:])
    # the per-view prompt matters: a different prompt for view 1 changes view 1
    out2 = model(x, t, torch.cat([p, torch.randn_like(p)], 1), view_indices=torch.tensor([[3, 3]]))
    assert not torch.allclose(out2[:, :, cfg.frames_per_view:], out[:, :, cfg.frames_per_view:])
    # the camera index enters through the view embedding
    out3 = model(x, t, torch.cat([p, p], 1), view_indices=torch.tensor([[3, 5]]))
    assert not torch.allclose(out3, out)
    with pytest.raises(ValueError, match="view"):
        model(x[:, :, :3], t, p, num_views=2)


def test_action_embedding_path():
    model = cm.build("tiny-action")
    _perturb(model)
    x, t, ctx, kw = inputs(model, B=1)
    base = model(x, t, ctx, **kw)
    assert not torch.allclose(model(x, t, ctx, action=kw["action"] + 1), base)
    # all frames conditioning: the action embedding is zeroed, so actions do not matter
    cond = torch.ones(1, 1, 3, 4, 6)
    a = model(x, t, ctx, condition_video_input_mask=cond, **kw)
    torch.testing.assert_close(a, model(x, t, ctx, condition_video_input_mask=cond, action=kw["action"] * 3))
    with pytest.raises(ValueError, match="action"):
        model(x, t, ctx)
    with pytest.raises(ValueError, match="action has shape"):
        model(x, t, ctx, action=kw["action"][:, :-1])


# ---------------------------------------------------------------------------------------------
# the kernel path against an independent plain-PyTorch block (the official math)
# ---------------------------------------------------------------------------------------------
def _rope_table(T, H, W, head_dim, ratios):
    dh = head_dim // 6 * 2
    dt = head_dim - 2 * dh

    def axis(n, dim, ratio):
        theta = 10000.0 * ratio ** (dim / (dim - 2))
        return torch.outer(torch.arange(n, dtype=torch.float64), theta ** (-torch.arange(0, dim, 2)[: dim // 2] / dim))

    t, h, w = axis(T, dt, ratios[0]), axis(H, dh, ratios[1]), axis(W, dh, ratios[2])
    table = torch.cat([t[:, None, None].expand(T, H, W, -1), h[None, :, None].expand(T, H, W, -1),
                       w[None, None].expand(T, H, W, -1)] * 2, -1)
    return table.reshape(T * H * W, head_dim)


def _official_block(block, x, emb, ctx, lora, grid, cfg):
    """The official Block.forward, written with plain torch ops (LayerNorm, SDPA, rotate-half RoPE)."""
    B, L, D = x.shape
    T = emb.shape[1]

    def mod(seq):
        m = seq[2](seq[1](F.silu(emb))) + lora
        return [c.repeat_interleave(L // T, dim=1) for c in m.chunk(3, -1)]

    def norm(v, shift, scale):
        return F.layer_norm(v, (D,), eps=1e-6) * (1 + scale) + shift

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    def attn(a, h, context, rope):
        H_, Dh = cfg.num_heads, cfg.head_dim
        q = rms(a.q_proj(h).view(B, -1, H_, Dh), a.q_norm.weight)
        k = rms(a.k_proj(context).view(B, -1, H_, Dh), a.k_norm.weight)
        v = a.v_proj(context).view(B, -1, H_, Dh)
        if rope is not None:
            cos, sin = rope.cos()[None, :, None].float(), rope.sin()[None, :, None].float()
            rot = lambda z: torch.cat([-z[..., Dh // 2:], z[..., : Dh // 2]], -1)  # noqa: E731
            q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return a.output_proj(o.transpose(1, 2).reshape(B, -1, H_ * Dh))

    rope = _rope_table(*grid, cfg.head_dim, (cfg.rope_t_extrapolation_ratio, cfg.rope_h_extrapolation_ratio,
                                             cfg.rope_w_extrapolation_ratio))
    s, c, g = mod(block.adaln_modulation_self_attn)
    h = norm(x, s, c)
    x = x + g * attn(block.self_attn, h, h, rope)
    s, c, g = mod(block.adaln_modulation_cross_attn)
    x = x + g * attn(block.cross_attn, norm(x, s, c), ctx, None)
    s, c, g = mod(block.adaln_modulation_mlp)
    return x + g * block.mlp.layer2(F.gelu(block.mlp.layer1(norm(x, s, c))))


def _block_inputs(model, T=2, H=4, W=6, B=2):
    cfg = model.config
    D = cfg.model_channels
    x = torch.randn(B, T * H * W, D)
    emb = torch.randn(B, T, D)
    lora = torch.randn(B, T, 3 * D) * 0.1
    ctx = torch.randn(B, 5, cfg.crossattn_emb_channels)
    freqs = model._rope((T, H, W), 1, None, "cpu")
    return x, emb, ctx, freqs, lora, Frames((T, H, W))


@pytest.mark.parametrize("kernel_backend", [None, "torch"])
def test_block_kernel_path_matches_official_math(kernel_backend):
    model = cm.build("tiny")
    _perturb(model, 0.2)
    block = model.blocks[0]
    x, emb, ctx, freqs, lora, frames = _block_inputs(model)
    with ck.use_backend(kernel_backend):
        out = block(x, emb, ctx, freqs, lora, frames)
    expect = _official_block(block, x, emb, ctx, lora, frames.grid, model.config)
    assert (out - expect).norm() / expect.norm() < 1e-5


def _triton_for_every_block_op() -> bool:
    ops = dispatch.registered_ops()
    names = ("adaln_modulate", "gated_residual_adaln", "gated_residual", "qk_norm_rope", "flash_attention")
    return all(n in ops and "triton" in runnable_backends(n) for n in names)


@pytest.mark.skipif(not _triton_for_every_block_op(), reason="a block op has no runnable triton backend here")
def test_one_block_on_triton_interpreter_matches_reference():
    model = cm.build("tiny")
    _perturb(model, 0.2)
    block = model.blocks[0]
    x, emb, ctx, freqs, lora, frames = _block_inputs(model, T=2, H=2, W=4, B=1)
    expect = block(x, emb, ctx, freqs, lora, frames)
    with ck.use_backend("triton"):
        out = block(x, emb, ctx, freqs, lora, frames)
    assert (out - expect).norm() / expect.norm() < 1e-4


def test_the_model_takes_its_backends_from_the_one_switch(monkeypatch):
    """No per-model backend: every kernel of the forward asks dispatch, which use_backend steers
    (per op too) and which rejects a bad spec naming it."""
    model = cm.build("tiny")
    x, t, ctx, _ = inputs(model, B=1)
    seen = []
    real = dispatch.backend_for
    monkeypatch.setattr(dispatch, "backend_for", lambda op, tensor, backend=None: seen.append(
        (op, real(op, tensor, backend))) or seen[-1][1])
    with ck.use_backend("torch", flash_attention="torch"):
        model(x, t, ctx)
    assert seen and all(b == "torch" for _, b in seen)
    assert {"adaln_modulate", "gated_residual_adaln", "gated_residual", "qk_norm_rope", "flash_attention"} <= {
        op for op, _ in seen}
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        with ck.use_backend("cudnn"):
            pass


def test_torch_compile_block():
    model = cm.build("tiny")
    _perturb(model, 0.2)
    block = model.blocks[0]
    x, emb, ctx, freqs, lora, frames = _block_inputs(model, B=1)
    expect = block(x, emb, ctx, freqs, lora, frames)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x, emb, ctx, freqs, lora, frames)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# forward-mode JVP of the whole network (rCM distillation relies on it)
# ---------------------------------------------------------------------------------------------
def test_jvp_of_whole_tiny_dit_matches_finite_differences():
    model = cm.build("tiny", dtype=torch.float64)
    _perturb(model, 0.2)
    x, t, ctx, _ = inputs(model, B=1, T=2, H=2, W=4, text_tokens=3, dtype=torch.float64)
    tx, tt = torch.randn_like(x), torch.randn_like(t) * 10

    def f(x_, t_):
        return model(x_, t_, ctx)

    _, tangent = torch.func.jvp(f, (x, t), (tx, tt))
    eps = 1e-6
    fd = (f(x + eps * tx, t + eps * tt) - f(x - eps * tx, t - eps * tt)) / (2 * eps)
    assert torch.isfinite(tangent).all()
    assert (tangent - fd).norm() / fd.norm() < 1e-6


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    model = cm.build("tiny")
    x, t, ctx, _ = inputs(model, B=2)
    with pytest.raises(ValueError, match="17 channels.*16 latent"):
        model(torch.randn(2, 17, 3, 4, 6), t, ctx)
    with pytest.raises(ValueError, match="divisible by the patch"):
        model(torch.randn(2, 16, 3, 5, 6), t, ctx)
    with pytest.raises(ValueError, match="timesteps_B_T"):
        model(x, torch.rand(2, 4), ctx)  # 4 timesteps for 3 latent frames
    with pytest.raises(ValueError, match="timesteps_B_T"):
        model(x, torch.rand(3), ctx)
    with pytest.raises(ValueError, match="crossattn_emb has 7 channels"):
        model(x, t, torch.randn(2, 6, 7))
    with pytest.raises(ValueError, match="5-D"):
        model(x[0], t, ctx)
    with pytest.raises(ValueError, match="condition_video_input_mask"):
        model(x, t, ctx, condition_video_input_mask=torch.ones(2, 1, 4, 4, 6))
    with pytest.raises(ValueError, match="padding_mask"):
        model(x, t, ctx, padding_mask=torch.ones(2, 2, 4, 6))
    with pytest.raises(TypeError, match="unexpected inputs.*control_input"):
        model(x, t, ctx, control_input=x)
    with pytest.raises(ValueError, match="image_context"):
        model(x, t, ctx, image_context=torch.randn(2, 4, 8))


def test_context_parallel_none_is_the_plain_path():
    model = cm.build("tiny", cp_group=None)
    _perturb(model)
    x, t, ctx, _ = inputs(model, B=1)
    a = model(x, t, ctx)
    model.set_context_parallel_group(None)
    torch.testing.assert_close(model(x, t, ctx), a)
    assert math.isfinite(a.sum().item())


# ---------------------------------------------------------------------------------------------
# context parallel over a real (gloo, CPU) group of 2 ranks
# ---------------------------------------------------------------------------------------------
def _cp_rank():
    import torch.distributed as dist
    dist.init_process_group("gloo")
    try:
        report = {}
        four_heads = replace_config(cm.get_config("tiny"), num_heads=4)
        for name, chunks in (("tiny", 1), ("tiny-multiview", 1), (four_heads, 2)):  # 2: the overlapped exchange
            torch.manual_seed(0)
            model = cm.build(name)
            _perturb(model)
            x, t, ctx, kw = inputs(model, B=1, T=4, H=2, W=4, text_tokens=3)
            x.requires_grad_()
            plain = model(x, t, ctx, **kw)
            plain.square().sum().backward()
            plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            x_grad = x.grad.clone()
            model.zero_grad()
            x.grad = None
            model.set_context_parallel_group(dist.group.WORLD, overlap_chunks=chunks)
            out = model(x, t, ctx, **kw)
            out.square().sum().backward()
            for g in (x.grad, *(p.grad for p in model.parameters())):  # partial per rank: summed over the group
                dist.all_reduce(g)
            report[f"{getattr(name, 'name', name)} chunks={chunks}"] = (
                float((out - plain).norm() / plain.norm()),
                float((x.grad - x_grad).norm() / x_grad.norm()),
                max(float((p.grad - plain_grads[n]).norm() / plain_grads[n].norm().clamp_min(1e-12))
                    for n, p in model.named_parameters()),
            )
        return report
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_context_parallel_two_ranks_matches_single_process():
    results = helpers.run_ranks(_cp_rank, world=2, timeout=100)
    for rank, report in results.items():
        for name, (out_err, x_grad_err, param_grad_err) in report.items():
            assert out_err < 1e-5 and x_grad_err < 1e-5 and param_grad_err < 1e-4, (rank, name, report[name])
