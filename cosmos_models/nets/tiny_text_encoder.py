"""A tiny random Qwen2.5-VL in Cosmos-Reason1-7B's folder layout, for the tiny configs (nothing downloaded).

    python -m cosmos_models.data.example runs/dataset --text-encoder runs/tiny-encoder
    cosmos sample --config tiny --text-encoder runs/tiny-encoder --prompt "a red cube" ...

Its 2 layers x 24 channels give the tiny DiT's 48 text features, so `--prompt`, `cosmos embed` and
captioned post-training run end to end on a CPU with the real code path (transformers' tokenizer with
a chat template, Qwen2_5_VLForConditionalGeneration, the official embedding recipe); its embeddings
mean nothing. A word-level tokenizer over a small vocabulary (other words are [UNK]).
"""
from __future__ import annotations

import os

import torch

from cosmos_models._deps import require

WORDS = ("a robot arm picks up the red cube blue car drives on road over camera moves you are helpful assistant who "
         "will provide prompts to an image generator . , video captures series of frames showing ugly scenes "
         "square disc gradient shapes clip").split()
LAYERS, HIDDEN = 2, 24  # 2 x 24 = 48 features: the tiny DiT's text_channels


def make_tiny_text_encoder(folder: str | os.PathLike, seed: int = 0) -> str:
    """Write the encoder into folder (tokenizer with a chat template + model weights); returns the path."""
    transformers = require("transformers", "the tiny text encoder")
    from tokenizers import Tokenizer, models, pre_tokenizers

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
    vocab = {t: i for i, t in enumerate(special + ["system", "user"] + sorted(set(WORDS) - {"system", "user"}))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<|endoftext|>",
                                                eos_token="<|im_end|>", additional_special_tokens=special[1:3])
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}")
    fast.save_pretrained(folder)
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=64, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=LAYERS,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 2, 2]}, bos_token_id=0, eos_token_id=2),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=HIDDEN,
                           fullatt_block_indexes=[0]), bos_token_id=0, eos_token_id=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
    model.save_pretrained(folder)
    return os.fspath(folder)
