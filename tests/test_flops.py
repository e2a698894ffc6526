"""cosmos_models.nets.flops: the analytic count equals torch.utils.flop_counter.FlopCounterMode on the real
model (every tiny variant, matmul and attention FLOPs exactly, forward and backward), the published
2B shapes, context-parallel bookkeeping, bad input."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cosmos_models as cm
from cosmos_models.nets import flops
from cosmos_kernels.neighborhood_attention import attended_pairs
from cosmos_models.nets.config import SparseWindow
from cosmos_models.nets.config import replace as replace_config

MATMULS = {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.convolution"}
ATTENTION_FWD = {"cosmos_kernels.flash_attention", "cosmos_kernels.neighborhood_attention_3d"}
ATTENTION_BWD = {"cosmos_kernels.flash_attention_bwd", "cosmos_kernels.neighborhood_attention_3d_bwd"}


def _inputs(cfg, batch, latent, text_len, modalities=("edge", "depth")):
    T, H, W = latent
    views = T // cfg.frames_per_view if cfg.variant == "multiview" else 1
    x = torch.randn(batch, cfg.latent_channels, T, H, W)
    t = torch.rand(batch, T) * 1000
    ctx = torch.randn(batch, text_len * views, cfg.text_channels)
    kw = {}
    if cfg.variant == "transfer":
        kw["control_input"] = {m: torch.randn_like(x) for m in modalities}
    if cfg.variant == "action":
        kw["action"] = torch.randn(batch, cfg.actions_per_latent_frame * (T - 1), cfg.action_dim)
    return x, t, ctx, kw


def _measured(model, batch, latent, text_len) -> dict:
    """FLOPs FlopCounterMode sees in one forward and one backward, split into matmuls and attention."""
    x, t, ctx, kw = _inputs(model.config, batch, latent, text_len)
    with FlopCounterMode(display=False) as fwd:
        out = model(x, t, ctx, **kw)
    with FlopCounterMode(display=False) as bwd:
        out.square().mean().backward()
    got = {}
    for name, counter in (("forward", fwd), ("backward", bwd)):
        counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
        unknown = set(counts) - MATMULS - ATTENTION_FWD - ATTENTION_BWD
        assert not unknown, f"FLOPs counted for ops the analytic count does not model: {unknown}"
        got[f"matmul_{name}"] = sum(v for k, v in counts.items() if k in MATMULS)
        got[f"attention_{name}"] = sum(v for k, v in counts.items() if k in ATTENTION_FWD | ATTENTION_BWD)
    return got


@pytest.mark.parametrize("name", ["tiny", "tiny-natten", "tiny-transfer", "tiny-multiview", "tiny-action"])
def test_count_equals_flop_counter(name):
    torch.manual_seed(0)
    model = cm.build(name)  # counts do not depend on the backend; the reference is fast
    cfg = model.config
    batch, text_len = 2, 5
    latent = (2 * cfg.frames_per_view, 16, 12) if cfg.variant == "multiview" else (3, 16, 12)
    got = _measured(model, batch, latent, text_len)
    want = flops.count(cfg, batch=batch, latent=latent, text_len=text_len,
                       control_passes=2 if cfg.variant == "transfer" else 1)
    assert {k: want[k] for k in got} == got
    assert got["attention_forward"] > 0 and got["matmul_backward"] > got["matmul_forward"]
    assert want["total_train_step"] == sum(got.values())
    assert sum(p["forward"] for p in want["parts"].values()) == want["total_forward"]


def test_sparse_blocks_count_real_pairs():
    """Dilated, strided and causal windows (and a window that covers the grid: dense) match the
    counter, and the sparse block costs its density times the dense one."""
    base = cm.get_config("tiny-natten")
    windows = (SparseWindow((2, 3, 5), dilation=(1, 2, 1), stride=(1, 2, 2), is_causal=(True, False, False)),
               SparseWindow((-1, -1, -1)))
    cfg = replace_config(base, name="tiny-natten-mixed", sparse_attention=windows)
    latent = (3, 16, 12)
    got = _measured(cm.build(cfg), 1, latent, 4)
    want = flops.count(cfg, latent=latent, text_len=4)
    assert {k: want[k] for k in got} == got
    dense = flops.count(cfg, latent=latent, text_len=4, sparse=False)
    assert dense["matmul_forward"] == want["matmul_forward"]
    grid = want["grid"]
    sparse_pairs = attended_pairs(grid, (2, 3, 5), (1, 2, 1), (1, 2, 2), (True, False, False))
    S = grid[0] * grid[1] * grid[2]
    H, D = cfg.num_heads, cfg.head_dim
    assert dense["parts"]["self_attn_core"]["forward"] - want["parts"]["self_attn_core"]["forward"] == \
        4 * H * D * (S * S - sparse_pairs)


def test_predict_2b_720p_figures():
    """The published shapes: 720p x 93 frames -> 24 x 44 x 80 tokens, each part by hand."""
    c = flops.count("predict2.5-2b")  # defaults: 1 sample, 93 frames, 704 x 1280, 512 text tokens
    assert c["grid"] == (24, 44, 80) and c["tokens"] == 84480
    S, L, D, H, hd = 84480, 28, 2048, 16, 128
    parts = c["parts"]
    assert parts["self_attn_core"]["forward"] == L * 4 * H * S * S * hd
    assert parts["self_attn_core"]["backward"] == L * 10 * H * S * S * hd
    assert parts["mlp"]["forward"] == L * 2 * (2 * S * D * 4 * D)
    assert parts["self_attn_proj"]["forward"] == L * 4 * (2 * S * D * D)
    assert parts["cross_attn_core"]["forward"] == L * 4 * H * S * 512 * hd
    assert parts["crossattn_proj"] == {"forward": 2 * 512 * 100352 * 1024, "backward": 2 * 512 * 100352 * 1024,
                                       "train_step": 4 * 512 * 100352 * 1024}
    assert parts["patch_embed"]["forward"] == 2 * S * 18 * 4 * D
    # the attention core dominates at 720p (85%); total forward ~ 1.93 PFLOP for one sample
    assert 1.9e15 < c["total_forward"] < 1.95e15
    assert 0.84 < c["attention_forward"] / c["total_forward"] < 0.86
    assert c["total_train_step"] == c["total_forward"] + c["total_backward"]
    # 480p: 832 x 480 -> 24 x 30 x 52 tokens
    assert flops.count("predict2.5-2b", height=480, width=832)["grid"] == (24, 30, 52)


def test_predict_2b_count_equals_flop_counter_on_meta():
    """The full-size 2B at 480p x 93 frames, forward, counted on meta tensors (shapes only)."""
    model = cm.build("predict2.5-2b", device="meta")
    cfg = model.config
    T, H, W = 24, 60, 104
    x = torch.empty(1, 16, T, H, W, device="meta")
    t = torch.empty(1, T, device="meta")
    ctx = torch.empty(1, 512, cfg.text_channels, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(x, t, ctx)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    want = flops.count(cfg, latent=(T, H, W))
    assert sum(v for k, v in counts.items() if k in MATMULS) == want["matmul_forward"]
    assert counts["cosmos_kernels.flash_attention"] == want["attention_forward"]


def test_context_parallel_is_per_rank():
    one = flops.count("predict2.5-2b", frames=93, cp=1)
    two = flops.count("predict2.5-2b", frames=93, cp=2)
    p1, p2 = one["parts"], two["parts"]
    for part in ("self_attn_core", "cross_attn_core", "mlp", "self_attn_proj", "adaln_modulation", "final_layer"):
        assert p2[part]["forward"] * 2 == p1[part]["forward"], part
    for part in ("patch_embed", "t_embedder", "crossattn_proj"):  # replicated on every rank
        assert p2[part] == p1[part], part
    # cross-attention K/V of the (replicated) text are computed in full on each rank
    kv = 28 * 2 * 2 * 512 * 1024 * 2048
    assert p2["cross_attn_proj"]["forward"] == (p1["cross_attn_proj"]["forward"] - kv) // 2 + kv


def test_variants_have_their_parts():
    assert "control_branch" in flops.count("transfer2.5-2b")["parts"]
    assert "img_context_proj" in flops.count("transfer2.5-2b")["parts"]
    assert "action_embedder" in flops.count("predict2.5-2b-action")["parts"]
    # control branch: 4 dense blocks per pass
    a = flops.count("transfer2.5-2b", control_passes=1)["parts"]["control_branch"]["forward"]
    b = flops.count("transfer2.5-2b", control_passes=2)["parts"]["control_branch"]["forward"]
    assert b == 2 * a
    mv = flops.count("predict2.5-2b-multiview", frames=29)  # 8 latent frames = one view
    assert mv["views"] == 1


def test_bad_input():
    with pytest.raises(ValueError, match="4k\\+1"):
        flops.count("tiny", frames=10)
    with pytest.raises(ValueError, match="multiples of 16"):
        flops.count("tiny", height=72)
    with pytest.raises(ValueError, match="cp=3"):
        flops.count("predict2.5-2b", cp=3)
    with pytest.raises(ValueError, match="batch"):
        flops.count("tiny", batch=0)
    with pytest.raises(ValueError, match="not both"):
        flops.count("tiny", frames=9, latent=(3, 8, 8))
    with pytest.raises(ValueError, match="frames_per_view"):
        flops.count("tiny-multiview", latent=(3, 8, 8))
    with pytest.raises(ValueError, match="unknown model config"):
        flops.count("nope")
