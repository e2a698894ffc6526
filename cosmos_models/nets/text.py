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


def _version_at_least(version: str, wanted: tuple[int, ...]) -> bool:
    parts = []
    for piece in version.split(".")[:len(wanted)]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts) >= wanted


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
        # transformers 4.56 renamed from_pretrained's torch_dtype to dtype (the old name warns in 5.x)
        spelling = "dtype" if _version_at_least(transformers.__version__, (4, 56)) else "torch_dtype"
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # one bar per weight shard is noise in a batch
        try:
            self.model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
                model_path, local_files_only=local_files_only, **{spelling: dtype}).to(self.device).eval()
        finally:
            if bars:
                transformers.utils.logging.enable_progress_bar()

    def _tokens(self, prompt: str) -> list[int]:
        """The official tokenization: the chat template (system + user turn, no generation prompt)
        as text, tokenized unpadded, then padded with the pad token / truncated to max_length."""
        conversation = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        chat = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)
        ids = list(self.tokenizer(chat)["input_ids"])[:self.max_length]
        pad = self.tokenizer.pad_token_id
        if pad is None:
            raise ValueError("the text encoder's tokenizer has no pad token (the official embedding pads with it)")
        return ids + [pad] * (self.max_length - len(ids))

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str]) -> Tensor:
        """(B, max_length, layers * hidden) float32 for B prompts."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt {i} must be a str, got {type(p).__name__}")
        ids = torch.tensor([self._tokens(p) for p in prompts], dtype=torch.long, device=self.device)
        hidden = self.model(ids, output_hidden_states=True).hidden_states
        return pad_or_truncate(normalize_layers(hidden[1:]), self.max_length)
