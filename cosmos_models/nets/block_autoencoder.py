"""The tiny configs' autoencoder: a block PCA fitted to the training clips, in the WAN VAE's latent layout.

The tiny DiT is trained and sampled on the CPU in seconds, where the WAN2.1 VAE (even at its tiny
width) is both too slow to train and, untrained, turns every latent into grey noise: nothing a person
could judge a sample by. This autoencoder keeps the WAN VAE's contract exactly (`encode`: (B, 3,
4k+1, H, W) pixels in [-1, 1] -> (B, 16, k+1, H/8, W/8) normalized latents, causal in time: latent
frame 0 is pixel frame 0, latent frame j > 0 is pixel frames 4j-3 ... 4j; `decode` the reverse) with a
linear code that is fitted in closed form: each 8x8 pixel block of the first frame (192 values) and
of every later group of 4 frames (768 values) is projected on the 16 principal components of such
blocks in the clips (an SVD, about a second), each latent channel scaled to unit variance as the
DiT expects of the WAN latents. Decoding is the transpose (the best linear reconstruction from 16
numbers per block): the moving shapes of the generated clips come back at ~28 dB PSNR, blurred at
their edges, recognizably themselves.

It is for the tiny configs' embedded default and tests, not a replacement of the WAN VAE for real
video. Saved as a folder (config.json naming the class, weights.safetensors) that `--vae` takes.
"""
from __future__ import annotations

import json
import os

import torch
from torch import Tensor, nn

BLOCK = 8                 # spatial compression, the WAN VAE's
GROUP = 4                 # temporal compression (after the first frame)
CHANNELS = 16             # latent channels, the WAN VAE's
CLASS_NAME = "BlockAutoencoder"
WEIGHTS = "weights.safetensors"


def _blocks(x: Tensor, t: int) -> Tensor:
    """(B, 3, T, H, W) with T a multiple of t -> (B, T/t, H/8, W/8, 3*t*64)."""
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T // t, t, H // BLOCK, BLOCK, W // BLOCK, BLOCK).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(B, T // t, H // BLOCK, W // BLOCK, C * t * BLOCK * BLOCK)


def _unblocks(b: Tensor, t: int) -> Tensor:
    """The inverse of _blocks: (B, T', h, w, 3*t*64) -> (B, 3, T'*t, 8h, 8w)."""
    B, Tq, h, w, _ = b.shape
    x = b.reshape(B, Tq, h, w, 3, t, BLOCK, BLOCK).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(B, 3, Tq * t, h * BLOCK, w * BLOCK)


class BlockAutoencoder(nn.Module):
    """Linear block code (see the module doc). Buffers: per part ("first": 192-d blocks of frame 0,
    "rest": 768-d blocks of 4-frame groups) a mean, 16 orthonormal components and 16 latent scales."""

    def __init__(self):
        super().__init__()
        for part, dim in (("first", 3 * BLOCK * BLOCK), ("rest", 3 * GROUP * BLOCK * BLOCK)):
            self.register_buffer(f"{part}_mean", torch.zeros(dim))
            self.register_buffer(f"{part}_components", torch.eye(CHANNELS, dim))
            self.register_buffer(f"{part}_scale", torch.ones(CHANNELS))

    # -- fitting ------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, videos: Tensor | list[Tensor]) -> BlockAutoencoder:
        """Fitted to clips (N, 3, T, H, W) in [-1, 1] (or a list of (3, T, H, W) of any sizes that are
        multiples of 8, T = 4k + 1 >= 5)."""
        clips = list(videos) if isinstance(videos, list) else list(videos.unbind(0))
        firsts, rests = [], []
        for i, clip in enumerate(clips):
            _check_pixels(f"fit: clip {i}", clip[None])
            if clip.shape[1] < 1 + GROUP:
                raise ValueError(f"BlockAutoencoder.fit: clip {i} has {clip.shape[1]} frames; at least {1 + GROUP} "
                                 "(one group after the first frame) are needed")
            clip = clip.double()[None]
            firsts.append(_blocks(clip[:, :, :1], 1).reshape(-1, 3 * BLOCK * BLOCK))
            rests.append(_blocks(clip[:, :, 1:], GROUP).reshape(-1, 3 * GROUP * BLOCK * BLOCK))
        ae = cls()
        for part, rows in (("first", torch.cat(firsts)), ("rest", torch.cat(rests))):
            if rows.shape[0] < CHANNELS:
                raise ValueError(f"BlockAutoencoder.fit: {rows.shape[0]} blocks are too few for {CHANNELS} components")
            mean = rows.mean(0)
            _, s, v = torch.linalg.svd(rows - mean, full_matrices=False)
            components = v[:CHANNELS]
            # a sign convention, so that a refit on the same clips gives the same code
            components = components * torch.sign(components[:, components.abs().argmax(1)].diagonal())[:, None]
            scale = (s[:CHANNELS] / max(rows.shape[0] - 1, 1) ** 0.5).clamp_min(1e-6)
            getattr(ae, f"{part}_mean").copy_(mean.float())
            getattr(ae, f"{part}_components").copy_(components.float())
            getattr(ae, f"{part}_scale").copy_(scale.float())
        return ae

    # -- the VAE contract ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """(B, 3, 4k+1, H, W) in [-1, 1] -> (B, 16, k+1, H/8, W/8) fp32, unit-variance channels."""
        _check_pixels("encode", video)
        video = video.float().to(self.first_mean.device)
        parts = [self._encode_part(video[:, :, :1], "first", 1)]
        if video.shape[2] > 1:
            parts.append(self._encode_part(video[:, :, 1:], "rest", GROUP))
        return torch.cat(parts, dim=2)

    def _encode_part(self, x: Tensor, part: str, t: int) -> Tensor:
        b = _blocks(x, t) - getattr(self, f"{part}_mean")
        z = b @ getattr(self, f"{part}_components").T / getattr(self, f"{part}_scale")
        return z.permute(0, 4, 1, 2, 3)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """(B, 16, k+1, h, w) -> (B, 3, 4k+1, 8h, 8w) in [-1, 1], fp32."""
        if latents.dim() != 5 or latents.shape[1] != CHANNELS:
            raise ValueError(f"latents must be (B, {CHANNELS}, T, H, W), got {tuple(latents.shape)}")
        z = latents.float().to(self.first_mean.device).permute(0, 2, 3, 4, 1)
        parts = [self._decode_part(z[:, :1], "first", 1)]
        if z.shape[1] > 1:
            parts.append(self._decode_part(z[:, 1:], "rest", GROUP))
        return torch.cat(parts, dim=2).clamp(-1, 1)

    def _decode_part(self, z: Tensor, part: str, t: int) -> Tensor:
        b = (z * getattr(self, f"{part}_scale")) @ getattr(self, f"{part}_components") + getattr(self, f"{part}_mean")
        return _unblocks(b, t)

    def enable_tiling(self, tile: int = 256, stride: int | None = None) -> BlockAutoencoder:
        """Nothing to do: every 8x8 block is coded on its own, so any tiling gives the same result."""
        return self

    def disable_tiling(self) -> BlockAutoencoder:
        return self

    # -- files --------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, os.path.join(folder, WEIGHTS + ".tmp"))
        os.replace(os.path.join(folder, WEIGHTS + ".tmp"), os.path.join(folder, WEIGHTS))
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"_class_name": CLASS_NAME, "block": BLOCK, "group": GROUP, "channels": CHANNELS}, f, indent=2)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> BlockAutoencoder:
        from safetensors.torch import load_file

        ae = cls()
        ae.load_state_dict(load_file(os.path.join(os.fspath(folder), WEIGHTS)), strict=True)
        return ae.eval()


def is_block_autoencoder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a saved BlockAutoencoder (its config.json names the class)."""
    path = os.path.join(os.fspath(folder), "config.json")
    try:
        with open(path) as f:
            return json.load(f).get("_class_name") == CLASS_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _check_pixels(what: str, video: Tensor) -> None:
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"BlockAutoencoder.{what}: video must be (B, 3, T, H, W), got {tuple(video.shape)}")
    if (video.shape[2] - 1) % GROUP:
        raise ValueError(f"BlockAutoencoder.{what}: {video.shape[2]} frames; the code takes 4k + 1 frames")
    if video.shape[3] % BLOCK or video.shape[4] % BLOCK:
        raise ValueError(f"BlockAutoencoder.{what}: H, W = {tuple(video.shape[3:])} must be multiples of {BLOCK}")
