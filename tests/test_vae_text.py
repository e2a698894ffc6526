"""Front ends (cosmos_models.nets.vae, cosmos_models.nets.text): the WAN2.1 VAE through diffusers on a tiny
random config, the official latent normalization, frame arithmetic, text embedding preparation."""
import pytest
import torch

import cosmos_models as cm
from cosmos_models.nets import text, vae
def test_frame_arithmetic():
    assert [vae.latent_frames(n) for n in (1, 5, 93)] == [1, 2, 24]
    assert [vae.pixel_frames(n) for n in (1, 2, 24)] == [1, 5, 93]
    with pytest.raises(ValueError, match="4k\\+1"):
        vae.latent_frames(8)


def test_published_statistics():
    assert len(vae.LATENTS_MEAN) == len(vae.LATENTS_STD) == 16
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKLWan
    import inspect
    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert tuple(defaults["latents_mean"].default) == vae.LATENTS_MEAN
    assert tuple(defaults["latents_std"].default) == vae.LATENTS_STD


def test_tiny_vae_encode_decode_and_normalization():
    pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = vae.WanVAE.from_config("tiny").eval()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z = model.encode(video)
    assert z.shape == (1, 16, 2, 2, 2) and torch.isfinite(z).all()
    with torch.no_grad():
        mu = model.autoencoder.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.LATENTS_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.LATENTS_STD).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(z, (mu - mean) / std)
    torch.testing.assert_close(model.encode(video), z)  # deterministic (the mean, no sampling)
    out = model.decode(z)
    assert out.shape == video.shape and out.abs().max() <= 1
    with pytest.raises(ValueError, match="4k\\+1"):
        model.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(torch.zeros(1, 3, 5, 12, 16))
    with pytest.raises(ValueError, match="latents must be"):
        model.decode(torch.zeros(1, 4, 2, 2, 2))


def test_vae_latents_feed_the_dit_shape():
    pytest.importorskip("diffusers")
    model = vae.WanVAE.from_config("tiny").eval()
    z = model.encode(torch.zeros(1, 3, 9, 32, 32))
    dit = cm.build("tiny")
    out = dit(z, torch.rand(1, z.shape[2]) * 1000, torch.randn(1, 4, dit.config.text_channels))
    assert out.shape == z.shape


def test_normalize_layers_matches_the_official_formula():
    layers = [torch.randn(2, 5, 12) * (i + 1) + i for i in range(3)]
    out = text.normalize_layers(layers)
    assert out.shape == (2, 5, 36)
    for i, h in enumerate(layers):
        expect = (h - h.mean(-1, keepdim=True)) / (h.std(-1, keepdim=True) + 1e-8)
        torch.testing.assert_close(out[..., 12 * i: 12 * (i + 1)], expect)
    assert text.FEATURES == 100352 == cm.get_config("predict2.5-2b").text_channels
    with pytest.raises(ValueError, match="layer 1"):
        text.normalize_layers([torch.randn(2, 5, 12), torch.randn(2, 4, 12)])


def test_prepare_embeddings_pads_truncates_and_checks_width():
    cfg = cm.get_config("tiny")
    short = torch.randn(2, 3, cfg.text_channels)
    out = text.prepare_embeddings(short, cfg)
    assert out.shape == (2, cfg.text_len, cfg.text_channels)
    torch.testing.assert_close(out[:, :3], short)
    assert out[:, 3:].abs().sum() == 0
    long = torch.randn(1, cfg.text_len + 4, cfg.crossattn_emb_channels)  # already projected
    assert text.prepare_embeddings(long, cfg).shape == (1, cfg.text_len, cfg.crossattn_emb_channels)
    assert text.pad_or_truncate(torch.randn(1, 600, 4)).shape == (1, 512, 4)
    with pytest.raises(ValueError, match="channels"):
        text.prepare_embeddings(torch.randn(1, 3, 5), cfg)
    with pytest.raises(TypeError):
        text.prepare_embeddings([1, 2], cfg)


def test_reason1_encoder_never_downloads(tmp_path):
    try:
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="transformers"):
            text.Reason1Encoder(str(tmp_path))
        return
    with pytest.raises(Exception):  # an empty local folder: no weights, and no download attempt
        text.Reason1Encoder(str(tmp_path))
