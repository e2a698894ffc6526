"""What a sampling run will cost, before it runs (`cosmos sample --dry-run`): FLOPs and peak device memory.

FLOPs are exact for the DiT (the analytic counter, cosmos_models.nets.flops, which agrees with
FlopCounterMode): forward FLOPs per network call x calls (chunks x solver steps x 2 with guidance,
the conditional and unconditional passes being separate calls). The VAE's FLOPs are not counted.

Memory is an estimate (bytes on the device, per rank), by phases, the peak being the largest phase:

- text encoding: the Reason1 encoder's weights (8.29e9 parameters) in bf16 plus its activations for
  512 tokens; the encoder is freed before the next phase (skipped when every text is cached or given
  as an embedding);
- denoising: the DiT's weights (counted from the config) in the model dtype, plus the largest live
  set of one block in inference: about ACTIVATION_WIDTHS x tokens x model channels values (residual,
  normed input, q/k/v, attention output, the MLP's 4x hidden), tokens divided by the context-parallel
  size; the fp32 ODE state and text context are small beside it;
- VAE decode (and encode): the VAE's weights plus its working set at the widest full-resolution stage,
  VAE_LIVE_TENSORS x (4 frames of a causal chunk + the cached ones) x pixels x base channels, fp32; with
  tiling, the pixels of one tile.

Without --offload the DiT and VAE stay resident together (their weights add up during decode); with
it only one network is on the device at a time. These are estimates for planning (which GPU, which
flags), not measurements: a measured peak belongs in `cosmos bench sample-step`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from cosmos_models.nets import flops
from cosmos_models.nets.config import DiTConfig, get_config
from cosmos_models.sampling import solvers

REASON1_PARAMS = 8.29e9        # Cosmos-Reason1-7B (Qwen2.5-VL-7B): language model + vision tower
REASON1_ACTIVATIONS = 2.0e9    # bytes: 29 hidden states of 512 x 3584 kept for the embedding, fp32, and a layer's scratch
ACTIVATION_WIDTHS = 14         # live (tokens x channels) tensors at a block's peak: x, h, q, k, v, attn out, 4x MLP, ...
VAE_LIVE_TENSORS = 6           # live full-resolution feature maps at the VAE decoder's widest stage
VAE_CHUNK_FRAMES = 4 + 2       # frames of a causal chunk plus the two cached by each causal conv
GIB = 1 << 30


@dataclass
class Estimate:
    flops_per_call: int
    network_calls: int
    total_flops: int
    tokens: int
    phases: dict          # phase -> bytes on the device
    peak_bytes: int

    def lines(self) -> list[str]:
        out = [f"DiT: {self.network_calls} network calls x {self.flops_per_call / 1e12:.2f} TFLOP = "
               f"{self.total_flops / 1e15:.3f} PFLOP per rank ({self.tokens} tokens per call and rank)"]
        out += [f"  {phase}: {size / GIB:.1f} GiB" for phase, size in self.phases.items()]
        out.append(f"estimated peak device memory: {self.peak_bytes / GIB:.1f} GiB")
        return out


def _dit_parameters(cfg: DiTConfig) -> int:
    import cosmos_models as cm

    return sum(p.numel() for p in cm.build(cfg, device="meta").parameters())  # shapes only, no memory


def _vae_parameters(vae_config: dict) -> int:
    from cosmos_models.nets.vae import _autoencoder_cls

    with torch.device("meta"):
        return sum(p.numel() for p in _autoencoder_cls()(**vae_config).parameters())


def network_calls(steps: int, grid: str, shift: float, guidance: float, chunks: int, distilled: bool) -> int:
    per_run = steps if distilled else len(solvers.sigma_grid(grid, steps, shift)) - 1
    return chunks * per_run * (2 if guidance > 0 and not distilled else 1)


def estimate(config: DiTConfig | str, *, frames: int | None, height: int | None, width: int | None, steps: int,
             grid: str = "shifted", shift: float = solvers.DEFAULT_SHIFT, guidance: float = 0.0, chunks: int = 1,
             dtype: torch.dtype = torch.bfloat16, cp: int = 1, control_passes: int = 1, distilled: bool = False,
             offload: bool = False, vae_config: dict | None = None, vae_tile: int | None = None,
             encodes_text: bool = True) -> Estimate:
    """The estimate of one video (see the module doc). frames: pixel frames of one chunk (None: the
    config's); height, width: pixels (None: the config's)."""
    cfg = get_config(config)
    counted = flops.count(cfg, frames=frames, height=height, width=width, cp=cp,
                          control_passes=control_passes)
    calls = network_calls(steps, grid, shift, guidance, chunks, distilled)
    per_call = counted["total_forward"]
    bytes_per = torch.tensor([], dtype=dtype).element_size()
    dit_weights = _dit_parameters(cfg) * bytes_per
    tokens = counted["tokens"] // cp  # this rank's share of the sequence
    dit_activations = ACTIVATION_WIDTHS * tokens * cfg.model_channels * bytes_per
    h = cfg.resolution[0] if height is None else height
    w = cfg.resolution[1] if width is None else width
    phases = {}
    if encodes_text:
        phases["text encoder"] = int(REASON1_PARAMS * 2 + REASON1_ACTIVATIONS)
    dit = dit_weights + dit_activations
    if vae_config is not None:
        vae_weights = _vae_parameters(vae_config) * 4
        pixels = min(h, vae_tile or h) * min(w, vae_tile or w)
        working = VAE_LIVE_TENSORS * VAE_CHUNK_FRAMES * pixels * vae_config["base_dim"] * 4
        vae = vae_weights + working
        phases["denoising (DiT)"] = dit + (0 if offload else vae_weights)
        phases["VAE decode"] = vae + (0 if offload else dit_weights)
    else:
        phases["denoising (DiT)"] = dit
    return Estimate(per_call, calls, per_call * calls, tokens, phases, max(phases.values()))
