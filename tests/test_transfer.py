"""Transfer2.5 control branch (cosmos_models.nets.transfer): zero at init, hints through the zero-init
projections, per-modality weights and spatial maps, packed slots, image context, errors."""
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
    sd = {k: v for k, v in transfer.state_dict().items() if not k.startswith(("control_embedder", "control_blocks"))}
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


def test_modality_weights_and_spatial_maps():
    model, x, t, ctx, controls = _setup()
    _open_projections(model)
    edge = {"edge": controls["edge"]}
    only_edge = model(x, t, ctx, control_input=edge)  # one modality: weight 1
    weighted = model(x, t, ctx, control_input=controls, control_weights={"edge": 1.0, "depth": 0.0})
    torch.testing.assert_close(weighted, only_edge)
    uniform = model(x, t, ctx, control_input=controls)  # default: 1/n each
    torch.testing.assert_close(uniform, model(x, t, ctx, control_input=controls,
                                              control_weights={"edge": 0.5, "depth": 0.5}))
    assert not torch.allclose(uniform, only_edge)
    # a constant spatial map equals the scalar; maps summing past 1 are capped at 1 per position
    grid = (1, 2, 2, 2)  # (B, T, H/2, W/2)
    half = torch.full(grid, 0.5)
    torch.testing.assert_close(model(x, t, ctx, control_input=controls,
                                     control_weights={"edge": half, "depth": half}), uniform)
    torch.testing.assert_close(model(x, t, ctx, control_input=controls,
                                     control_weights={"edge": half * 2, "depth": half * 2}), uniform)
    left = torch.zeros(grid)
    left[..., 0] = 1
    masked = model(x, t, ctx, control_input=edge, control_weights={"edge": left})
    assert not torch.allclose(masked, only_edge)


def test_packed_slots_equal_dict_input():
    model, x, t, ctx, controls = _setup()
    _open_projections(model)
    packed = torch.cat([controls["edge"], torch.zeros_like(x), controls["depth"]], dim=1)  # slots 0, 1, 2
    slots = model.config.control_modalities
    assert slots.index("edge") == 0 and slots.index("depth") == 2
    a = model(x, t, ctx, control_input=packed)
    # one pass with both slots filled is not the weighted sum of separate passes, but a packed tensor
    # with a single filled slot is exactly that modality alone
    torch.testing.assert_close(model(x, t, ctx, control_input=controls["edge"]),
                               model(x, t, ctx, control_input={"edge": controls["edge"]}))
    assert torch.isfinite(a).all()


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
