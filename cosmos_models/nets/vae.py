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
    def from_official_file(cls, path: str, config: dict | str = "wan2.1") -> WanVAE:
        """The official WAN2.1 VAE file (`tokenizer.pth` of the Cosmos releases, `Wan2.1_VAE.pth`): a
        torch state dict of the original module's names, converted to diffusers' AutoencoderKLWan."""
        from cosmos_models.nets.weight_files import WeightFileError, read_weights

        kwargs = {"wan2.1": WAN21_CONFIG, "tiny": TINY_CONFIG}.get(config, config) if isinstance(config, str) else config
        sd, _ = read_weights(path)
        ae = _autoencoder_cls()(**kwargs)
        converted = official_vae_to_diffusers(sd, kwargs)
        expected = ae.state_dict()
        missing, unexpected = sorted(set(expected) - set(converted)), sorted(set(converted) - set(expected))
        wrong = sorted(k for k in set(expected) & set(converted) if expected[k].shape != converted[k].shape)
        if missing or unexpected or wrong:
            raise WeightFileError(f"{path}: not a WAN2.1 VAE of this architecture ({len(missing)} missing, "
                                  f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped entries, e.g. "
                                  f"{(missing + unexpected + wrong)[:3]}); give the tokenizer.pth of the release or "
                                  "a diffusers AutoencoderKLWan folder")
        ae.load_state_dict(converted, strict=True)
        return cls(ae)

    @classmethod
    def load(cls, spec: str) -> WanVAE:
        """--vae: a diffusers folder, the official VAE file (tokenizer.pth / Wan2.1_VAE.pth), or the
        folder of a tiny run's BlockAutoencoder (cosmos_models.nets.block_autoencoder, same contract)."""
        import os

        from cosmos_models.nets.block_autoencoder import BlockAutoencoder, is_block_autoencoder
        from cosmos_models.nets.weight_files import WeightFileError

        if os.path.isdir(spec) and is_block_autoencoder(spec):
            return BlockAutoencoder.load(spec)
        if os.path.isdir(spec):
            return cls.from_pretrained(spec)
        if os.path.isfile(spec):
            return cls.from_official_file(spec)
        raise WeightFileError(f"--vae {spec}: no such file or folder (a diffusers AutoencoderKLWan folder or the "
                              "official tokenizer.pth)")

    @classmethod
    def from_pretrained(cls, path: str, subfolder: str | None = None, **kwargs) -> WanVAE:
        """Load a diffusers-format AutoencoderKLWan (a local folder by default: local_files_only=True)."""
        kwargs.setdefault("local_files_only", True)
        ae = _autoencoder_cls().from_pretrained(path, subfolder=subfolder, **kwargs)
        cfg = ae.config
        mean = getattr(cfg, "latents_mean", None) or LATENTS_MEAN
        std = getattr(cfg, "latents_std", None) or LATENTS_STD
        return cls(ae, mean, std)

    def enable_tiling(self, tile: int = 256, stride: int | None = None) -> WanVAE:
        """Encode and decode in overlapping spatial tiles of `tile` pixels, `stride` apart (default
        3/4 of a tile), their seams blended linearly (diffusers' AutoencoderKLWan tiling): the working
        set is a tile's, not the frame's. Time is always processed in the causal VAE's own chunks (1,
        then 4 frames, with its feature cache), so a long video never needs all its frames at once."""
        stride = tile * 3 // 4 if stride is None else stride
        for name, value in (("tile", tile), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < SPATIAL_COMPRESSION \
                    or value % SPATIAL_COMPRESSION:
                raise ValueError(f"VAE tiling: {name}={value!r} must be a positive multiple of {SPATIAL_COMPRESSION} "
                                 "pixels")
        if stride > tile:
            raise ValueError(f"VAE tiling: stride={stride} must be <= tile={tile} (tiles overlap to blend their seams)")
        self.autoencoder.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                                       tile_sample_stride_height=stride, tile_sample_stride_width=stride)
        return self

    def disable_tiling(self) -> WanVAE:
        self.autoencoder.disable_tiling()
        return self

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


# ---------------------------------------------------------------------------------------------
# the official VAE file's names -> diffusers' (the original module is a flat list of blocks per side)
# ---------------------------------------------------------------------------------------------
_RESNET = {"residual.0.gamma": "norm1.gamma", "residual.2.": "conv1.", "residual.3.gamma": "norm2.gamma",
           "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
_TOP = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}


def _resnet_part(rest: str) -> str:
    for old, new in _RESNET.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest  # resample.*, time_conv.*: the same names in both


def _side(side: str, rest: str, decoder_blocks: dict[int, str]) -> str:
    """One encoder/decoder key (`rest` after "encoder." / "decoder.") in diffusers' names."""
    if rest.startswith("conv1."):
        return "conv_in." + rest[len("conv1."):]
    if rest.startswith("head.0."):
        return "norm_out." + rest[len("head.0."):]
    if rest.startswith("head.2."):
        return "conv_out." + rest[len("head.2."):]
    if rest.startswith("middle."):
        index, _, tail = rest[len("middle."):].partition(".")
        if index == "1":
            return "mid_block.attentions.0." + tail
        return f"mid_block.resnets.{0 if index == '0' else 1}." + _resnet_part(tail)
    flat = "downsamples." if side == "encoder" else "upsamples."
    if rest.startswith(flat):
        index, _, tail = rest[len(flat):].partition(".")
        if side == "encoder":  # diffusers keeps the encoder's flat list
            return f"down_blocks.{index}." + _resnet_part(tail)
        return decoder_blocks[int(index)] + _resnet_part(tail)
    return rest


def official_vae_to_diffusers(state_dict, config: dict) -> dict:
    """Rename an official WAN2.1 VAE state dict (original module names) to AutoencoderKLWan's.

    Encoder: the flat `downsamples.i` list keeps its indices as `down_blocks.i`. Decoder: the flat
    `upsamples` list is, per stage, num_res_blocks + 1 residual blocks then (but for the last stage)
    one resample; diffusers groups them as `up_blocks.s.resnets.j` and `up_blocks.s.upsamplers.0`."""
    stages, per = len(config["dim_mult"]), config["num_res_blocks"] + 1
    decoder_blocks, i = {}, 0
    for s in range(stages):
        for j in range(per):
            decoder_blocks[i] = f"up_blocks.{s}.resnets.{j}."
            i += 1
        if s != stages - 1:
            decoder_blocks[i] = f"up_blocks.{s}.upsamplers.0."
            i += 1
    out = {}
    for key, value in state_dict.items():
        side, _, rest = key.partition(".")
        if side in ("encoder", "decoder"):
            out[f"{side}.{_side(side, rest, decoder_blocks)}"] = value
        else:
            new = next((n + key[len(o):] for o, n in _TOP.items() if key.startswith(o)), key)
            out[new] = value
    return out
