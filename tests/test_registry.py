"""Every registered model variant (cosmos_models/nets/registry.py), on its tiny config: it builds, its
analytic FLOPs equal FlopCounterMode on its own example inputs, the trainer runs one step of it, and
the sampler runs one step of each of its modes. A new variant is one registry entry plus these."""
import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import cosmos_models as cm
from cosmos_models.data.prepare import RandomLatents
from cosmos_models.nets import flops, registry
from cosmos_models.nets.dit import DiT
from cosmos_models.sampling import sampler as S
from cosmos_models.training.trainer import TrainConfig, Trainer

MATMULS = {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.convolution"}
ATTENTION = {"cosmos_kernels.flash_attention", "cosmos_kernels.neighborhood_attention_3d",
             "cosmos_kernels.flash_attention_bwd", "cosmos_kernels.neighborhood_attention_3d_bwd"}


def tiny_configs(variant: str) -> list[str]:
    return [n for n in cm.configs() if n.startswith("tiny") and cm.get_config(n).variant == variant]


TINY = [(v, n) for v in registry.VARIANTS for n in tiny_configs(v)]


@pytest.mark.parametrize("variant", list(registry.VARIANTS))
def test_every_variant_has_a_class_and_a_tiny_config(variant):
    cls = registry.variant_class(variant)
    assert issubclass(cls, DiT) and cls.sampler_modes and set(cls.sampler_modes) <= set(S.MODES)
    assert tiny_configs(variant), f"variant {variant!r} has no tiny CPU config (nets/config.py)"
    with pytest.raises(ValueError, match="unknown variant"):
        registry.variant_class("no-such-variant")


def test_the_sampler_modes_are_the_variants_modes():
    assert set(S.MODES) == {m for v in registry.VARIANTS for m in registry.variant_class(v).sampler_modes}


def _grid(cfg):
    return (2 * cfg.frames_per_view, 4, 6) if cfg.variant == "multiview" else (3, 4, 6)


@pytest.mark.parametrize("variant, name", TINY)
def test_flops_of_the_example_inputs_equal_the_flop_counter(variant, name):
    model = cm.build(name)
    cfg = model.config
    cls = registry.model_class(cfg)
    latent = _grid(cfg)
    g = torch.Generator().manual_seed(0)
    kw = cls.example_inputs(cfg, 2, latent, g)
    views = cls.flop_views(cfg, latent)
    x = torch.randn(2, cfg.latent_channels, *latent, generator=g)
    ctx = torch.randn(2, 5 * views, cfg.text_channels, generator=g)
    with FlopCounterMode(display=False) as fwd:
        out = model(x, torch.rand(2, latent[0]) * 1000, ctx, **kw)
    with FlopCounterMode(display=False) as bwd:
        out.square().mean().backward()
    got = {}
    for phase, counter in (("forward", fwd), ("backward", bwd)):
        counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
        assert set(counts) <= MATMULS | ATTENTION, set(counts) - MATMULS - ATTENTION
        got[f"matmul_{phase}"] = sum(v for k, v in counts.items() if k in MATMULS)
        got[f"attention_{phase}"] = sum(v for k, v in counts.items() if k in ATTENTION)
    want = flops.count(cfg, batch=2, latent=latent, text_len=5)
    assert {k: want[k] for k in got} == got


@pytest.mark.parametrize("variant, name", TINY)
def test_the_trainer_runs_a_step_of_every_variant(variant, name, tmp_path):
    cfg = cm.get_config(name)
    latent = _grid(cfg)
    frames = 4 * (latent[0] - 1) + 1
    run = TrainConfig(config=name, out=str(tmp_path), frames=frames, resolution=f"{8 * latent[1]}x{8 * latent[2]}",
                      steps=2, batch=1, save_every=0, log_every=1, progress=False)
    trainer = Trainer(run, batches=RandomLatents(cfg, batch=1, latent_shape=latent))
    try:
        before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        record = trainer.train_step()
        moved = sum(float((v.detach() - before[k]).abs().sum()) for k, v in trainer.model.state_dict().items())
    finally:
        trainer.close()
    assert record["step"] == 1 and torch.isfinite(torch.tensor(record["loss"])) and moved > 0


def _mode_inputs(mode: str, cfg) -> dict:
    g = torch.Generator().manual_seed(1)
    H, W = cfg.resolution
    if mode == "image2world":
        return {"image": torch.rand(3, H, W, generator=g) * 2 - 1}
    if mode == "video2world":
        return {"video": torch.rand(3, 5, H, W, generator=g) * 2 - 1}
    if mode == "transfer":
        return {"video": torch.rand(3, cfg.num_frames, H, W, generator=g) * 2 - 1, "control": ["blur"]}
    if mode == "action":
        k = cfg.actions_per_latent_frame * (cfg.num_frames - 1) // 4
        return {"image": torch.rand(3, H, W, generator=g) * 2 - 1, "actions": torch.randn(k, cfg.action_dim, generator=g)}
    return {}


@pytest.fixture(scope="module")
def vae():
    from cosmos_models.nets.vae import WanVAE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return WanVAE.from_config("tiny").eval()


@pytest.mark.parametrize("variant, name", TINY)
def test_the_sampler_runs_a_step_of_every_mode_of_every_variant(variant, name, vae):
    model = cm.build(name)
    sampler = S.Sampler(model, vae)
    cfg = model.config
    for mode in registry.model_class(cfg).sampler_modes:
        emb = torch.randn(cfg.text_len, cfg.text_channels)
        out = sampler.generate(mode, prompt_embedding=emb, negative_prompt_embedding=emb, num_steps=1, seed=0,
                               progress=False, output="latent", **_mode_inputs(mode, cfg))
        assert torch.isfinite(out).all(), (name, mode)


def test_a_config_of_an_unregistered_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant 'hologram'"):
        dataclasses.replace(cm.get_config("tiny"), variant="hologram")
