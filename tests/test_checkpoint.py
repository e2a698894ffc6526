"""Checkpoints (cosmos_models.nets.checkpoint): our safetensors round trip, official and diffusers names,
strictness, meta-device loading, and the forward of diffusers' CosmosTransformer3DModel on our
weights (an independent implementation of the same network)."""
import types

import pytest
import torch
import torch.nn.functional as F

import cosmos_models as cm
from cosmos_models.nets import checkpoint as C
def _random_model(name="tiny"):
    model = cm.build(name)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model


def _same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name", ["tiny", "tiny-transfer"])
def test_safetensors_round_trip(tmp_path, name):
    model = _random_model(name)
    path = tmp_path / "model.safetensors"
    cm.save_checkpoint(model, path)
    fresh = cm.load_checkpoint(cm.build(name), path)
    _same_params(model, fresh)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["config"] == name


def test_streamed_writer_matches_save_checkpoint_and_keeps_no_partial_file(tmp_path):
    """write_weights_streamed (the EMA export: one gathered tensor at a time, in any order) writes
    the file save_checkpoint writes, readable by safetensors; a missing or misshapen tensor is an
    error that leaves neither the target nor a temporary file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    model = cm.build("tiny", "cpu", torch.float32)
    items = list(model.state_dict().items())
    C.write_weights_streamed(model.config, iter(items[::-1]), tmp_path / "streamed.safetensors")
    C.save_checkpoint(model, tmp_path / "whole.safetensors")
    got, want = load_file(tmp_path / "streamed.safetensors"), load_file(tmp_path / "whole.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with safe_open(tmp_path / "streamed.safetensors", "pt") as f:
        assert f.metadata() == {"format": "cosmos_models", "config": "tiny"}
    cm.load_checkpoint(cm.build("tiny", "meta"), str(tmp_path / "streamed.safetensors"))
    with pytest.raises(ValueError, match="no tensor for"):
        C.write_weights_streamed(model.config, iter(items[1:]), tmp_path / "short.safetensors")
    name, t = items[0]
    with pytest.raises(ValueError, match=f"{name} has shape"):
        C.write_weights_streamed(model.config, iter([(name, t[:1])] + items[1:]), tmp_path / "bad.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streamed.safetensors", "whole.safetensors"]


def test_official_names_with_prefix_and_extra_entries(tmp_path):
    model = _random_model()
    official = C.to_official(model.state_dict())
    assert all(k.startswith("net.") for k in official)
    official.update({  # entries official files carry that are not network parameters
        "net.pos_embedder.seq": torch.arange(10.0), "net.pos_embedder.dim_spatial_range": torch.zeros(5),
        "net.accum_iteration": torch.tensor(3), "net.t_embedding_norm._extra_state": torch.zeros(0),
    })
    path = tmp_path / "official.pt"
    torch.save({"model": official}, path)
    _same_params(model, cm.load_checkpoint(cm.build("tiny"), path))
    # ours -> official -> ours
    assert C.from_official(C.to_official(model.state_dict())).keys() == model.state_dict().keys()
    # EMA weights of a training checkpoint
    ema = {**C.to_official(model.state_dict()), **C.to_official(cm.build("tiny").state_dict(), "net_ema.")}
    loaded = cm.load_checkpoint(cm.build("tiny"), ema, prefer_ema=False)
    _same_params(model, loaded)


@pytest.mark.parametrize("name", ["tiny", "tiny-transfer"])
def test_diffusers_names_round_trip(name):
    model = _random_model(name)
    diff = C.to_diffusers(model.state_dict())
    assert "transformer_blocks.0.attn1.to_q.weight" in diff and "time_embed.norm.weight" in diff
    assert "blocks.0.self_attn.q_proj.weight" not in diff
    if name == "tiny-transfer":
        assert "controlnet.patch_embed.proj.weight" in diff
        assert "controlnet.control_blocks.0.before_proj.weight" in diff
        assert "controlnet.control_blocks.1.attn2.q_img.weight" in diff
    assert C.from_diffusers(diff).keys() == model.state_dict().keys()
    _same_params(model, cm.load_checkpoint(cm.build(name), diff))


def test_strict_loading_lists_the_problems():
    model = _random_model()
    sd = dict(model.state_dict())
    del sd["blocks.0.mlp.layer1.weight"]
    sd["blocks.0.bogus.weight"] = torch.zeros(1)
    sd["final_layer.linear.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError) as err:
        cm.load_checkpoint(cm.build("tiny"), sd)
    msg = str(err.value)
    assert "missing (1)" in msg and "blocks.0.mlp.layer1.weight" in msg
    assert "unexpected (1)" in msg and "blocks.0.bogus.weight" in msg
    assert "shape mismatch (1)" in msg and "final_layer.linear.weight" in msg
    with pytest.raises(FileNotFoundError):
        cm.load_checkpoint(model, "/nonexistent/ckpt.safetensors")


def test_load_into_meta_model():
    model = _random_model()
    meta = cm.build("tiny", device="meta")
    cm.load_checkpoint(meta, model.state_dict())
    assert not any(p.is_meta for p in meta.parameters())
    _same_params(model, meta)


# ---------------------------------------------------------------------------------------------
# an independent implementation: diffusers' CosmosTransformer3DModel on our weights
# ---------------------------------------------------------------------------------------------
def _resize(img, size, interpolation=None):  # torchvision.transforms.functional.resize (nearest) stand-in
    return F.interpolate(img, size=size, mode="nearest")


def test_diffusers_transformer_on_our_weights_matches():
    tc = pytest.importorskip("diffusers.models.transformers.transformer_cosmos")
    if not hasattr(tc, "transforms"):  # diffusers uses torchvision only to resize the padding mask
        tc.transforms = types.SimpleNamespace(functional=types.SimpleNamespace(resize=_resize),
                                              InterpolationMode=types.SimpleNamespace(NEAREST="nearest"))
    model = _random_model()
    cfg = model.config
    theirs = tc.CosmosTransformer3DModel(
        in_channels=cfg.latent_channels + 1, out_channels=cfg.latent_channels, num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim, num_layers=cfg.num_blocks, mlp_ratio=cfg.mlp_ratio,
        text_embed_dim=cfg.crossattn_emb_channels, adaln_lora_dim=cfg.adaln_lora_dim, max_size=(16, 32, 32),
        patch_size=(1, 2, 2), rope_scale=(cfg.rope_t_extrapolation_ratio, cfg.rope_h_extrapolation_ratio,
                                          cfg.rope_w_extrapolation_ratio),
        concat_padding_mask=True, extra_pos_embed_type=None, use_crossattn_projection=True,
        crossattn_proj_in_channels=cfg.crossattn_proj_in_channels,
        encoder_hidden_states_channels=cfg.crossattn_emb_channels)
    theirs.load_state_dict(C.to_diffusers(model.state_dict()), strict=True)
    for m in theirs.modules():  # diffusers' attention RMSNorm defaults to eps 1e-5; the official one is 1e-6
        if type(m).__name__ == "RMSNorm":
            m.eps = 1e-6
    B, T, H, W = 1, 3, 4, 6
    x = torch.randn(B, 16, T, H, W)
    t = torch.rand(B, T) * 1000
    ctx = torch.randn(B, 6, cfg.text_channels)
    cond = torch.zeros(B, 1, T, H, W)
    cond[:, :, 0] = 1
    pad = torch.zeros(1, 1, H, W)
    ours = model(x, t, ctx, condition_video_input_mask=cond, padding_mask=pad)
    with torch.no_grad():
        ref = theirs(x, (t * cfg.timestep_scale).view(B, 1, T, 1, 1), ctx, condition_mask=cond, padding_mask=pad,
                     return_dict=False)[0]
    assert ref.shape == ours.shape
    assert (ours - ref).norm() / ref.norm() < 1e-5
