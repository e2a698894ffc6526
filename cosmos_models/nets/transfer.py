"""Transfer2.5: the DiT plus a control branch (official MinimalV4LVGControlVaceDiT names and layout).

The control latents (up to `control_slots` modality slots of 16 channels, zeros for absent ones,
+ condition mask + padding mask) go through their own patch embedding (`control_embedder`).
Control block j (a full DiT block) runs before the main stream:

    c = before_proj(c) + x          (block 0 only; x = the main stream's embedded input)
    c = control_blocks[j](c)
    hint_j = after_proj(c)          (zero-initialized Linear with bias)

and hint_j is added to the main stream after main block `control_block_indices[j]`, times
`control_context_scale`. At initialization every hint is zero, so the output equals the base model's.

Modalities, as the released Transfer2.5 checkpoints take them: each checkpoint is trained on ONE
modality, whose latent sits in control slot 0 (the other slots zero). Given a dict {modality: latent
(B, 16, T, H, W)}, each modality runs one control-branch pass with its latent in slot 0, through the
branch of its own checkpoint when one was added (`add_control_branch(modality, weights)`: the official
multi-control, one branch per modality checkpoint over one shared base forward), else through this
model's own branch; the hints are summed with per-modality weights, as the official code does:
scalars (default 1.0 each) are used as given; when any modality has a spatio-temporal weight map
(a mask times its weight), every weight becomes a map and at every position they are scaled so that
they sum to at most 1. A tensor (B, 16*k, T, H, W) is taken as the already packed slots
(k <= control_slots) and runs this model's branch once.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from cosmos_models.nets.config import DiTConfig
from cosmos_models.nets.dit import Block, DiT, Frames, PatchEmbed, _cp_split


class ControlBlock(Block):
    """A DiT block of the control branch: before_proj on the first, after_proj on every one."""

    def __init__(self, cfg: DiTConfig, index: int):
        super().__init__(cfg)
        D = cfg.model_channels
        if index == 0:
            self.before_proj = nn.Linear(D, D)
        self.after_proj = nn.Linear(D, D)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for name in ("before_proj", "after_proj"):
            if hasattr(self, name):
                nn.init.zeros_(getattr(self, name).weight)
                nn.init.zeros_(getattr(self, name).bias)

    def forward(self, c: Tensor, x: Tensor, emb: Tensor, context: Tensor, freqs: Tensor, adaln_lora: Tensor,
                frames: Frames, image_context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(the branch's next state, this block's hint for the main stream). The projections run
        inside the block's forward, so FSDP2 (which shards per block) has their weights gathered."""
        if hasattr(self, "before_proj"):
            c = self.before_proj(c) + x
        c = super().forward(c, emb, context, freqs, adaln_lora, frames, image_context)
        return c, self.after_proj(c)


class ControlBranch(nn.Module):
    """The control branch of one modality checkpoint: its patch embedding and control blocks (the
    official names under it: control_embedder.*, control_blocks.N.*)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.control_embedder = PatchEmbed(cfg.control_in_channels, cfg.model_channels, cfg.patch_spatial,
                                           cfg.patch_temporal)
        self.control_blocks = nn.ModuleList(ControlBlock(cfg, j) for j in range(len(cfg.control_block_indices)))


BRANCH_PREFIXES = ("control_embedder.", "control_blocks.")


class TransferDiT(DiT):
    variant_inputs = ("control_input", "control_weights", "control_context_scale")
    sampler_modes = ("transfer",)

    @classmethod
    def example_inputs(cls, cfg, batch, latent_shape, generator, device=None, dtype=torch.float32) -> dict:
        """One control modality (one control-branch pass)."""
        latent = torch.randn(batch, cfg.latent_channels, *latent_shape, generator=generator, dtype=dtype)
        return {"control_input": {cfg.control_modalities[0]: latent.to(device)}}

    @staticmethod
    def count_variant_flops(shape, tally, block, control_passes: int) -> None:
        """The control branch, once per modality pass (its blocks are dense)."""
        cfg = shape.cfg
        D = cfg.model_channels
        patch = cfg.patch_spatial * cfg.patch_spatial * cfg.patch_temporal
        for _ in range(control_passes):
            tally.linear("control_branch", shape.batch * shape.tokens, cfg.control_in_channels * patch, D,
                         input_grad=False)
            for j in range(len(cfg.control_block_indices)):
                if j == 0:
                    tally.linear("control_branch", shape.local_rows, D, D)  # before_proj
                block(None, "control_branch")
                tally.linear("control_branch", shape.local_rows, D, D)      # after_proj

    def _build_variant(self) -> None:
        cfg = self.config
        self.control_embedder = PatchEmbed(cfg.control_in_channels, cfg.model_channels, cfg.patch_spatial,
                                           cfg.patch_temporal)
        self.control_blocks = nn.ModuleList(ControlBlock(cfg, j) for j in range(len(cfg.control_block_indices)))
        # further modality checkpoints' branches (empty unless add_control_branch is called)
        self.control_branches = nn.ModuleDict()

    def add_control_branch(self, modality: str, weights: dict[str, Tensor]) -> ControlBranch:
        """Attach the control branch of another single-modality checkpoint (its state dict in our names;
        only its control_embedder.* / control_blocks.* entries are taken: the base of every released
        Transfer2.5 checkpoint is the same frozen Predict2.5 model). Memory grows by one branch."""
        cfg = self.config
        if modality not in cfg.control_modalities:
            raise ValueError(f"add_control_branch: unknown modality {modality!r}; expected one of {cfg.control_modalities}")
        if modality in self.control_branches:
            raise ValueError(f"add_control_branch: modality {modality!r} already has a branch")
        part = {k: v for k, v in weights.items() if k.startswith(BRANCH_PREFIXES)}
        ref = self.control_embedder.proj[1].weight
        with torch.device(ref.device if not ref.is_meta else "cpu"):
            branch = ControlBranch(cfg)
        missing, unexpected = branch.load_state_dict(part, strict=False, assign=ref.is_meta)
        if missing or unexpected:
            raise ValueError(f"add_control_branch({modality!r}): the checkpoint's control branch does not match "
                             f"this model: {len(missing)} missing ({missing[:3]}), {len(unexpected)} unexpected")
        if not ref.is_meta:
            branch.to(device=ref.device, dtype=ref.dtype)
        for block in branch.control_blocks:  # the same kernels, CP group and window as the main blocks
            block.cp_group = self.cp_group
        self.control_branches[modality] = branch
        return branch

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.control_embedder.reset_parameters()
        for block in self.control_blocks:
            block.reset_parameters()

    # -- control inputs --------------------------------------------------------------------------
    def _slots(self, latents: dict[int, Tensor], like: Tensor) -> Tensor:
        """(B, control_slots*16, T, H, W) with the given slots filled, zeros elsewhere."""
        cfg = self.config
        B, _, T, H, W = like.shape
        parts = [latents[i].to(like.dtype) if i in latents else like.new_zeros(B, cfg.latent_channels, T, H, W)
                 for i in range(cfg.control_slots)]
        return torch.cat(parts, dim=1)

    def _control_passes(self, control_input, control_weights, x: Tensor) -> list[tuple[Tensor, object]]:
        """[(slots tensor, weight, modality)] : one control-branch pass each."""
        cfg = self.config
        B, C, T, H, W = x.shape
        if control_input is None:
            raise ValueError(f"{cfg.name}: a Transfer model needs control_input: a dict {{modality: latent "
                             f"(B, {C}, T, H, W)}} with modalities from {cfg.control_modalities}, or packed slots "
                             f"(B, {C}*k, T, H, W)")
        if isinstance(control_input, Tensor):
            if control_input.dim() != 5 or control_input.shape[0] != B or control_input.shape[2:] != x.shape[2:] \
                    or control_input.shape[1] % C or control_input.shape[1] // C > cfg.control_slots:
                raise ValueError(f"control_input has shape {tuple(control_input.shape)}; expected (B, {C}*k, T, H, W) "
                                 f"with k <= {cfg.control_slots} and B, T, H, W of x {tuple(x.shape)}")
            return [(self._slots(dict(enumerate(control_input.split(C, dim=1))), x), 1.0, None)]
        if not isinstance(control_input, dict) or not control_input:
            raise ValueError(f"control_input must be a non-empty dict {{modality: latent}} or a tensor, got "
                             f"{type(control_input).__name__}")
        passes = []
        for name, latent in control_input.items():
            if name not in cfg.control_modalities:
                raise ValueError(f"control_input: unknown modality {name!r}; this model takes {cfg.control_modalities}")
            if not isinstance(latent, Tensor) or tuple(latent.shape) != tuple(x.shape):
                got = tuple(latent.shape) if isinstance(latent, Tensor) else type(latent).__name__
                raise ValueError(f"control_input[{name!r}] has shape {got}; expected the latent shape {tuple(x.shape)}")
            passes.append((self._slots({0: latent}, x), name))  # a single-modality checkpoint: slot 0
        weights = self._modality_weights(control_weights, [n for _, n in passes], x)
        return [(slots, w, name) for (slots, name), w in zip(passes, weights)]

    def _modality_weights(self, control_weights, names: list[str], x: Tensor) -> list:
        """The official mixing: scalars as given (1.0 each by default); with any map, all become maps
        capped so that they sum to at most 1 at every position."""
        if control_weights is None:
            return [1.0] * len(names)
        if not isinstance(control_weights, dict) or set(control_weights) != set(names):
            raise ValueError(f"control_weights must be a dict with one entry per given modality {names}, got "
                             f"{control_weights if not isinstance(control_weights, dict) else list(control_weights)}")
        B, _, T, H, W = x.shape
        grid = (T // self.config.patch_temporal, H // self.config.patch_spatial, W // self.config.patch_spatial)
        weights = [control_weights[n] for n in names]
        if not any(isinstance(w, Tensor) and w.numel() > 1 for w in weights):
            return [float(w) for w in weights]
        maps = torch.stack([_weight_map(w, B, grid, n, x) for w, n in zip(weights, names)])  # (M, B, T, H, W)
        total = maps.sum(0).clamp_min(1.0)  # cap the sum over modalities at 1 at every position
        return list(maps / total)

    def _token_weight(self, w, frames: Frames):
        """A scalar stays a float; a (B, T, H, W) map on the patch grid becomes (B, L, 1) for the tokens
        of this rank."""
        if isinstance(w, (int, float)):
            return float(w)
        w = torch.as_tensor(w)
        if w.numel() == 1:
            return float(w)
        T, H, W = frames.grid
        if w.dim() == 5 and w.shape[1] == 1:
            w = w[:, 0]
        if w.dim() != 4 or tuple(w.shape[1:]) != (T, H, W):
            raise ValueError(f"control weight map has shape {tuple(w.shape)}; expected (B, {T}, {H}, {W}) on the "
                             "latent patch grid")
        w = w.reshape(w.shape[0], T * H * W, 1)
        if self.cp_group is not None:
            w = _cp_split(w, frames, self.cp_group, 1)
        return w

    # -- forward ---------------------------------------------------------------------------------------
    def _run_blocks(self, x: Tensor, emb: Tensor, context: Tensor, freqs: Tensor, lora: Tensor, frames: Frames,
                    image_context: Tensor | None, *, x_in: Tensor, condition_video_input_mask=None, padding_mask=None,
                    control_input=None, control_weights=None, control_context_scale=1.0, **kw) -> Tensor:
        latents = x_in[:, : self.config.latent_channels]
        hints = None
        for slots, weight, modality in self._control_passes(control_input, control_weights, latents):
            branch = self.control_branches[modality] if modality in self.control_branches else self
            h = self._control_hints(branch, slots, x, emb, context, freqs, lora, frames, image_context,
                                    condition_video_input_mask, padding_mask)
            w = self._token_weight(weight, frames)
            h = [_times(t, w) for t in h] if not (isinstance(w, float) and w == 1.0) else h
            hints = h if hints is None else [a + b for a, b in zip(hints, h)]
        scale = self._token_weight(control_context_scale, frames)
        where = {block: j for j, block in enumerate(self.config.control_block_indices)}
        for i, block in enumerate(self.blocks):
            x = block(x, emb, context, freqs, lora, frames, image_context)
            if i in where:
                x = x + _times(hints[where[i]], scale)
        return x

    def _control_hints(self, branch, slots: Tensor, x: Tensor, emb, context, freqs, lora, frames: Frames,
                       image_context, condition_video_input_mask, padding_mask) -> list[Tensor]:
        """The hints of one branch (this model, or a ControlBranch) for one modality pass."""
        c_in = self._masks(slots, condition_video_input_mask, padding_mask)  # same masks as the main input
        c = branch.control_embedder(c_in).flatten(1, 3)
        if self.cp_group is not None:
            c = _cp_split(c, frames, self.cp_group, 1)
        hints = []
        for block in branch.control_blocks:
            c, hint = block(c, x, emb, context, freqs, lora, frames, image_context)
            hints.append(hint)
        return hints


def _weight_map(w, B: int, grid: tuple[int, int, int], name: str, x: Tensor) -> Tensor:
    """A modality weight as a (B, T, H, W) map on the latent patch grid."""
    T, H, W = grid
    w = torch.as_tensor(w, dtype=torch.float32, device=x.device)
    if w.numel() == 1:
        return w.reshape(1, 1, 1, 1).expand(B, T, H, W)
    if w.dim() == 5 and w.shape[1] == 1:  # (B, 1, T, H, W)
        w = w[:, 0]
    if w.dim() != 4 or w.shape[0] not in (1, B) or w.shape[1] != T:
        raise ValueError(f"control_weights[{name!r}] has shape {tuple(w.shape)}; expected a scalar or a map "
                         f"(B, T, H, W) / (B, 1, T, H, W) over the {T} latent frames")
    if w.shape[-2:] != (H, W):  # latent- or pixel-resolution map: resample to the patch grid
        w = torch.nn.functional.interpolate(w, size=(H, W), mode="bilinear", align_corners=False)
    return w.expand(B, T, H, W)


def _times(t: Tensor, w) -> Tensor:
    return t * (w.to(t.dtype) if isinstance(w, Tensor) else w)
