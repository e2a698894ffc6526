"""Sampling within memory: VAE tiling against the untiled result, --offload's order of moves and its
unchanged video, and the --dry-run estimate (cosmos_models.sampling.estimate) against the FLOP counter."""
import pytest
import torch

import cosmos_models as cm
from cosmos_models import cli
from cosmos_models.nets import flops
from cosmos_models.nets.vae import WanVAE
from cosmos_models.sampling import estimate as E
from cosmos_models.sampling.sampler import Sampler


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def vae():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return WanVAE.from_config("tiny").eval()


def smooth_video(frames=9, h=128, w=192):
    x = torch.rand(1, 3, frames, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return (torch.nn.functional.avg_pool3d(x, (1, 9, 9), 1, (0, 4, 4)) * 3).clamp(-1, 1)


def test_vae_tiling_matches_the_untiled_result_and_blends_its_seams(vae):
    x = smooth_video()
    z = vae.encode(x)
    y = vae.decode(z)
    try:
        vae.enable_tiling(64, 48)
        z_tiled, y_tiled = vae.encode(x), vae.decode(z)
        vae.enable_tiling(64, 64)  # abutting tiles: nothing to blend
        y_seams = vae.decode(z)
    finally:
        vae.disable_tiling()
    assert torch.isfinite(z_tiled).all() and torch.isfinite(y_tiled).all()
    # a random VAE is the hard case (its features are not smooth); a trained one is closer still
    assert rel(z_tiled, z) < 0.06 and rel(y_tiled, y) < 0.12
    assert rel(y_tiled, y) < 0.5 * rel(y_seams, y)  # the overlap is blended, not cut
    for bad, words in (((60, 48), "multiple of 8"), ((64, 72), "must be <= tile"), ((0, None), "multiple")):
        with pytest.raises(ValueError, match=words):
            vae.enable_tiling(*bad)


def test_offload_moves_one_network_at_a_time_and_changes_nothing(vae):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cm.build("tiny")
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    text, neg = (torch.randn(cfg.text_len, cfg.text_channels, generator=g) for _ in range(2))
    image = torch.rand(3, 64, 64, generator=g) * 2 - 1
    kw = dict(prompt_embedding=text, negative_prompt_embedding=neg, image=image, num_steps=2, guidance_scale=1.0,
              seed=1, progress=False, num_frames=13)  # two chunks: encode, denoise, decode, ... again
    plain = Sampler(model, vae).generate("image2world", **kw)
    offloaded = Sampler(model, vae, offload=True)
    out = offloaded.generate("image2world", **kw)
    assert torch.equal(out, plain)
    # the image is encoded (VAE), chunk 0 denoised (DiT), decoded to condition chunk 1 (VAE) in pixels, ...
    assert offloaded.moves == ["vae", "dit", "vae", "dit", "vae"]


@pytest.mark.gpu
def test_offload_lowers_the_peak_on_a_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("diffusers")  # (the device image has none: measured where it is installed)
    model = cm.build("tiny")
    peaks = {}
    for offload in (False, True):
        torch.cuda.reset_peak_memory_stats()
        s = Sampler(model, WanVAE.from_config("wan2.1"), device="cuda", dtype=torch.bfloat16, offload=offload)
        s.generate("text2world", num_steps=1, guidance_scale=0.0, progress=False, seed=1)
        peaks[offload] = torch.cuda.max_memory_allocated()
    assert peaks[True] < peaks[False]


def test_dry_run_estimate_counts_the_calls_and_uses_the_flop_counter():
    cfg = cm.get_config("predict2.5-2b")
    est = E.estimate(cfg, frames=93, height=704, width=1280, steps=35, guidance=7.0, dtype=torch.bfloat16,
                     vae_config=None, encodes_text=False)
    assert est.network_calls == 70  # 35 steps x (conditional + unconditional)
    assert est.flops_per_call == flops.count(cfg, frames=93, height=704, width=1280)["total_forward"]
    assert est.total_flops == 70 * est.flops_per_call
    karras = E.estimate(cfg, frames=93, height=704, width=1280, steps=35, grid="karras", guidance=7.0,
                        vae_config=None, encodes_text=False)
    assert karras.network_calls == 72  # the Karras grid runs N + 1 steps
    # context parallel: per-rank tokens and activations divide, the weights do not
    cp = E.estimate(cfg, frames=93, height=704, width=1280, steps=35, cp=4, vae_config=None, encodes_text=False)
    assert cp.tokens * 4 == est.tokens and cp.peak_bytes < est.peak_bytes
    # offload and tiling lower the estimate; the 2B in bf16 fits an 80 GB GPU either way
    from cosmos_models.nets.vae import WAN21_CONFIG
    full = E.estimate(cfg, frames=93, height=704, width=1280, steps=35, vae_config=WAN21_CONFIG)
    lean = E.estimate(cfg, frames=93, height=704, width=1280, steps=35, vae_config=WAN21_CONFIG, offload=True,
                      vae_tile=256, encodes_text=False)
    assert lean.peak_bytes < full.peak_bytes < 80 * E.GIB


def test_dry_run_cli_prints_and_builds_nothing(capsys, monkeypatch):
    def no_build(*a, **k):
        raise AssertionError("--dry-run built a network")

    monkeypatch.setattr(cm, "load_checkpoint", no_build)
    assert cli.main(["sample", "--config", "tiny", "--frames", "13", "--steps", "3", "--guidance", "2",
                     "--dry-run", "--out", "never.mp4"]) == 0
    out = capsys.readouterr().out
    assert "13 frames in 2 chunk(s)" in out and "12 network calls" in out and "estimated peak device memory" in out
