"""The WAN2.1 VAE front end: diffusers' AutoencoderKLWan (a dependency, not a rewrite) plus the
official per-channel latent normalization.

    encode(video (B, 3, 4k+1, H, W) in [-1, 1]) -> latents (B, 16, k+1, H/8, W/8), normalized
    decode(latents) -> video in [-1, 1]

Encoding takes the posterior's mean (deterministic), then `(mu - mean) / std` with the 16 published
per-channel means/stds (the ones diffusers ships in the WAN2.1 VAE config as latents_mean /
latents_std; the pipeline, not the VAE, applies them). Weights: `WanVAE.from_pretrained(path)` with a
local diffusers-format folder (never downloads unless asked), or a random init from a config.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from cosmos_models._deps import require

# WAN2.1 latent statistics (per channel), as published with the VAE.
LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

# The published architecture (diffusers AutoencoderKLWan arguments).
WAN21_CONFIG = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                    temperal_downsample=[False, True, True])
# Same code path, CPU-sized (for tests): random weights.
TINY_CONFIG = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
                   temperal_downsample=[False, True, True])

TEMPORAL_COMPRESSION = 4
SPATIAL_COMPRESSION = 8


def latent_frames(pixel_frames: int) -> int:
    """T = 4k + 1 pixel frames -> k + 1 latent frames."""
    if pixel_frames < 1 or (pixel_frames - 1) % TEMPORAL_COMPRESSION:
        raise ValueError(f"the WAN2.1 VAE takes 4k+1 frames (1, 5, 9, ..., 93), got {pixel_frames}")
    return (pixel_frames - 1) // TEMPORAL_COMPRESSION + 1


def pixel_frames(latent_frames: int) -> int:
    """k + 1 latent frames -> 4k + 1 pixel frames."""
    if latent_frames < 1:
        raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
    return (latent_frames - 1) * TEMPORAL_COMPRESSION + 1


def _autoencoder_cls():
    # imported on first use: importing diffusers takes seconds, and it is optional
    return require("diffusers", "the WAN2.1 VAE (diffusers AutoencoderKLWan)").AutoencoderKLWan


class WanVAE(nn.Module):
    """AutoencoderKLWan + the official latent normalization."""

    def __init__(self, autoencoder: nn.Module, latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD):
        super().__init__()
        self.autoencoder = autoencoder
        z = len(latents_mean)
        self.register_buffer("latents_mean", torch.tensor(latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1),
                             persistent=False)
        self.register_buffer("latents_std", torch.tensor(latents_std, dtype=torch.float32).view(1, z, 1, 1, 1),
                             persistent=False)

    @classmethod
    def from_config(cls, config: dict | str = "wan2.1") -> WanVAE:
        """Random init: config "wan2.1" (the published architecture), "tiny", or AutoencoderKLWan kwargs."""
        kwargs = {"wan2.1": WAN21_CONFIG, "tiny": TINY_CONFIG}.get(config, config) if isinstance(config, str) else config
        if not isinstance(kwargs, dict):
            raise ValueError(f"unknown VAE config {config!r}; expected 'wan2.1', 'tiny' or a dict of kwargs")
        return cls(_autoencoder_cls()(**kwargs))

    @classmethod
    def from_pretrained(cls, path: str, subfolder: str | None = None, **kwargs) -> WanVAE:
        """Load a diffusers-format AutoencoderKLWan (a local folder by default: local_files_only=True)."""
        kwargs.setdefault("local_files_only", True)
        ae = _autoencoder_cls().from_pretrained(path, subfolder=subfolder, **kwargs)
        cfg = ae.config
        mean = getattr(cfg, "latents_mean", None) or LATENTS_MEAN
        std = getattr(cfg, "latents_std", None) or LATENTS_STD
        return cls(ae, mean, std)

    def _dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """video (B, 3, 4k+1, H, W) in [-1, 1] -> normalized latents (B, 16, k+1, H/8, W/8), fp32."""
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (B, 3, T, H, W), got {tuple(video.shape)}")
        latent_frames(video.shape[2])
        if video.shape[3] % SPATIAL_COMPRESSION or video.shape[4] % SPATIAL_COMPRESSION:
            raise ValueError(f"video H, W = {tuple(video.shape[3:])} must be multiples of {SPATIAL_COMPRESSION}")
        mu = self.autoencoder.encode(video.to(self._dtype())).latent_dist.mode().float()
        return (mu - self.latents_mean) / self.latents_std

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalized latents (B, 16, k+1, h, w) -> video (B, 3, 4k+1, 8h, 8w) in [-1, 1], fp32."""
        if latents.dim() != 5 or latents.shape[1] != self.latents_mean.shape[1]:
            raise ValueError(f"latents must be (B, {self.latents_mean.shape[1]}, T, H, W), got {tuple(latents.shape)}")
        mu = latents.float() * self.latents_std + self.latents_mean
        return self.autoencoder.decode(mu.to(self._dtype())).sample.float().clamp(-1, 1)
