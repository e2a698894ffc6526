"""Model configurations: the published Cosmos-Predict2.5 / Transfer2.5 networks and tiny CPU twins.

A `DiTConfig` names everything the network's structure depends on (so `build()` is a pure function
of it) plus defaults later stages read (resolution, fps, learning rate). Configs are frozen
dataclasses: derive a variant with `dataclasses.replace(get_config(name), field=value)`; new fields
may be added with defaults without touching existing configs.

Facts (num_blocks 28 for the 2B, crossattn 100352 -> 1024, RoPE ratios 3/3/1, ...) follow the
public code, see shared/DESIGN.md "Reference facts".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cosmos_models.nets.registry import VARIANTS

# Transfer2.5 control modalities in slot order: slot i of the control latent holds modality i.
CONTROL_MODALITIES = ("edge", "blur", "depth", "seg")


@dataclass(frozen=True)
class SparseWindow:
    """3D neighborhood attention window of one block, on the latent token grid (T, H, W).

    kernel_size -1 along a dimension means the whole extent (full attention along it).
    Passed to `cosmos_kernels.neighborhood_attention_3d` as is.
    """

    kernel_size: tuple[int, int, int]
    dilation: tuple[int, int, int] = (1, 1, 1)
    stride: tuple[int, int, int] = (1, 1, 1)
    is_causal: tuple[bool, bool, bool] = (False, False, False)

    def __post_init__(self):
        for name in ("kernel_size", "dilation", "stride", "is_causal"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ValueError(f"SparseWindow.{name} must have 3 entries (T, H, W), got {value!r}")
        if any(k == 0 or k < -1 for k in self.kernel_size):
            raise ValueError(f"SparseWindow.kernel_size entries must be positive or -1 (full), got {self.kernel_size}")


@dataclass(frozen=True)
class DiTConfig:
    name: str
    # --- backbone (MiniTrainDIT) ---
    model_channels: int = 2048
    num_blocks: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    adaln_lora_dim: int = 256
    latent_channels: int = 16          # VAE latent channels (input and output)
    patch_spatial: int = 2
    patch_temporal: int = 1
    concat_padding_mask: bool = True   # +1 input channel: the padding mask
    crossattn_emb_channels: int = 1024  # text context width seen by cross-attention
    crossattn_proj_in_channels: int | None = 100352  # raw text width; None: no projection
    text_len: int = 512
    rope_h_extrapolation_ratio: float = 3.0
    rope_w_extrapolation_ratio: float = 3.0
    rope_t_extrapolation_ratio: float = 1.0
    rope_enable_fps_modulation: bool = False
    base_fps: int = 24
    # the network sees timesteps * timestep_scale (official rectified flow: t in [0, 1000] -> [0, 1])
    timestep_scale: float = 0.001
    # per-block self-attention: None = dense (flash attention), a SparseWindow = neighborhood attention
    sparse_attention: tuple[SparseWindow | None, ...] = ()
    # reference-image context (Transfer2.5: SigLIP features), None: none
    image_context_dim: int | None = None
    image_context_tokens: int = 256
    # --- variant ---
    variant: str = "predict"           # a name of cosmos_models.nets.registry.VARIANTS
    # transfer: control blocks after these main blocks; control latent slots of latent_channels each
    control_block_indices: tuple[int, ...] = ()
    control_slots: int = 8
    control_modalities: tuple[str, ...] = CONTROL_MODALITIES
    # multiview: learnt view embedding concatenated on channels; latent frames per view
    view_embedding_count: int = 7
    view_embedding_dim: int = 7
    frames_per_view: int = 8
    # action: 7-d actions, actions_per_latent_frame per latent frame
    action_dim: int = 7
    actions_per_latent_frame: int = 4
    action_hidden_dim: int | None = None  # None: 4 * model_channels
    # --- defaults for training / sampling (read by later stages) ---
    resolution: tuple[int, int] = (704, 1280)  # (H, W) pixels
    num_frames: int = 93
    fps: int = 16
    lr: float = 2 ** -14.5
    weight_decay: float = 1e-3
    warmup_steps: int = 2000
    guidance: float = 7.0
    sample_steps: int = 35
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        if self.model_channels % self.num_heads:
            raise ValueError(f"{self.name}: model_channels {self.model_channels} is not divisible by "
                             f"num_heads {self.num_heads}")
        head_dim = self.model_channels // self.num_heads
        if head_dim % 2 or head_dim // 6 * 2 < 4:
            raise ValueError(f"{self.name}: head_dim {head_dim} cannot be split for 3D RoPE "
                             "(needs even head_dim >= 12)")
        if self.sparse_attention and len(self.sparse_attention) != self.num_blocks:
            raise ValueError(f"{self.name}: sparse_attention has {len(self.sparse_attention)} entries, "
                             f"expected one per block ({self.num_blocks}) or none")
        if self.variant not in VARIANTS:
            raise ValueError(f"{self.name}: unknown variant {self.variant!r}; registered: {sorted(VARIANTS)}")
        if self.variant == "transfer":
            if not self.control_block_indices or self.control_block_indices[0] != 0:
                raise ValueError(f"{self.name}: a transfer config needs control_block_indices starting at 0, "
                                 f"got {self.control_block_indices}")
            if max(self.control_block_indices) >= self.num_blocks:
                raise ValueError(f"{self.name}: control_block_indices {self.control_block_indices} exceed "
                                 f"num_blocks {self.num_blocks}")
            if len(self.control_modalities) > self.control_slots:
                raise ValueError(f"{self.name}: {len(self.control_modalities)} control modalities but only "
                                 f"{self.control_slots} slots")

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def in_channels(self) -> int:
        """Channels the patch embedding sees: latent + condition mask (+ view emb) (+ padding mask)."""
        c = self.latent_channels + 1
        if self.variant == "multiview":
            c += self.view_embedding_dim
        return c + (1 if self.concat_padding_mask else 0)

    @property
    def control_in_channels(self) -> int:
        """Control patch embedding input: all modality slots + condition mask (+ padding mask)."""
        return self.latent_channels * self.control_slots + 1 + (1 if self.concat_padding_mask else 0)

    @property
    def text_channels(self) -> int:
        """Width of the text embedding the model accepts."""
        return self.crossattn_proj_in_channels or self.crossattn_emb_channels

    def window(self, block: int) -> SparseWindow | None:
        return self.sparse_attention[block] if self.sparse_attention else None


_2B = dict(model_channels=2048, num_blocks=28, num_heads=16)
_14B = dict(model_channels=5120, num_blocks=36, num_heads=40, lr=1.3e-5)
# tiny: same code paths, CPU-sized. head_dim 32 -> RoPE split 10 (h) / 10 (w) / 12 (t).
_TINY = dict(model_channels=64, num_blocks=2, num_heads=2, adaln_lora_dim=16, crossattn_emb_channels=32,
             crossattn_proj_in_channels=48, text_len=8, resolution=(64, 64), num_frames=9)

_CONFIGS: dict[str, DiTConfig] = {}


def _register(cfg: DiTConfig) -> None:
    _CONFIGS[cfg.name] = cfg


_register(DiTConfig("predict2.5-2b", **_2B))
_register(DiTConfig("predict2.5-14b", **_14B))
_register(DiTConfig("transfer2.5-2b", **_2B, variant="transfer", control_block_indices=(0, 7, 14, 21),
                    image_context_dim=1152, guidance=3.0))
_register(DiTConfig("predict2.5-2b-multiview", **_2B, variant="multiview", frames_per_view=8))
_register(DiTConfig("predict2.5-2b-action", **_2B, variant="action", resolution=(256, 320), num_frames=13,
                    fps=4))
_register(DiTConfig("tiny", **_TINY))
# the README's first command: wide enough to learn the generated clip set in ~600 CPU steps (the 64-wide
# tiny stays noise after thousands); guidance 0 since it trains without text dropout (a demo memorizes)
_register(DiTConfig("tiny-demo", **{**_TINY, "model_channels": 128, "num_blocks": 4, "num_heads": 4}, lr=3e-3,
                    warmup_steps=120, guidance=0.0))
_register(DiTConfig("tiny-natten", **{**_TINY, "num_blocks": 2},
                    sparse_attention=(SparseWindow((-1, 3, 3)), None)))
_register(DiTConfig("tiny-transfer", **{**_TINY, "num_blocks": 4}, variant="transfer",
                    control_block_indices=(0, 2), image_context_dim=24, image_context_tokens=4))
# 13 pixel frames -> 4 latent frames = 2 views x 2 latent frames each
_register(DiTConfig("tiny-multiview", **{**_TINY, "num_frames": 13}, variant="multiview", frames_per_view=2))
_register(DiTConfig("tiny-action", **_TINY, variant="action", action_hidden_dim=32))


def configs() -> list[str]:
    """Names of the registered configs."""
    return list(_CONFIGS)


def get_config(name: str | DiTConfig) -> DiTConfig:
    if isinstance(name, DiTConfig):
        return name
    if name not in _CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {configs()}")
    return _CONFIGS[name]


def replace(cfg: DiTConfig, **changes) -> DiTConfig:
    """A copy of `cfg` with `changes` applied (validated again)."""
    return dataclasses.replace(cfg, **changes)
