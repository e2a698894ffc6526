"""Analytic FLOPs of the DiT (every variant) for a forward pass and a training step.

    count(config, batch=1, frames=None, height=None, width=None, text_len=None, cp=1, sparse=True)
        -> {"parts": {part: {"forward", "backward", "train_step"}}, "total_forward",
            "total_backward", "total_train_step", "matmul_forward", "matmul_backward",
            "attention_forward", "attention_backward", "grid", "tokens", ...}

frames/height/width are pixels (None: the config's defaults, 93 x 704 x 1280 for the 2B); the WAN2.1
VAE maps them to 1 + (frames-1)//4 latent frames of height/8 x width/8, patchified 1x2x2
(720p x 93 frames -> 24 x 44 x 80 = 84480 tokens). `latent=(T, H, W)` gives the latent size instead.
text_len is the tokens of one prompt (multiview: one prompt per view, so the context is
views x text_len); the text arrives raw (crossattn_proj_in_channels wide) and is projected inside.
Timesteps are per latent frame (B, T), so the AdaLN modulation runs on B*T rows.

Convention (shared/DESIGN.md "MFU"):
- a matmul is 2*m*n*k; its backward is 2x forward (grad of input and of weight), or 1x where the
  input needs no gradient (the data-facing layers: patch embedding of the latents, text and image
  projections, timestep and action MLPs' first layers, control embedding), as autograd runs it;
- attention is 4*B*H*S_q*S_k*D forward (QK^T and PV); its backward 2.5x forward (10*B*H*S_q*S_k*D)
  as FlashAttention counts it (S recomputed once, dP, dS->dQ, dK, dV); sparse (neighborhood) blocks
  count the (query, key) pairs they really compute instead of S_q*S_k (`sparse=False`: as if dense);
- a training step is forward + backward; recomputation from activation checkpointing is not useful
  work and is never counted; element-wise ops, norms, softmax and the optimizer are not counted.
- cp > 1 (Ulysses context parallel): the numbers are per rank. Token-wise work (projections, MLP,
  modulation, final layer) is divided by cp; the attention core is unchanged in total and divided
  by cp per rank (every rank attends the full sequence with heads/cp heads, or its own queries to
  the full context in cross-attention); work every rank repeats on replicated inputs (patch and
  control embedding, timestep/action/text/image projections, cross-attention K/V of the context)
  is counted in full on each rank.

These are exactly the numbers `torch.utils.flop_counter.FlopCounterMode` reports for the model
(mm/addmm/bmm/baddbmm/convolution, plus our attention custom ops): importing this module registers
FLOP formulas for `cosmos_kernels::flash_attention[_bwd|_jvp]` and
`cosmos_kernels::neighborhood_attention_3d[_bwd|_jvp]`, which FlopCounterMode cannot see inside
(forward 4*B*H*S_q*S_k*D or pairs; backward 2.5x; the fused JVP kernels by the products they
compute: 6 for flash attention (3x), 5 for neighborhood attention, which reuses out and lse (2.5x)).
"""
from __future__ import annotations

from collections import defaultdict

import torch

from cosmos_models.nets import registry
from cosmos_models.nets.config import DiTConfig, SparseWindow, get_config
from cosmos_models.nets.vae import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION

ATTENTION_BACKWARD_FACTOR = 2.5  # FlashAttention's convention: backward = 2.5 x forward
# The peak every MFU figure of this project is quoted against (DESIGN.md "MFU"): NVIDIA H100 SXM,
# bf16 dense (no sparsity), datasheet, in FLOP/s. The peak used is printed with every MFU.
H100_SXM_BF16_DENSE = 989.4e12

PARTS = ("patch_embed", "t_embedder", "crossattn_proj", "img_context_proj", "action_embedder",
         "self_attn_proj", "self_attn_core", "cross_attn_proj", "cross_attn_core", "mlp", "adaln_modulation",
         "final_layer", "control_branch")


def attention_flops(batch_heads: int, pairs: int, head_dim: int) -> int:
    """Forward FLOPs of softmax attention over `pairs` (query, key) pairs per batch element and head."""
    return 4 * batch_heads * pairs * head_dim


def attention_backward_flops(batch_heads: int, pairs: int, head_dim: int) -> int:
    return 10 * batch_heads * pairs * head_dim  # 2.5 x forward


# ---------------------------------------------------------------------------------------------
# the tally: per part, matmul and attention FLOPs, forward and backward
# ---------------------------------------------------------------------------------------------
class _Tally:
    def __init__(self):
        self.flops = defaultdict(int)  # (part, kind, pass) -> FLOPs

    def linear(self, part: str, rows: int, fan_in: int, fan_out: int, input_grad: bool = True) -> None:
        f = 2 * rows * fan_in * fan_out
        self.flops[part, "matmul", "forward"] += f
        self.flops[part, "matmul", "backward"] += f * (2 if input_grad else 1)

    def attention(self, part: str, batch_heads: int, pairs: int, head_dim: int) -> None:
        self.flops[part, "attention", "forward"] += attention_flops(batch_heads, pairs, head_dim)
        self.flops[part, "attention", "backward"] += attention_backward_flops(batch_heads, pairs, head_dim)

    def total(self, kind: str | None = None, pass_: str | None = None, part: str | None = None) -> int:
        return sum(v for (p, k, s), v in self.flops.items()
                   if (kind is None or k == kind) and (pass_ is None or s == pass_) and (part is None or p == part))


class _Shape:
    """What the count needs to know about one forward: sizes on this rank and in total."""

    def __init__(self, cfg: DiTConfig, batch: int, grid: tuple[int, int, int], text_len: int, cp: int,
                 sparse: bool, views: int):
        self.cfg, self.batch, self.grid, self.cp, self.sparse, self.views = cfg, batch, grid, cp, sparse, views
        self.tokens = grid[0] * grid[1] * grid[2]          # whole sequence, one sample
        self.local_tokens = self.tokens // cp               # this rank's share of one sample
        self.text_len = text_len
        self.local_rows = batch * self.tokens // cp         # token rows on this rank
        self.frame_rows = batch * grid[0]                   # per-frame modulation rows, whole sequence
        self.local_frame_rows = self.frame_rows // cp
        self.context = text_len * views                     # context tokens of one sample


def _self_attention_pairs(shape: _Shape, window: SparseWindow | None) -> int:
    """(query, key) pairs one head of one sample attends in a main block, as Block._dense_or_sparse runs it."""
    from cosmos_kernels.neighborhood_attention import attended_pairs

    grid = shape.grid
    dense = shape.tokens * shape.tokens
    if window is None or grid[0] == 1 or not shape.sparse:  # images attend densely (official fallback)
        return dense
    kernel = tuple(g if k == -1 else min(k, g) for k, g in zip(window.kernel_size, grid))
    if kernel == tuple(grid) and all(d == 1 for d in window.dilation) and not any(window.is_causal):
        return dense
    return attended_pairs(grid, kernel, window.dilation, window.stride, window.is_causal)


def _block(t: _Shape, tally: _Tally, window: SparseWindow | None, names: dict[str, str]) -> None:
    """One DiT block (self-attention, cross-attention, MLP, three AdaLN-LoRA modulations)."""
    cfg = t.cfg
    D, H, hd, r = cfg.model_channels, cfg.num_heads, cfg.head_dim, cfg.adaln_lora_dim
    rows, B = t.local_rows, t.batch
    context_grad = cfg.crossattn_proj_in_channels is not None  # the context is the output of crossattn_proj
    # self-attention: q, k, v, output projections; core over the whole sequence with H/cp heads per rank
    for _ in range(4):
        tally.linear(names["self_attn_proj"], rows, D, D)
    tally.attention(names["self_attn_core"], B * H // t.cp, _self_attention_pairs(t, window), hd)
    # cross-attention: q and output on local tokens, k and v on the (replicated) context
    tally.linear(names["cross_attn_proj"], rows, D, D)
    tally.linear(names["cross_attn_proj"], rows, D, D)
    for _ in range(2):
        tally.linear(names["cross_attn_proj"], B * t.context, cfg.crossattn_emb_channels, D, input_grad=context_grad)
    # this rank's queries against the whole context; multiview: each view's S/views tokens attend to
    # their own prompt only (views x (S/views) x text_len pairs)
    tally.attention(names["cross_attn_core"], B * H, t.local_tokens * t.text_len, hd)
    if cfg.image_context_dim is not None:  # second attention to the projected image tokens
        n_img = cfg.image_context_tokens
        tally.linear(names["cross_attn_proj"], rows, D, D)
        for _ in range(2):
            tally.linear(names["cross_attn_proj"], B * n_img, D, D)
        tally.attention(names["cross_attn_core"], B * H, t.local_tokens * n_img, hd)
    hidden = int(D * cfg.mlp_ratio)
    tally.linear(names["mlp"], rows, D, hidden)
    tally.linear(names["mlp"], rows, hidden, D)
    for _ in range(3):  # self-attn, cross-attn, MLP modulations: SiLU -> D x r -> r x 3D, per frame
        tally.linear(names["adaln_modulation"], t.local_frame_rows, D, r)
        tally.linear(names["adaln_modulation"], t.local_frame_rows, r, 3 * D)


def _tally(t: _Shape, control_passes: int) -> _Tally:
    cfg = t.cfg
    D, B = cfg.model_channels, t.batch
    cls = registry.model_class(cfg)
    patch = cfg.patch_spatial * cfg.patch_spatial * cfg.patch_temporal
    tally = _Tally()
    # replicated on every rank: the embeddings run on the full inputs before the sequence is split.
    tally.linear("patch_embed", B * t.tokens, cfg.in_channels * patch, D, input_grad=cls.embed_input_grad)
    tally.linear("t_embedder", t.frame_rows, D, D, input_grad=False)      # linear_1 on the sinusoid
    tally.linear("t_embedder", t.frame_rows, D, 3 * D)                    # linear_2: shared AdaLN-LoRA term
    if cfg.crossattn_proj_in_channels is not None:
        tally.linear("crossattn_proj", B * t.context, cfg.crossattn_proj_in_channels, cfg.crossattn_emb_channels,
                     input_grad=False)
    if cfg.image_context_dim is not None:
        tally.linear("img_context_proj", B * cfg.image_context_tokens, cfg.image_context_dim, D, input_grad=False)

    main = {n: n for n in ("self_attn_proj", "self_attn_core", "cross_attn_proj", "cross_attn_core", "mlp",
                           "adaln_modulation")}
    for i in range(cfg.num_blocks):
        _block(t, tally, cfg.window(i), main)
    # the variant's own layers (action embedder, control branch, ...): counted by its class
    cls.count_variant_flops(t, tally, lambda window, part: _block(t, tally, window, dict.fromkeys(main, part)),
                            control_passes)

    r, out = cfg.adaln_lora_dim, patch * cfg.latent_channels
    tally.linear("final_layer", t.local_frame_rows, D, r)
    tally.linear("final_layer", t.local_frame_rows, r, 2 * D)
    tally.linear("final_layer", t.local_rows, D, out)
    return tally


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def latent_grid(config: DiTConfig | str, frames: int | None = None, height: int | None = None,
                width: int | None = None, latent: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """(T, H, W) token grid after the VAE and the patch embedding, from pixels or a latent size."""
    cfg = get_config(config)
    ps, pt = cfg.patch_spatial, cfg.patch_temporal
    if latent is not None:
        if frames is not None or height is not None or width is not None:
            raise ValueError("latent_grid: give either latent=(T, H, W) or frames/height/width in pixels, not both")
        if len(latent) != 3 or any(int(v) < 1 for v in latent):
            raise ValueError(f"latent must be 3 positive sizes (T, H, W), got {latent!r}")
        lt, lh, lw = (int(v) for v in latent)
    else:
        frames = cfg.num_frames if frames is None else int(frames)
        height = cfg.resolution[0] if height is None else int(height)
        width = cfg.resolution[1] if width is None else int(width)
        if frames < 1 or (frames - 1) % TEMPORAL_COMPRESSION:
            raise ValueError(f"frames={frames}: the WAN2.1 VAE takes 4k+1 pixel frames (1, 5, ..., 93)")
        unit = SPATIAL_COMPRESSION * ps
        if height < unit or width < unit or height % unit or width % unit:
            raise ValueError(f"height={height}, width={width}: both must be positive multiples of {unit} "
                             f"(VAE {SPATIAL_COMPRESSION}x times patch {ps})")
        lt = (frames - 1) // TEMPORAL_COMPRESSION + 1
        lh, lw = height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION
    if lt % pt or lh % ps or lw % ps:
        raise ValueError(f"latent size {(lt, lh, lw)} is not divisible by the patch ({pt}, {ps}, {ps})")
    return lt // pt, lh // ps, lw // ps


def count(config: DiTConfig | str, batch: int = 1, frames: int | None = None, height: int | None = None,
          width: int | None = None, text_len: int | None = None, cp: int = 1, sparse: bool = True, *,
          latent: tuple[int, int, int] | None = None, control_passes: int = 1) -> dict:
    """FLOPs of one forward and one training step of `config` (see the module docstring).

    batch: samples per rank; frames/height/width: pixels (None: the config's defaults); text_len:
    tokens per prompt (None: config.text_len); cp: context-parallel size (numbers per rank);
    sparse: neighborhood-attention blocks by their real pairs (False: counted as dense); latent:
    (T, H, W) latent size instead of pixels; control_passes: Transfer control-branch passes (one per
    control modality given as a dict; one for packed slots).
    """
    cfg = get_config(config)
    for name, value, low in (("batch", batch, 1), ("cp", cp, 1), ("control_passes", control_passes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"count: {name} must be an int >= {low}, got {value!r}")
    grid = latent_grid(cfg, frames, height, width, latent)
    text_len = cfg.text_len if text_len is None else text_len
    if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 1:
        raise ValueError(f"count: text_len must be a positive int, got {text_len!r}")
    views = registry.model_class(cfg).flop_views(cfg, grid)
    if cp > 1:
        if (grid[0] // views) % cp:
            raise ValueError(f"count: cp={cp} does not divide the {grid[0] // views} latent frames per view")
        if cfg.num_heads % cp:
            raise ValueError(f"count: cp={cp} does not divide num_heads={cfg.num_heads}")
    shape = _Shape(cfg, batch, grid, text_len, cp, sparse, views)
    tally = _tally(shape, control_passes)
    parts = {}
    for part in PARTS:
        fwd, bwd = tally.total(pass_="forward", part=part), tally.total(pass_="backward", part=part)
        if fwd or bwd:
            parts[part] = {"forward": fwd, "backward": bwd, "train_step": fwd + bwd}
    totals = {f"{kind}_{p}": tally.total(kind, p) for kind in ("matmul", "attention") for p in ("forward", "backward")}
    return {
        "config": cfg.name,
        "parts": parts,
        "total_forward": tally.total(pass_="forward"),
        "total_backward": tally.total(pass_="backward"),
        "total_train_step": tally.total(),
        **totals,
        "grid": grid,
        "tokens": shape.tokens,
        "batch": batch,
        "text_len": text_len,
        "views": views,
        "cp": cp,
        "sparse": sparse,
    }


# ---------------------------------------------------------------------------------------------
# FLOP formulas of our attention custom ops for torch.utils.flop_counter.FlopCounterMode
# ---------------------------------------------------------------------------------------------
def _register_flop_formulas() -> None:
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    import cosmos_kernels.flash_attention  # noqa: F401  (defines the ops)
    import cosmos_kernels.neighborhood_attention  # noqa: F401
    from cosmos_kernels.neighborhood_attention import attended_pairs

    ops = torch.ops.cosmos_kernels
    if ops.flash_attention in flop_registry:  # registered once per process
        return

    def dense(q, k):  # shapes (B, S, H, D)
        return q[0] * q[2], q[1] * k[1], q[3]

    def sparse(q, grid, kernel_size, dilation, stride, is_causal):
        return q[0] * q[2], attended_pairs(grid, kernel_size, dilation, stride, is_causal), q[3]

    @register_flop_formula(ops.flash_attention)
    def _fa(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return attention_flops(*dense(q, k))

    @register_flop_formula(ops.flash_attention_bwd)
    def _fa_bwd(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return attention_backward_flops(*dense(q, k))

    @register_flop_formula(ops.flash_attention_jvp)
    def _fa_jvp(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return 3 * attention_flops(*dense(q, k))  # S, tS (2), PV, P tV, (P*tS)V

    @register_flop_formula(ops.neighborhood_attention_3d)
    def _na(q, k, v, grid, kernel_size, dilation, stride, is_causal, *args, out_shape=None, **kwargs) -> int:
        return attention_flops(*sparse(q, grid, kernel_size, dilation, stride, is_causal))

    @register_flop_formula(ops.neighborhood_attention_3d_bwd)
    def _na_bwd(grad_out, grad_lse, q, k, v, out, lse, grid, kernel_size, dilation, stride, is_causal, *args,
                out_shape=None, **kwargs) -> int:
        return attention_backward_flops(*sparse(q, grid, kernel_size, dilation, stride, is_causal))

    @register_flop_formula(ops.neighborhood_attention_3d_jvp)
    def _na_jvp(q, k, v, tq, tk, tv, out, lse, grid, kernel_size, dilation, stride, is_causal, *args,
                out_shape=None, **kwargs) -> int:
        bh, pairs, d = sparse(q, grid, kernel_size, dilation, stride, is_causal)
        return 10 * bh * pairs * d  # S, tS (2), P tV, (P*tS)V: out and lse are reused


_register_flop_formulas()
