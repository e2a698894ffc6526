"""Multiview and action-conditioned variants of the DiT (official MultiViewDiT and
ActionChunkConditionedMinimalV1LVGDiT names and layout).

Multiview: V views concatenated along latent time (T = V * frames_per_view). A learnt view embedding
(`view_embeddings`, nn.Embedding(7, 7)) is concatenated on channels after the masks, RoPE is built
per view (t restarts at 0 in every view), and cross-attention attends each view's tokens to its own
chunk of the text context (the context holds V prompts of equal length, concatenated).

Action: actions (B, 4*(T-1), 7) are grouped per latent frame (4 per frame), embedded by two MLPs
(Linear -> GELU(tanh) -> Linear) to D and 3D, zero-padded for the first latent frame, zeroed on
conditioning frames, and added to the timestep embedding (before its RMSNorm) and to the shared
AdaLN-LoRA term.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cosmos_models.nets.dit import DiT, _linear


class MultiviewDiT(DiT):
    variant_inputs = ("view_indices", "num_views")
    sampler_modes = ("multiview",)
    embed_input_grad = True  # the input carries the learnt view embedding

    @classmethod
    def flop_views(cls, cfg, grid) -> int:
        if grid[0] % cfg.frames_per_view:
            raise ValueError(f"count: {grid[0]} latent frames are not a multiple of frames_per_view="
                             f"{cfg.frames_per_view} ({cfg.name})")
        return grid[0] // cfg.frames_per_view

    @classmethod
    def example_inputs(cls, cfg, batch, latent_shape, generator, device=None, dtype=torch.float32) -> dict:
        views = cls.flop_views(cfg, latent_shape)
        return {"view_indices": torch.arange(views, device=device).expand(batch, views), "num_views": views}

    def _build_variant(self) -> None:
        cfg = self.config
        self.view_embeddings = nn.Embedding(cfg.view_embedding_count, cfg.view_embedding_dim)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.view_embeddings.reset_parameters()

    def _num_views(self, T: int, num_views: int | None) -> int:
        fpv = self.config.frames_per_view
        if num_views is None:
            if T % fpv:
                raise ValueError(f"multiview: x has T={T} latent frames, not a multiple of frames_per_view={fpv}; "
                                 "pass num_views explicitly")
            num_views = T // fpv
        if num_views < 1 or T % num_views:
            raise ValueError(f"multiview: T={T} latent frames do not split into num_views={num_views} equal views")
        return num_views

    def _embed(self, x_in: Tensor, view_indices: Tensor | None = None, num_views: int | None = None, **kw):
        cfg = self.config
        B, _, T, H, W = x_in.shape
        V = self._num_views(T, num_views)
        if view_indices is None:
            view_indices = torch.arange(V, device=x_in.device).expand(B, V)
        if view_indices.dim() != 2 or view_indices.shape[0] != B or view_indices.shape[1] not in (V, T):
            raise ValueError(f"view_indices has shape {tuple(view_indices.shape)}; expected (B, V) = {(B, V)} "
                             f"or (B, T) = {(B, T)} (a camera index per view or per latent frame)")
        if view_indices.shape[1] == V:
            view_indices = view_indices.repeat_interleave(T // V, dim=1)
        idx = view_indices.long().clamp(max=cfg.view_embedding_count - 1)
        emb = self.view_embeddings(idx).to(x_in.dtype)  # (B, T, 7)
        emb = emb.permute(0, 2, 1)[..., None, None].expand(B, cfg.view_embedding_dim, T, H, W)
        return self.x_embedder(torch.cat([x_in, emb], dim=1)), V


class _ActionMlp(nn.Module):
    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.activation = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, x: Tensor) -> Tensor:
        # in x's precision (fp32 with the AdaLN path, whatever the weights' dtype); called as a module so
        # FSDP2 hooks on it fire
        return _linear(self.fc2, self.activation(_linear(self.fc1, x)))


class ActionDiT(DiT):
    variant_inputs = ("action",)
    sampler_modes = ("action",)

    @classmethod
    def example_inputs(cls, cfg, batch, latent_shape, generator, device=None, dtype=torch.float32) -> dict:
        steps = cfg.actions_per_latent_frame * (latent_shape[0] - 1)
        return {"action": torch.randn(batch, steps, cfg.action_dim, generator=generator, dtype=dtype).to(device)}

    @staticmethod
    def count_variant_flops(shape, tally, block, control_passes: int) -> None:
        """Two MLPs over the T - 1 action groups (the first frame is zero-padded)."""
        cfg = shape.cfg
        D = cfg.model_channels
        rows = shape.batch * (shape.grid[0] - 1)
        features = cfg.action_dim * cfg.actions_per_latent_frame
        hidden = cfg.action_hidden_dim or 4 * D
        for out in (D, 3 * D):
            tally.linear("action_embedder", rows, features, hidden, input_grad=False)
            tally.linear("action_embedder", rows, hidden, out)

    def _build_variant(self) -> None:
        cfg = self.config
        D = cfg.model_channels
        hidden = cfg.action_hidden_dim or 4 * D
        features = cfg.action_dim * cfg.actions_per_latent_frame
        self.action_embedder_B_D = _ActionMlp(features, hidden, D)
        self.action_embedder_B_3D = _ActionMlp(features, hidden, 3 * D)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for mlp in (self.action_embedder_B_D, self.action_embedder_B_3D):
            mlp.fc1.reset_parameters()
            mlp.fc2.reset_parameters()

    def _time_embedding(self, timesteps_B_T, mod_dtype, *, action: Tensor | None = None, frames: int = 1,
                        condition_video_input_mask: Tensor | None = None, **kw):
        cfg = self.config
        k, a = cfg.actions_per_latent_frame, cfg.action_dim
        B = timesteps_B_T.shape[0]
        if action is None:
            raise ValueError(f"{cfg.name}: an action-conditioned model needs action (B, {k}*(T-1), {a})")
        if action.dim() != 3 or action.shape[0] != B or action.shape[2] != a or action.shape[1] != k * (frames - 1):
            raise ValueError(f"action has shape {tuple(action.shape)}; expected (B, {k}*(T-1), {a}) = "
                             f"{(B, k * (frames - 1), a)} for T={frames} latent frames")
        grouped = action.to(mod_dtype).reshape(B, frames - 1, k * a)
        emb_d = F.pad(self.action_embedder_B_D(grouped), (0, 0, 1, 0))    # first latent frame: zeros
        emb_3d = F.pad(self.action_embedder_B_3D(grouped), (0, 0, 1, 0))
        if condition_video_input_mask is not None:  # no action on conditioning frames
            cond = condition_video_input_mask.to(mod_dtype)
            keep = 1 - cond.expand(B, 1, frames, *cond.shape[-2:])[:, 0, :, 0, 0]
            emb_d, emb_3d = emb_d * keep[..., None], emb_3d * keep[..., None]
        emb, lora = self._raw_time_embedding(timesteps_B_T, mod_dtype)
        return self.t_embedding_norm(emb + emb_d), lora + emb_3d

