"""The tiny configs' autoencoder (cosmos_models.nets.block_autoencoder): the WAN VAE's latent layout and
causality, a reconstruction a person can recognize (PSNR on held-out generated clips), files, errors."""
import math

import pytest
import torch

from cosmos_models.data.clips import _moving_shapes
from cosmos_models.nets.block_autoencoder import BlockAutoencoder, is_block_autoencoder
from cosmos_models.nets.vae import WanVAE


def clips(n, frames, seed, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([_moving_shapes(frames, size, size, g) for _ in range(n)]).permute(0, 4, 1, 2, 3) / 127.5 - 1


def psnr(a, b):
    return 10 * math.log10(4 / float((a - b).pow(2).mean()))  # values in [-1, 1]: peak-to-peak 2


@pytest.fixture(scope="module")
def fitted():
    return BlockAutoencoder.fit(clips(16, 33, seed=0))


def test_held_out_clips_come_back_recognizably(fitted):
    held = clips(6, 9, seed=123)
    back = fitted.decode(fitted.encode(held))
    assert back.shape == held.shape and torch.isfinite(back).all()
    assert psnr(back, held) > 25  # 28 dB measured; the moving shapes keep their place and color
    # far better than a video that only keeps each clip's mean color
    flat = held.mean(dim=(2, 3, 4), keepdim=True).expand_as(held)
    assert psnr(back, held) > psnr(flat, held) + 10


def test_latent_layout_is_the_wan_vaes_causal_one(fitted):
    x = clips(2, 13, seed=5)
    z = fitted.encode(x)
    assert z.shape == (2, 16, 4, 8, 8) and z.dtype == torch.float32
    y = x.clone()
    y[:, :, 6] += 0.5  # pixel frame 6 belongs to latent frame 2 (frames 5 ... 8)
    dz = (fitted.encode(y) - z).abs().amax(dim=(0, 1, 3, 4))
    assert dz[2] > 0 and dz[0] == 0 and dz[1] == 0 and dz[3] == 0
    # one frame (an image) is latent frame 0 alone
    assert fitted.encode(x[:, :, :1]).shape == (2, 16, 1, 8, 8)
    # unit-variance channels on the clips it was fitted to (what the DiT expects of WAN latents)
    std = fitted.encode(clips(16, 33, seed=0)).transpose(0, 1).reshape(16, -1).std(dim=1)
    assert torch.allclose(std, torch.ones(16), atol=0.05)


def test_fit_is_deterministic_files_round_trip_and_vae_load(fitted, tmp_path):
    again = BlockAutoencoder.fit(clips(16, 33, seed=0))
    for name, value in fitted.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    fitted.save(tmp_path / "vae")
    assert is_block_autoencoder(tmp_path / "vae") and not is_block_autoencoder(tmp_path)
    loaded = WanVAE.load(str(tmp_path / "vae"))  # what --vae takes
    assert isinstance(loaded, BlockAutoencoder)
    x = clips(1, 9, seed=7)
    assert torch.equal(loaded.encode(x), fitted.encode(x))
    assert torch.equal(loaded.enable_tiling(16).decode(fitted.encode(x)), fitted.decode(fitted.encode(x)))


def test_bad_inputs_name_what_is_wrong(fitted):
    for video, words in ((torch.zeros(1, 3, 8, 64, 64), "4k \\+ 1 frames"), (torch.zeros(1, 3, 9, 60, 64), "multiples of 8"),
                         (torch.zeros(3, 9, 64, 64), r"\(B, 3, T, H, W\)")):
        with pytest.raises(ValueError, match=words):
            fitted.encode(video)
    with pytest.raises(ValueError, match="latents must be"):
        fitted.decode(torch.zeros(1, 8, 2, 8, 8))
    with pytest.raises(ValueError, match="at least 5"):
        BlockAutoencoder.fit([torch.zeros(3, 1, 64, 64)])
