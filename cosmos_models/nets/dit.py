"""The Cosmos-Predict2.5 DiT (official MiniTrainDIT structure and parameter names) on cosmos_kernels.

Parameter names and shapes match the public checkpoints (`x_embedder.proj.1.weight`,
`blocks.N.self_attn.q_proj.weight`, ...), so `cosmos_models.load_checkpoint` loads them strictly.
Compute goes through the kernels, each picking its backend by dispatch (reference on CPU,
Triton/CUDA on GPU; `cosmos_kernels.use_backend` overrides it, for the whole model or per op):

    block:  h = adaln_modulate(x)                       LN(x)*(1+scale)+shift, per latent frame
            x, h = gated_residual_adaln(x, attn(h))      x += gate*y; next sublayer's h, one pass
            ...  (self-attention -> cross-attention -> MLP)
    attention: q/k RMSNorm + 3D RoPE in one op (qk_norm_rope), flash_attention or
               neighborhood_attention_3d per block, wrapped in UlyssesAttention under context parallel.

Tokens are (B, L, D) in t-major order (L = T*H*W on the patch grid); modulation is per latent
frame, (B, T, D), computed in fp32 (the official use_wan_fp32_strategy) and cast to the token dtype.
Timesteps are in the official convention: the network sees `timesteps * config.timestep_scale`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cosmos_kernels as ck
from cosmos_models.nets.config import DiTConfig, SparseWindow, get_config

EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# small modules (names follow the official code so checkpoints map one to one)
# ---------------------------------------------------------------------------------------------
class Patchify(nn.Module):
    """(B, C, T*r, H*m, W*m) -> (B, T, H, W, C*r*m*m), patch features ordered (c, r, m, n)."""

    def __init__(self, spatial: int, temporal: int):
        super().__init__()
        self.spatial, self.temporal = spatial, temporal

    def forward(self, x: Tensor) -> Tensor:
        B, C, T, H, W = x.shape
        r, m = self.temporal, self.spatial
        x = x.reshape(B, C, T // r, r, H // m, m, W // m, m).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(B, T // r, H // m, W // m, C * r * m * m)


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, spatial: int, temporal: int):
        super().__init__()
        self.fan_in = in_channels * spatial * spatial * temporal
        self.proj = nn.Sequential(Patchify(spatial, temporal), nn.Linear(self.fan_in, out_channels, bias=False))

    def reset_parameters(self) -> None:
        _trunc_normal(self.proj[1].weight, self.fan_in)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Timesteps(nn.Module):
    """Sinusoid of per-frame timesteps (B, T) -> (B, T, D): [cos, sin] of t * 10000^(-i/(D/2))."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, t: Tensor) -> Tensor:
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        half = self.num_channels // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=dtype, device=t.device) / half
        angles = t.to(dtype)[..., None] * torch.exp(exponent)
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepEmbedding(nn.Module):
    """With AdaLN-LoRA: returns (the raw sinusoid, linear_2(SiLU(linear_1(sinusoid))) as the shared 3D term)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.activation = nn.SiLU()
        self.linear_2 = nn.Linear(dim, 3 * dim, bias=False)

    def reset_parameters(self) -> None:
        _trunc_normal(self.linear_1.weight, self.linear_1.in_features)
        _trunc_normal(self.linear_2.weight, self.linear_2.in_features)

    def forward(self, sample: Tensor) -> tuple[Tensor, Tensor]:
        return sample, _linear(self.linear_2, self.activation(_linear(self.linear_1, sample)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        xf = x if x.dtype == torch.float64 else x.float()
        out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return out * self.weight.to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with per-head RMSNorm on q and k (RoPE on self-attention only).

    With `image_context_dim` (Transfer2.5's reference image) a second attention to the image
    tokens with its own q/k/v (q_img, k_img, v_img, q_img_norm, k_img_norm) is added before
    output_proj, as in the official I2VCrossAttentionFull.
    """

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, head_dim: int,
                 image_context: bool = False):
        super().__init__()
        self.is_selfattn = context_dim is None
        context_dim = query_dim if context_dim is None else context_dim
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.q_proj = nn.Linear(query_dim, inner, bias=False)
        self.q_norm = RMSNorm(head_dim)
        self.k_proj = nn.Linear(context_dim, inner, bias=False)
        self.k_norm = RMSNorm(head_dim)
        self.v_proj = nn.Linear(context_dim, inner, bias=False)
        self.output_proj = nn.Linear(inner, query_dim, bias=False)
        self.image_context = image_context
        if image_context:
            self.q_img = nn.Linear(query_dim, inner, bias=False)
            self.k_img = nn.Linear(query_dim, inner, bias=False)
            self.v_img = nn.Linear(query_dim, inner, bias=False)
            self.q_img_norm = RMSNorm(head_dim)
            self.k_img_norm = RMSNorm(head_dim)

    def reset_parameters(self) -> None:
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.output_proj):
            _trunc_normal(lin.weight, lin.in_features)
        self.q_norm.reset_parameters()
        self.k_norm.reset_parameters()
        if self.image_context:
            for lin in (self.q_img, self.k_img, self.v_img):
                _trunc_normal(lin.weight, lin.in_features)
            self.q_img_norm.reset_parameters()
            self.k_img_norm.reset_parameters()

    def _heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.heads, self.head_dim))

    def forward(self, x: Tensor, context: Tensor | None = None, freqs: Tensor | None = None, *,
                attend=None, image_context: Tensor | None = None, views: int = 1) -> Tensor:
        """x (B, S, D); context (B, M, Dc) (None: self-attention); freqs (S, head_dim) RoPE angles.

        `attend(q, k, v)` runs the self-attention kernel; cross-attention uses flash_attention.
        `views` > 1 (multiview): x and context are split into that many equal chunks (one per view)
        and each view's tokens attend to their own context chunk.
        """
        B, S, _ = x.shape
        source = x if context is None else context
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(source)), self._heads(self.v_proj(source))
        q, k = ck.qk_norm_rope(q, k, self.q_norm.weight, self.k_norm.weight, freqs if self.is_selfattn else None,
                               eps=self.q_norm.eps)
        if self.is_selfattn:
            out = attend(q, k, v)
        else:
            out = _per_view(ck.flash_attention, q, k, v, views)
            if self.image_context:
                if image_context is None:
                    raise ValueError("cross-attention: this model takes an image context (image_context_dim is set) "
                                     "but none was given")
                qi, ki = self._heads(self.q_img(x)), self._heads(self.k_img(image_context))
                vi = self._heads(self.v_img(image_context))
                qi, ki = ck.qk_norm_rope(qi, ki, self.q_img_norm.weight, self.k_img_norm.weight, None,
                                         eps=self.q_img_norm.eps)
                out = out + ck.flash_attention(qi, ki, vi)
        return self.output_proj(out.flatten(-2))


def _per_view(fn, q: Tensor, k: Tensor, v: Tensor, views: int) -> Tensor:
    if views == 1:
        return fn(q, k, v)
    B, S, H, D = q.shape
    if S % views or k.shape[1] % views:
        raise ValueError(f"multiview cross-attention: {S} query tokens and {k.shape[1]} context tokens must both "
                         f"split into {views} views")
    split = lambda t: t.reshape(B * views, t.shape[1] // views, H, D)  # noqa: E731 (view-major tokens)
    return fn(split(q), split(k), split(v)).reshape(B, S, H, D)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.activation = nn.GELU()
        self.layer2 = nn.Linear(hidden, dim, bias=False)

    def reset_parameters(self) -> None:
        _trunc_normal(self.layer1.weight, self.layer1.in_features)
        _trunc_normal(self.layer2.weight, self.layer2.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(self.activation(self.layer1(x)))


def _modulation(dim: int, rank: int, chunks: int) -> nn.Sequential:
    """AdaLN-LoRA modulation: SiLU -> Linear(D, rank) -> Linear(rank, chunks*D), second one zero-init."""
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, rank, bias=False), nn.Linear(rank, chunks * dim, bias=False))


def _reset_modulation(seq: nn.Sequential) -> None:
    _trunc_normal(seq[1].weight, seq[1].in_features)
    nn.init.zeros_(seq[2].weight)


def _run_modulation(seq: nn.Sequential, emb: Tensor, lora: Tensor) -> Tensor:
    """Modulation in the embedding's precision (fp32, or fp64 in float64 checks), whatever the weights'."""
    return _linear(seq[2], _linear(seq[1], F.silu(emb))) + lora


@dataclass
class Frames:
    """What every block needs to know about the token layout of this forward pass."""

    grid: tuple[int, int, int]   # (T, H, W) patch grid of the whole sequence (all ranks, all views)
    views: int = 1               # multiview: the sequence is `views` equal chunks along T


class Block(nn.Module):
    """Self-attention -> cross-attention -> MLP, each under AdaLN modulation per latent frame."""

    def __init__(self, cfg: DiTConfig, window: SparseWindow | None = None):
        super().__init__()
        D, heads = cfg.model_channels, cfg.num_heads
        self.window = window
        self.cp_group = None
        self.cp_overlap_chunks = 1
        self.self_attn = Attention(D, None, heads, cfg.head_dim)
        self.cross_attn = Attention(D, cfg.crossattn_emb_channels, heads, cfg.head_dim,
                                    image_context=cfg.image_context_dim is not None)
        self.mlp = FeedForward(D, int(D * cfg.mlp_ratio))
        self.adaln_modulation_self_attn = _modulation(D, cfg.adaln_lora_dim, 3)
        self.adaln_modulation_cross_attn = _modulation(D, cfg.adaln_lora_dim, 3)
        self.adaln_modulation_mlp = _modulation(D, cfg.adaln_lora_dim, 3)

    def reset_parameters(self) -> None:
        self.self_attn.reset_parameters()
        self.cross_attn.reset_parameters()
        self.mlp.reset_parameters()
        for seq in (self.adaln_modulation_self_attn, self.adaln_modulation_cross_attn, self.adaln_modulation_mlp):
            _reset_modulation(seq)

    # -- self-attention kernel of this block ---------------------------------------------------
    def _dense_or_sparse(self, grid: tuple[int, int, int]):
        w = self.window
        if w is not None and grid[0] > 1:  # images (T = 1) fall back to dense, as in the official code
            kernel = tuple(g if k == -1 else min(k, g) for k, g in zip(w.kernel_size, grid))
            if kernel != tuple(grid) or any(d != 1 for d in w.dilation) or any(w.is_causal):
                return lambda q, k, v: ck.neighborhood_attention_3d(
                    q, k, v, grid=grid, kernel_size=kernel, dilation=w.dilation, stride=w.stride,
                    is_causal=w.is_causal)
        return ck.flash_attention

    def _attend(self, frames: Frames):
        fn = self._dense_or_sparse(frames.grid)
        if self.cp_group is None:
            return fn
        if self.window is not None and frames.views > 1:
            # Ulysses gathers the per-view frame shards rank-major, which dense attention does not
            # mind (same permutation of queries and keys) but a neighborhood window on the grid does
            raise ValueError("context parallel with neighborhood attention is supported for one view only")
        return ck.UlyssesAttention(fn, self.cp_group, overlap_chunks=self.cp_overlap_chunks)

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, freqs: Tensor, adaln_lora: Tensor,
                frames: Frames, image_context: Tensor | None = None) -> Tensor:
        """x (B, L, D) tokens; emb (B, T, D) and adaln_lora (B, T, 3D) per frame (T may be 1)."""
        dt = x.dtype
        sa, ca, ml = (_run_modulation(m, emb, adaln_lora).to(dt).chunk(3, dim=-1) for m in (
            self.adaln_modulation_self_attn, self.adaln_modulation_cross_attn, self.adaln_modulation_mlp))
        (shift_sa, scale_sa, gate_sa), (shift_ca, scale_ca, gate_ca), (shift_ml, scale_ml, gate_ml) = sa, ca, ml

        h = ck.adaln_modulate(x, shift_sa, scale_sa, EPS)
        y = self.self_attn(h, freqs=freqs, attend=self._attend(frames))
        x, h = ck.gated_residual_adaln(x, y, gate_sa, shift_ca, scale_ca, EPS)
        y = self.cross_attn(h, context, image_context=image_context, views=frames.views)
        x, h = ck.gated_residual_adaln(x, y, gate_ca, shift_ml, scale_ml, EPS)
        return ck.gated_residual(x, self.mlp(h), gate_ml)


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.model_channels
        out = cfg.patch_spatial * cfg.patch_spatial * cfg.patch_temporal * cfg.latent_channels
        self.linear = nn.Linear(D, out, bias=False)
        self.adaln_modulation = _modulation(D, cfg.adaln_lora_dim, 2)

    def reset_parameters(self) -> None:
        _trunc_normal(self.linear.weight, self.linear.in_features)
        _reset_modulation(self.adaln_modulation)

    def forward(self, x: Tensor, emb: Tensor, adaln_lora: Tensor) -> Tensor:
        D = x.shape[-1]
        shift, scale = _run_modulation(self.adaln_modulation, emb, adaln_lora[..., : 2 * D]).to(x.dtype).chunk(2, -1)
        return self.linear(ck.adaln_modulate(x, shift, scale, EPS))


# ---------------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------------
class DiT(nn.Module):
    """Cosmos-Predict2.5 DiT. `forward(x, timesteps, crossattn_emb, ...)` -> velocity (B, 16, T, H, W).

    Variants (transfer, multiview, action) subclass it and override the hooks `_embed`,
    `_time_embedding`, `_rope` and `_run_blocks`.
    """

    # -- what the rest of the library asks a variant (cosmos_models/nets/registry.py) --------------
    # keyword inputs of forward that only a variant takes (checked, so a typo never passes silently)
    variant_inputs: tuple[str, ...] = ()
    # the Sampler modes it runs
    sampler_modes: tuple[str, ...] = ("text2world", "image2world", "video2world")
    # whether the patch embedding's input needs a gradient (the FLOP count; data needs none)
    embed_input_grad = False

    @classmethod
    def example_inputs(cls, cfg: DiTConfig, batch: int, latent_shape: tuple[int, int, int],
                       generator: torch.Generator, device=None, dtype: torch.dtype = torch.float32) -> dict:
        """Random variant inputs for a forward on latents (batch, C, T, H, W), latent_shape = (T, H, W)."""
        return {}

    @classmethod
    def flop_views(cls, cfg: DiTConfig, grid: tuple[int, int, int]) -> int:
        """Prompts per sample (the context is views x text_len tokens) on a token grid (T, H, W)."""
        return 1

    @staticmethod
    def count_variant_flops(shape, tally, block, control_passes: int) -> None:
        """Add the FLOPs of the variant's own layers (cosmos_models.nets.flops): `shape` has the sizes,
        `tally.linear(part, rows, fan_in, fan_out, input_grad=)` counts a matmul, `block(window, part)`
        a whole DiT block under `part`. The base DiT has none."""

    def __init__(self, config: DiTConfig | str, *, cp_group=None):
        super().__init__()
        cfg = self.config = get_config(config)
        D = cfg.model_channels
        self.x_embedder = PatchEmbed(cfg.in_channels, D, cfg.patch_spatial, cfg.patch_temporal)
        self.t_embedder = nn.Sequential(Timesteps(D), TimestepEmbedding(D))
        self.blocks = nn.ModuleList(Block(cfg, cfg.window(i)) for i in range(cfg.num_blocks))
        self.final_layer = FinalLayer(cfg)
        self.t_embedding_norm = RMSNorm(D)
        if cfg.crossattn_proj_in_channels is not None:
            self.crossattn_proj = nn.Sequential(
                nn.Linear(cfg.crossattn_proj_in_channels, cfg.crossattn_emb_channels, bias=True), nn.GELU())
        if cfg.image_context_dim is not None:
            self.img_context_proj = nn.Sequential(nn.Linear(cfg.image_context_dim, D, bias=True), nn.GELU())
        self._build_variant()
        self.reset_parameters()
        self.cp_group, self.cp_overlap_chunks = None, 1
        self.set_context_parallel_group(cp_group)

    def _build_variant(self) -> None:
        """Extra modules of a variant (called before reset_parameters)."""

    def reset_parameters(self) -> None:
        self.x_embedder.reset_parameters()
        self.t_embedder[1].reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        self.final_layer.reset_parameters()
        self.t_embedding_norm.reset_parameters()
        for name in ("crossattn_proj", "img_context_proj"):
            if hasattr(self, name):
                getattr(self, name)[0].reset_parameters()

    # -- switches --------------------------------------------------------------------------------
    def set_context_parallel_group(self, group, *, overlap_chunks: int | None = None) -> None:
        """Context parallel (Ulysses): each rank of `group` keeps T/size latent frames of the sequence
        (per view), self-attention runs through UlyssesAttention (heads must divide by the size),
        cross-attention and everything else stay local; the output is gathered along T.

        Every rank must call forward with the same full inputs (the data is replicated over the group,
        as the official trainer broadcasts it); the gradient of the gathered output is then taken as
        identical on every rank, so each rank back-propagates its own slice. Gradients of the parameters
        (and of the replicated inputs) are partial per rank and sum over the group to the full ones
        (the trainer's FSDP mesh reduces parameter gradients over it).

        overlap_chunks: UlyssesAttention's head chunks (exchange pipelined with attention; None keeps
        the current setting, initially 1); heads must divide by size x chunks.
        """
        chunks = self.cp_overlap_chunks if overlap_chunks is None else overlap_chunks
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
            raise ValueError(f"overlap_chunks must be a positive int, got {chunks!r}")
        if group is not None:
            size = torch.distributed.get_world_size(group)
            if self.config.num_heads % size:
                raise ValueError(f"context parallel size {size} does not divide num_heads {self.config.num_heads}")
            if self.config.num_heads % (size * chunks):
                raise ValueError(f"context parallel size {size} x overlap_chunks {chunks} does not divide "
                                 f"num_heads {self.config.num_heads}")
        self.cp_group, self.cp_overlap_chunks = group, chunks
        for m in self.modules():
            if isinstance(m, Block):
                m.cp_group, m.cp_overlap_chunks = group, chunks

    # -- input handling ----------------------------------------------------------------------------
    def _check_inputs(self, x: Tensor, timesteps: Tensor, crossattn_emb: Tensor) -> None:
        cfg = self.config
        if not isinstance(x, Tensor) or x.dim() != 5:
            raise ValueError(f"x_B_C_T_H_W must be a 5-D tensor (B, C, T, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        B, C, T, H, W = x.shape
        if C != cfg.latent_channels:
            raise ValueError(f"x_B_C_T_H_W has {C} channels; the model takes {cfg.latent_channels} latent channels "
                             "(pass the condition mask as condition_video_input_mask, not as a channel)")
        if H % cfg.patch_spatial or W % cfg.patch_spatial:
            raise ValueError(f"x_B_C_T_H_W has H={H}, W={W}; both must be divisible by the patch size "
                             f"{cfg.patch_spatial}")
        if T % cfg.patch_temporal:
            raise ValueError(f"x_B_C_T_H_W has T={T} frames, not divisible by patch_temporal {cfg.patch_temporal}")
        if not isinstance(timesteps, Tensor) or timesteps.dim() not in (1, 2) or timesteps.shape[0] != B or (
                timesteps.dim() == 2 and timesteps.shape[1] not in (1, T // cfg.patch_temporal)):
            got = tuple(timesteps.shape) if isinstance(timesteps, Tensor) else type(timesteps).__name__
            raise ValueError(f"timesteps_B_T has shape {got}; expected (B,) or (B, T) with B={B}, "
                             f"T={T // cfg.patch_temporal} latent frames (one timestep per frame)")
        if not isinstance(crossattn_emb, Tensor) or crossattn_emb.dim() != 3 or crossattn_emb.shape[0] != B:
            got = tuple(crossattn_emb.shape) if isinstance(crossattn_emb, Tensor) else type(crossattn_emb).__name__
            raise ValueError(f"crossattn_emb has shape {got}; expected (B, tokens, channels) with B={B}")
        widths = {cfg.text_channels, cfg.crossattn_emb_channels}
        if crossattn_emb.shape[-1] not in widths:
            raise ValueError(f"crossattn_emb has {crossattn_emb.shape[-1]} channels; this model takes "
                             f"{cfg.text_channels} (raw text features) or {cfg.crossattn_emb_channels} "
                             "(already projected)")

    def _masks(self, x: Tensor, condition_video_input_mask: Tensor | None, padding_mask: Tensor | None) -> Tensor:
        """Concatenate the condition mask (zeros if None) and, if configured, the padding mask."""
        B, _, T, H, W = x.shape
        if condition_video_input_mask is None:
            cond = x.new_zeros(B, 1, T, H, W)
        else:
            try:
                cond = condition_video_input_mask.to(x.dtype).expand(B, 1, T, H, W)
            except RuntimeError:
                raise ValueError(f"condition_video_input_mask has shape {tuple(condition_video_input_mask.shape)}; "
                                 f"expected (B, 1, T, H, W) = {(B, 1, T, H, W)} or broadcastable to it") from None
        parts = [x, cond]
        if self.config.concat_padding_mask:
            parts.append(self._padding_channel(x, padding_mask))
        return torch.cat(parts, dim=1)

    @staticmethod
    def _padding_channel(x: Tensor, padding_mask: Tensor | None) -> Tensor:
        B, _, T, H, W = x.shape
        if padding_mask is None:
            return x.new_zeros(B, 1, T, H, W)
        pm = padding_mask
        if pm.dim() == 3:
            pm = pm[:, None]
        if pm.dim() != 4 or pm.shape[1] != 1 or pm.shape[0] not in (1, B):
            raise ValueError(f"padding_mask has shape {tuple(padding_mask.shape)}; expected (B, 1, H, W) or (B, H, W)")
        if pm.shape[-2:] != (H, W):  # pixel-resolution mask: nearest resize to the latent grid
            pm = F.interpolate(pm.float(), size=(H, W), mode="nearest")
        return pm.to(x.dtype)[:, :, None].expand(B, 1, T, H, W)

    # -- hooks of the variants -----------------------------------------------------------------------
    def _embed(self, x_in: Tensor, **kw) -> tuple[Tensor, int]:
        """(B, C_in, T, H, W) inputs with masks -> ((B, T, H', W', D) tokens, number of views)."""
        return self.x_embedder(x_in), 1

    def _time_embedding(self, timesteps_B_T: Tensor, mod_dtype: torch.dtype, **kw) -> tuple[Tensor, Tensor]:
        emb, lora = self._raw_time_embedding(timesteps_B_T, mod_dtype)
        return self.t_embedding_norm(emb), lora

    def _raw_time_embedding(self, timesteps_B_T: Tensor, mod_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        t = timesteps_B_T.to(mod_dtype) * self.config.timestep_scale
        return self.t_embedder(t if t.dim() == 2 else t[:, None])

    def _rope(self, grid: tuple[int, int, int], views: int, fps, device) -> Tensor:
        """(L, head_dim) RoPE angles of the whole sequence; multiview: per view, t restarting at 0."""
        cfg = self.config
        T, H, W = grid
        per_view = ck.rope3d_freqs(
            (T // views, H, W), cfg.head_dim, h_extrapolation_ratio=cfg.rope_h_extrapolation_ratio,
            w_extrapolation_ratio=cfg.rope_w_extrapolation_ratio, t_extrapolation_ratio=cfg.rope_t_extrapolation_ratio,
            enable_fps_modulation=cfg.rope_enable_fps_modulation, fps=_fps_value(fps, cfg.rope_enable_fps_modulation),
            base_fps=cfg.base_fps, device=device)
        return per_view if views == 1 else per_view.repeat(views, 1)

    def _context(self, crossattn_emb: Tensor, image_context: Tensor | None, batch: int, dtype) -> tuple:
        cfg = self.config
        ctx = crossattn_emb.to(dtype)
        if hasattr(self, "crossattn_proj") and ctx.shape[-1] == cfg.crossattn_proj_in_channels:
            ctx = self.crossattn_proj(ctx)
        img = None
        if cfg.image_context_dim is not None:
            if image_context is None:  # no reference image: zeros, as the public pipelines do
                image_context = ctx.new_zeros(batch, cfg.image_context_tokens, cfg.image_context_dim)
            if image_context.dim() != 3 or image_context.shape[-1] != cfg.image_context_dim:
                raise ValueError(f"image_context has shape {tuple(image_context.shape)}; expected "
                                 f"(B, tokens, {cfg.image_context_dim})")
            img = self.img_context_proj(image_context.to(dtype))
        elif image_context is not None:
            raise ValueError("image_context was given but this model has no image context (image_context_dim is None)")
        return ctx, img

    def _run_blocks(self, x: Tensor, emb: Tensor, context: Tensor, freqs: Tensor, lora: Tensor, frames: Frames,
                    image_context: Tensor | None, **kw) -> Tensor:
        for block in self.blocks:
            x = block(x, emb, context, freqs, lora, frames, image_context)
        return x

    # -- forward -------------------------------------------------------------------------------------
    def forward(self, x_B_C_T_H_W: Tensor, timesteps_B_T: Tensor, crossattn_emb: Tensor,
                condition_video_input_mask: Tensor | None = None, padding_mask: Tensor | None = None,
                fps=None, *, image_context: Tensor | None = None, **variant_inputs) -> Tensor:
        """Velocity (B, 16, T, H, W).

        x_B_C_T_H_W: noisy latents (B, 16, T, H, W); timesteps_B_T: (B,) or (B, T) per latent frame, in
        the official scale (the network sees timesteps * config.timestep_scale); crossattn_emb: (B, N, 100352)
        raw text features (or (B, N, 1024) already projected); condition_video_input_mask: (B, 1, T, H, W),
        1 on conditioning frames (zeros if None); padding_mask: (B, 1, H, W) (zeros if None); fps: used by
        RoPE only with rope_enable_fps_modulation.
        """
        cfg = self.config
        unknown = sorted(set(variant_inputs) - set(self.variant_inputs))
        if unknown:
            raise TypeError(f"{type(self).__name__}.forward got unexpected inputs {unknown}; this "
                            f"{cfg.variant} model also takes {list(self.variant_inputs)}")
        self._check_inputs(x_B_C_T_H_W, timesteps_B_T, crossattn_emb)
        B = x_B_C_T_H_W.shape[0]
        dtype = self.x_embedder.proj[1].weight.dtype
        x_in = self._masks(x_B_C_T_H_W.to(dtype), condition_video_input_mask, padding_mask)
        tokens, views = self._embed(x_in, **variant_inputs)
        grid = tuple(tokens.shape[1:4])
        mod_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        emb, lora = self._time_embedding(timesteps_B_T, mod_dtype, condition_video_input_mask=condition_video_input_mask,
                                         frames=grid[0], **variant_inputs)
        context, image_ctx = self._context(crossattn_emb, image_context, B, dtype)
        freqs = self._rope(grid, views, fps, tokens.device)
        frames = Frames(grid, views)
        x = tokens.flatten(1, 3)
        if self.cp_group is not None:
            x, emb, lora, freqs = (_cp_split(t, frames, self.cp_group, dim) for t, dim in
                                   ((x, 1), (emb, 1), (lora, 1), (freqs, 0)))
        x = self._run_blocks(x, emb, context, freqs, lora, frames, image_ctx, x_in=x_in,
                             condition_video_input_mask=condition_video_input_mask, padding_mask=padding_mask,
                             fps=fps, **variant_inputs)
        out = self.final_layer(x, emb, lora)
        if self.cp_group is not None:
            out = _GatherFrames.apply(out, frames, self.cp_group)
        return self.unpatchify(out, grid)

    def unpatchify(self, x: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """(B, L, p1*p2*t*C) -> (B, C, T*t, H*p1, W*p2)."""
        cfg = self.config
        T, H, W = grid
        p, t = cfg.patch_spatial, cfg.patch_temporal
        B = x.shape[0]
        x = x.reshape(B, T, H, W, p, p, t, cfg.latent_channels).permute(0, 7, 1, 6, 2, 4, 3, 5)
        return x.reshape(B, cfg.latent_channels, T * t, H * p, W * p)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _trunc_normal(w: Tensor, fan_in: int) -> None:
    std = 1.0 / math.sqrt(fan_in)
    nn.init.trunc_normal_(w, std=std, a=-3 * std, b=3 * std)


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """layer(x) in x's precision: the AdaLN path runs in fp32 even when the weights are bf16."""
    w = layer.weight if layer.weight.dtype == x.dtype else layer.weight.to(x.dtype)
    b = layer.bias if layer.bias is None or layer.bias.dtype == x.dtype else layer.bias.to(x.dtype)
    return F.linear(x, w, b)


def _fps_value(fps, enabled: bool) -> float | None:
    if not enabled or fps is None:
        return None
    if isinstance(fps, Tensor):
        if fps.numel() > 1 and not bool((fps == fps.flatten()[0]).all()):
            raise ValueError("fps: RoPE fps modulation needs one fps for the whole batch, got several")
        return float(fps.flatten()[0])
    return float(fps)


def _cp_split(t: Tensor, frames: Frames, group, dim: int) -> Tensor:
    """Keep this rank's T/size latent frames of every view (tokens or per-frame rows along `dim`)."""
    size, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    T = frames.grid[0]
    if dim == 1 and t.shape[1] == 1:  # one modulation row for all frames: nothing to split
        return t
    if t.shape[dim] % T:
        raise ValueError(f"context parallel: cannot split {tuple(t.shape)} along {T} frames")
    V, Tv = frames.views, T // frames.views
    if Tv % size:
        raise ValueError(f"context parallel: {Tv} latent frames per view do not divide over {size} ranks")
    shape = t.shape
    per = shape[dim] // T
    v = t.reshape(*shape[:dim], V, Tv, per, *shape[dim + 1:])
    v = v.narrow(dim + 1, rank * (Tv // size), Tv // size)
    return v.reshape(*shape[:dim], V * (Tv // size) * per, *shape[dim + 1:])


class _GatherFrames(torch.autograd.Function):
    """All-gather the per-rank frame slices of (B, L_local, C) into (B, L, C) (views kept in order).

    Backward keeps this rank's slice of the incoming gradient: the loss on the gathered output is
    computed identically on every rank (replicated data), so no reduction is needed. The gather is
    linear, so the forward-mode rule gathers the tangent the same way (torch.func.jvp through the
    context-parallel model, for rCM distillation).
    """

    @staticmethod
    def forward(x: Tensor, frames: Frames, group) -> Tensor:
        size = torch.distributed.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(size)]
        torch.distributed.all_gather(parts, x.contiguous(), group=group)
        V = frames.views
        B, Ll, C = x.shape
        # each part: (B, V, Tv/size * N, C) -> concatenate ranks inside each view
        stacked = torch.stack([p.reshape(B, V, Ll // V, C) for p in parts], dim=2)
        return stacked.reshape(B, V * size * (Ll // V), C)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.frames, ctx.group = inputs[1], inputs[2]

    @staticmethod
    def jvp(ctx, x_tangent: Tensor, _frames_tangent, _group_tangent) -> Tensor:
        return _GatherFrames.forward(x_tangent, ctx.frames, ctx.group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        size, rank = torch.distributed.get_world_size(ctx.group), torch.distributed.get_rank(ctx.group)
        V = ctx.frames.views
        B, L, C = grad.shape
        g = grad.reshape(B, V, size, L // (V * size), C)[:, :, rank]
        return g.reshape(B, L // size, C), None, None
