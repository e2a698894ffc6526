"""Text embeddings for the DiT's cross-attention.

The official conditioning is Cosmos-Reason1-7B (Qwen2.5-VL): all 28 hidden states after the token
embedding, each normalized over its channels `(x - mean) / (std + 1e-8)`, concatenated to
28 * 3584 = 100352 channels, for a prompt padded/truncated to 512 tokens (no attention mask). The
DiT projects them to 1024 (`crossattn_proj`).

Most users bring precomputed embeddings: `prepare_embeddings` checks and pads/truncates them (raw
100352-d features, or already-projected 1024-d ones). `Reason1Encoder` computes them from prompts
when the user has the weights locally (transformers is imported lazily; nothing is downloaded unless
the caller allows it).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NUM_LAYERS = 28
HIDDEN = 3584
FEATURES = NUM_LAYERS * HIDDEN  # 100352
TEXT_LEN = 512
SYSTEM_PROMPT = "You are a helpful assistant who will provide prompts to an image generator."


def normalize_layers(hidden_states: Sequence[Tensor]) -> Tensor:
    """Per-layer (x - mean) / (std + 1e-8) over channels, then concatenated: list of (B, N, C) -> (B, N, L*C)."""
    if not hidden_states:
        raise ValueError("normalize_layers: no hidden states given")
    out = []
    for i, h in enumerate(hidden_states):
        if h.dim() != 3 or h.shape[:2] != hidden_states[0].shape[:2]:
            raise ValueError(f"normalize_layers: layer {i} has shape {tuple(h.shape)}; every layer must be (B, N, C) "
                             f"with the same B, N as layer 0 {tuple(hidden_states[0].shape)}")
        hf = h.float()
        out.append((hf - hf.mean(dim=-1, keepdim=True)) / (hf.std(dim=-1, keepdim=True) + 1e-8))
    return torch.cat(out, dim=-1)


def pad_or_truncate(emb: Tensor, length: int = TEXT_LEN) -> Tensor:
    """(B, N, C) -> (B, length, C): zero-padded at the end or truncated."""
    if emb.dim() != 3:
        raise ValueError(f"text embedding must be (B, tokens, channels), got {tuple(emb.shape)}")
    n = emb.shape[1]
    if n >= length:
        return emb[:, :length]
    return torch.cat([emb, emb.new_zeros(emb.shape[0], length - n, emb.shape[2])], dim=1)


def prepare_embeddings(emb: Tensor, config=None, length: int | None = None) -> Tensor:
    """Check a precomputed embedding against a model config and pad/truncate it to the text length.

    Accepts the raw multi-layer features (config.text_channels, 100352 for the published models) or
    already-projected ones (config.crossattn_emb_channels, 1024); the DiT takes either.
    """
    if not isinstance(emb, Tensor):
        raise TypeError(f"text embedding must be a torch.Tensor, got {type(emb).__name__}")
    if emb.dim() == 2:
        emb = emb[None]
    if config is not None:
        widths = {config.text_channels, config.crossattn_emb_channels}
        if emb.shape[-1] not in widths:
            raise ValueError(f"text embedding has {emb.shape[-1]} channels; model {config.name} takes "
                             f"{config.text_channels} (multi-layer features) or {config.crossattn_emb_channels} "
                             "(projected)")
        length = length or config.text_len
    return pad_or_truncate(emb, length or TEXT_LEN)


class Reason1Encoder:
    """Prompt -> official multi-layer embedding (B, 512, 100352) with a local Cosmos-Reason1 checkpoint.

    `model_path`: a transformers-format Qwen2.5-VL folder (the Cosmos-Reason1-7B weights);
    `tokenizer_path` defaults to it. Nothing is fetched from a hub unless local_files_only=False.
    """

    def __init__(self, model_path: str, tokenizer_path: str | None = None, device="cpu",
                 dtype=torch.bfloat16, local_files_only: bool = True, max_length: int = TEXT_LEN):
        try:
            import transformers
        except ImportError as exc:
            raise ImportError("Reason1Encoder needs transformers (pip install transformers); or pass precomputed "
                              "embeddings to the model instead") from exc
        self.max_length = max_length
        self.device = torch.device(device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_path or model_path,
                                                                    local_files_only=local_files_only)
        self.model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model_path, torch_dtype=dtype, local_files_only=local_files_only).to(self.device).eval()

    def _tokens(self, prompt: str) -> Tensor:
        conversation = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": [{"type": "text", "text": prompt}]},
        ]
        ids = self.tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=False,
                                                 add_vision_id=False, max_length=self.max_length, truncation=True,
                                                 padding="max_length")
        ids = ids["input_ids"] if not isinstance(ids, list) and "input_ids" in ids else ids
        return torch.as_tensor(ids, dtype=torch.long)

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str]) -> Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = torch.stack([self._tokens(p) for p in prompts]).to(self.device)
        hidden = self.model(ids, output_hidden_states=True).hidden_states
        return pad_or_truncate(normalize_layers(hidden[1:]), self.max_length)
