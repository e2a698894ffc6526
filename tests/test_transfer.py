"""Transfer2.5 control branch (cosmos_models.nets.transfer): zero at init, hints through the zero-init
projections, the official weight mixing (scalars as given, maps capped at a sum of 1), slot 0 for a
single-modality checkpoint, one branch per modality checkpoint checked against the formula, packed
slots, image context, errors."""
import pytest
import torch

import cosmos_models as cm
from cosmos_models.nets.config import replace


def _setup(B=1, T=2, H=4, W=4):
    torch.manual_seed(0)
    model = cm.build("tiny-transfer")
    cfg = model.config
    x = torch.randn(B, 16, T, H, W)
    t = torch.rand(B, T) * 1000
    ctx = torch.randn(B, 5, cfg.text_channels)
    controls = {"edge": torch.randn_like(x), "depth": torch.randn_like(x)}
    return model, x, t, ctx, controls


def _base_model(transfer):
    """The plain DiT with the transfer model's base weights."""
    base = cm.build(replace(transfer.config, name="tiny-transfer-base", variant="predict"))
    sd = {k: v for k, v in transfer.state_dict().items()
          if not k.startswith(("control_embedder", "control_blocks", "control_branches"))}
    base.load_state_dict(sd, strict=True)
    return base


def _open_projections(model, scale=0.05):
    with torch.no_grad():
        for block in model.control_blocks:
            block.after_proj.weight.normal_(0, scale)
            block.after_proj.bias.normal_(0, scale)
        model.control_blocks[0].before_proj.weight.normal_(0, scale)


def test_control_branch_is_zero_at_init():
    model, x, t, ctx, controls = _setup()
    out = model(x, t, ctx, control_input=controls)
    torch.testing.assert_close(out, _base_model(model)(x, t, ctx))
    assert all(b.after_proj.weight.abs().sum() == 0 and b.after_proj.bias.abs().sum() == 0
               for b in model.control_blocks)
    assert model.control_blocks[0].before_proj.weight.abs().sum() == 0
    assert not hasattr(model.control_blocks[1], "before_proj")


def test_control_changes_output_only_through_projections():
    model, x, t, ctx, controls = _setup()
    base = _base_model(model)(x, t, ctx)
    _open_projections(model)
    out = model(x, t, ctx, control_input=controls)
    assert not torch.allclose(out, base)
    torch.testing.assert_close(model(x, t, ctx, control_input=controls, control_context_scale=0.0), base)
    out.square().mean().backward()
    assert model.control_blocks[1].after_proj.weight.grad.abs().sum() > 0
    assert model.control_embedder.proj[1].weight.grad.abs().sum() > 0


def test_modality_weights_and_spatial_maps_as_the_official_mixing():
    """Scalars as given (1.0 each by default, not normalized: the official code's scalar path); with a
    map, every weight becomes a map capped so the modalities sum to at most 1 at every position."""
    model, x, t, ctx, controls = _setup()
    _open_projections(model)
    edge = {"edge": controls["edge"]}
    only_edge = model(x, t, ctx, control_input=edge)  # one modality: weight 1
    weighted = model(x, t, ctx, control_input=controls, control_weights={"edge": 1.0, "depth": 0.0})
    torch.testing.assert_close(weighted, only_edge)
    default = model(x, t, ctx, control_input=controls)  # 1.0 each
    torch.testing.assert_close(default, model(x, t, ctx, control_input=controls,
                                              control_weights={"edge": 1.0, "depth": 1.0}))
    halves = model(x, t, ctx, control_input=controls, control_weights={"edge": 0.5, "depth": 0.5})
    assert not torch.allclose(default, halves) and not torch.allclose(default, only_edge)
    # a constant map equals the scalar; maps summing past 1 are capped at 1 per position
    grid = (1, 2, 2, 2)  # (B, T, H/2, W/2)
    half = torch.full(grid, 0.5)
    torch.testing.assert_close(model(x, t, ctx, control_input=controls,
                                     control_weights={"edge": half, "depth": half}), halves)
    torch.testing.assert_close(model(x, t, ctx, control_input=controls,
                                     control_weights={"edge": half * 2, "depth": half * 2}), halves)
    left = torch.zeros(grid)
    left[..., 0] = 1
    masked = model(x, t, ctx, control_input=edge, control_weights={"edge": left})
    assert not torch.allclose(masked, only_edge)


def test_a_modality_latent_sits_in_slot_0():
    """Released Transfer2.5 checkpoints are trained on one modality, its latent in control slot 0:
    {modality: latent} is the packed tensor with that latent in slot 0, whatever the modality."""
    model, x, t, ctx, controls = _setup()
    _open_projections(model)
    for name in ("edge", "blur", "depth", "seg"):
        torch.testing.assert_close(model(x, t, ctx, control_input={name: controls["depth"]}),
                                   model(x, t, ctx, control_input=controls["depth"]))


def _branch_weights(model, seed):
    """Another modality checkpoint: the same base, its own (random) control branch."""
    torch.manual_seed(seed)
    other = cm.build("tiny-transfer")
    other.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith(("control_embedder", "control_blocks"))}, strict=False)
    _open_projections(other, 0.1)
    with torch.no_grad():
        for p in other.control_embedder.parameters():
            p.normal_(0, 0.05)
    return other


def test_one_branch_per_modality_checkpoint_over_one_base():
    model, x, t, ctx, controls = _setup()
    _open_projections(model)
    depth_ckpt = _branch_weights(model, 1)
    params_before = sum(p.numel() for p in model.parameters())
    model.add_control_branch("depth", depth_ckpt.state_dict())
    branch_params = sum(p.numel() for p in model.control_branches["depth"].parameters())
    assert sum(p.numel() for p in model.parameters()) == params_before + branch_params
    assert branch_params == sum(p.numel() for n, p in depth_ckpt.named_parameters()
                                if n.startswith(("control_embedder", "control_blocks")))  # a branch, not a model
    # each modality through its own checkpoint's branch: weights selecting one give that checkpoint alone
    e, d = controls["edge"], controls["depth"]
    torch.testing.assert_close(model(x, t, ctx, control_input={"edge": e, "depth": d},
                                     control_weights={"edge": 1.0, "depth": 0.0}),
                               model(x, t, ctx, control_input={"edge": e}))
    torch.testing.assert_close(model(x, t, ctx, control_input={"edge": e, "depth": d},
                                     control_weights={"edge": 0.0, "depth": 1.0}),
                               depth_ckpt(x, t, ctx, control_input={"depth": d}))
    # the mix: the main stream gets w_e * hints(edge branch) + w_d * hints(depth branch) after each
    # control block index, computed here from the formula with the two checkpoints' own branches
    mixed = model(x, t, ctx, control_input={"edge": e, "depth": d}, control_weights={"edge": 0.7, "depth": 0.4})
    torch.testing.assert_close(mixed, _mix_by_formula(model, depth_ckpt, x, t, ctx, e, d, 0.7, 0.4))
    with pytest.raises(ValueError, match="already has a branch"):
        model.add_control_branch("depth", depth_ckpt.state_dict())


def _hints(model, x, t, ctx, latent):
    """The hints a single-modality checkpoint's control branch gives at its control blocks."""
    found = []
    handles = [b.after_proj.register_forward_hook(lambda mod, i, o: found.append(o)) for b in model.control_blocks]
    try:
        model(x, t, ctx, control_input={"edge": latent})
    finally:
        for h in handles:
            h.remove()
    return found


def _mix_by_formula(edge_model, depth_model, x, t, ctx, e, d, we, wd):
    """The base model run with w_e * hints(edge ckpt) + w_d * hints(depth ckpt) added after each
    control block index (the hints of each checkpoint computed on its own)."""
    added = iter([we * a + wd * b for a, b in zip(_hints(edge_model, x, t, ctx, e), _hints(depth_model, x, t, ctx, d))])
    base = _base_model(edge_model)
    where = set(edge_model.config.control_block_indices)
    handles = [block.register_forward_hook(lambda mod, inp, o: o + next(added))
               for i, block in enumerate(base.blocks) if i in where]
    try:
        return base(x, t, ctx)
    finally:
        for h in handles:
            h.remove()


def test_image_context_is_used():
    model, x, t, ctx, controls = _setup()
    cfg = model.config
    zeros = model(x, t, ctx, control_input=controls)
    torch.testing.assert_close(
        model(x, t, ctx, control_input=controls, image_context=torch.zeros(1, cfg.image_context_tokens,
                                                                         cfg.image_context_dim)), zeros)
    img = torch.randn(1, 3, cfg.image_context_dim)
    assert not torch.allclose(model(x, t, ctx, control_input=controls, image_context=img), zeros)


def test_transfer_bad_inputs():
    model, x, t, ctx, controls = _setup()
    with pytest.raises(ValueError, match="needs control_input"):
        model(x, t, ctx)
    with pytest.raises(ValueError, match="unknown modality 'lidar'"):
        model(x, t, ctx, control_input={"lidar": x})
    with pytest.raises(ValueError, match="latent shape"):
        model(x, t, ctx, control_input={"edge": x[:, :, :1]})
    with pytest.raises(ValueError, match="control_input has shape"):
        model(x, t, ctx, control_input=torch.randn(1, 20, 2, 4, 4))
    with pytest.raises(ValueError, match="control_weights"):
        model(x, t, ctx, control_input=controls, control_weights={"edge": 1.0})
    with pytest.raises(ValueError, match="control_block_indices"):
        replace(model.config, control_block_indices=(1, 2))
