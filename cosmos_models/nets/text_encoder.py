"""Prompts to embeddings for users: find the Reason1 weights, encode, cache on disk, free the encoder.

    encoder = PromptEncoder(path=None, device="cuda")      # --text-encoder, $COSMOS_TEXT_ENCODER, or the HF cache
    emb, neg = encoder(["a robot arm picks up a red cube", DEFAULT_NEGATIVE_PROMPT])   # (512, 100352) each
    encoder.release()                                      # before the DiT is built: peak memory is the DiT's

Where the weights are looked for, in order (`locate_text_encoder`): the path given (`--text-encoder`),
`$COSMOS_TEXT_ENCODER`, then the Hugging Face cache (`$HF_HUB_CACHE` / `$HF_HOME`) for the official
`nvidia/Cosmos-Reason1-7B` at the revision the official code pins, then at any cached revision —
with `local_files_only`, so nothing is ever downloaded. Not found: `TextEncoderNotFound`, one message
naming every place looked at and how to provide the weights (or to pass a precomputed embedding).

The disk cache (`$COSMOS_EMBEDDING_CACHE`, default `~/.cache/cosmos-kernels/embeddings`) keys an
embedding by the encoder's identity (its config and tokenizer files, and its weight files: the Hub's
content hashes in the HF cache, else names, sizes and modification times), the recipe (this
module's version, text length, dtype) and the prompt, so a batch of specs or a re-run encodes each
prompt once and a changed encoder never serves stale embeddings. Files are written atomically.
The encoder itself is loaded only on a cache miss.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from cosmos_models.nets.text import TEXT_LEN, Reason1Encoder

REPO_ID = "nvidia/Cosmos-Reason1-7B"  # the official text encoder (checkpoint_db of cosmos-predict2.5)
REVISION = "3210bec0495fdc7a8d3dbb8d58da5711eab4b423"  # the revision the official code pins
ENV_ENCODER = "COSMOS_TEXT_ENCODER"
ENV_CACHE = "COSMOS_EMBEDDING_CACHE"
RECIPE = "reason1-full-concat-v1"  # bump when the embedding computation changes: old cache entries stop matching
_SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                "chat_template.json", "special_tokens_map.json", "vocab.json", "merges.txt")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class TextEncoderNotFound(FileNotFoundError):
    """No Reason1 text encoder where we looked (the message lists the places and the ways out)."""


def default_cache_dir() -> str:
    return os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "cosmos-kernels",
        "embeddings")


def cache_dir_flag(value: str | None) -> str | bool | None:
    """--embedding-cache DIR | 'none' -> PromptEncoder's cache_dir (None: the default, False: no cache)."""
    return False if value is not None and value.lower() == "none" else value


def write_embedding(path: str, embedding: Tensor, dtype: torch.dtype) -> None:
    """<name>.pt {"embedding": (tokens, features)} as the data loaders and --prompt-embedding read it,
    written atomically."""
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save({"embedding": embedding.to(dtype).contiguous()}, tmp)
    os.replace(tmp, path)


def _is_model_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def _from_hf_cache(looked: list[str]) -> str | None:
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        looked.append("the Hugging Face cache (huggingface_hub is not installed)")
        return None
    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME")
                                               else constants.HF_HUB_CACHE)  # read now, not at import
    for revision in (REVISION, None):
        try:
            folder = snapshot_download(REPO_ID, revision=revision, cache_dir=cache, local_files_only=True)
        except Exception:  # noqa: BLE001 - any miss of the offline lookup means "not cached"
            continue
        if _is_model_folder(folder):
            return folder
    # a snapshot without a "main" ref (downloaded at another pinned revision): the newest complete one
    snapshots = os.path.join(cache, "models--" + REPO_ID.replace("/", "--"), "snapshots")
    found = [os.path.join(snapshots, d) for d in (os.listdir(snapshots) if os.path.isdir(snapshots) else ())]
    found = sorted((f for f in found if _is_model_folder(f)), key=os.path.getmtime)
    if found:
        return found[-1]
    looked.append(f"the Hugging Face cache {cache} for {REPO_ID} (not there)")
    return None


def locate_text_encoder(path: str | os.PathLike | None = None) -> str:
    """The folder of a transformers-format Reason1 / Qwen2.5-VL checkpoint (see the module doc)."""
    looked: list[str] = []
    if path is not None:
        path = os.fspath(path)
        if _is_model_folder(path):
            return path
        looked.append(f"--text-encoder {path} ({'no config.json in it' if os.path.isdir(path) else 'no such folder'})")
    else:
        env = os.environ.get(ENV_ENCODER)
        if env:
            if _is_model_folder(env):
                return env
            looked.append(f"${ENV_ENCODER}={env} ({'no config.json in it' if os.path.isdir(env) else 'no such folder'})")
        else:
            looked.append(f"${ENV_ENCODER} (not set)")
        found = _from_hf_cache(looked)
        if found is not None:
            return found
    raise TextEncoderNotFound(
        "no Reason1 text encoder found; looked at " + "; ".join(looked) + f". Download it once "
        f"(huggingface-cli download {REPO_ID}) and pass --text-encoder FOLDER or set ${ENV_ENCODER}, or pass "
        "a precomputed embedding (--prompt-embedding FILE, written by `cosmos embed`)")


def encoder_identity(folder: str) -> str:
    """A digest of what determines the encoder's output (see the module doc); cheap for a 16 GB folder."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        if not os.path.isfile(full):
            continue
        if name in _SMALL_FILES or name.endswith(".index.json"):
            h.update(name.encode() + b"\0")
            with open(full, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        elif name.endswith(_WEIGHT_SUFFIXES):
            real = os.path.realpath(full)  # the HF cache links each file to a blob named by its content hash
            st = os.stat(real)
            blob = os.path.basename(real)
            mark = blob if os.path.dirname(real).endswith("blobs") else f"{st.st_size}:{st.st_mtime_ns}"
            h.update(f"{name}\0{mark}\0".encode())
    return h.hexdigest()


class PromptEncoder:
    """Prompts -> official embeddings (TEXT_LEN, features), cached on disk; loads the encoder on a miss.

    path: the encoder folder, or None to locate it (`locate_text_encoder`). device, dtype: where the
    encoder runs (default: cuda in bf16 if available, else the CPU in float32). cache_dir: None for the
    default, False for no disk cache. The embeddings come back float32 on the CPU.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, device=None, dtype: torch.dtype | None = None,
                 cache_dir: str | os.PathLike | bool | None = None, max_length: int = TEXT_LEN):
        self.path = locate_text_encoder(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.max_length = max_length
        self.cache_dir = None if cache_dir is False else os.fspath(cache_dir or default_cache_dir())
        self._identity = encoder_identity(self.path)
        self._encoder: Reason1Encoder | None = None
        self.hits = self.misses = 0

    def key(self, prompt: str) -> str:
        recipe = json.dumps([RECIPE, self._identity, self.max_length, str(self.dtype), prompt])
        return hashlib.sha256(recipe.encode()).hexdigest()[:32]

    def _cache_file(self, prompt: str) -> str | None:
        return None if self.cache_dir is None else os.path.join(self.cache_dir, self.key(prompt) + ".safetensors")

    def _read(self, file: str | None) -> Tensor | None:
        if file is None or not os.path.isfile(file):
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            emb = load_file(file)["embedding"]
        except (OSError, KeyError, SafetensorError):
            return None  # a damaged entry is computed again (and rewritten)
        return emb.float() if torch.isfinite(emb).all() else None

    def _write(self, file: str | None, prompt: str, emb: Tensor) -> None:
        if file is None:
            return
        from safetensors.torch import save_file
        os.makedirs(self.cache_dir, exist_ok=True)
        tmp = f"{file}.{os.getpid()}.tmp"
        save_file({"embedding": emb.contiguous()}, tmp, metadata={"prompt": prompt[:4000], "recipe": RECIPE,
                                                                  "encoder": self.path})
        os.replace(tmp, file)

    def __call__(self, prompts: str | Sequence[str]) -> list[Tensor]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out: list[Tensor | None] = []
        todo: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompt {i} must be a str, got {type(prompt).__name__}")
            emb = self._read(self._cache_file(prompt))
            out.append(emb)
            if emb is None:
                todo.setdefault(prompt, []).append(i)
            else:
                self.hits += 1
        if todo:
            encoder = self._load()
            for prompt, where in todo.items():
                emb = encoder(prompt)[0].to(device="cpu", dtype=self.dtype)
                self._write(self._cache_file(prompt), prompt, emb)
                for i in where:
                    out[i] = emb.float()
                self.misses += 1
        return out

    def warm(self, prompts: Sequence[str]) -> None:
        """Compute and cache (on disk) every prompt not cached yet, keeping nothing in memory: a batch of
        hundreds of prompts (100 MB each at full width) is then read back one at a time (`cached`)."""
        if self.cache_dir is None:
            raise ValueError("PromptEncoder.warm needs the disk cache (cache_dir is False)")
        missing = list(dict.fromkeys(p for p in prompts if self._read(self._cache_file(p)) is None))
        self.hits += len(set(prompts)) - len(missing)
        if missing:
            encoder = self._load()
            for prompt in missing:
                self._write(self._cache_file(prompt), prompt, encoder(prompt)[0].to(device="cpu", dtype=self.dtype))
                self.misses += 1

    def cached(self, prompt: str) -> Tensor:
        """The cached embedding of a prompt (float32, CPU); FileNotFoundError naming it when it is not cached."""
        emb = self._read(self._cache_file(prompt))
        if emb is None:
            raise FileNotFoundError(f"no cached embedding of the prompt {prompt[:80]!r} under {self.cache_dir}")
        return emb

    def _load(self) -> Reason1Encoder:
        if self._encoder is None:
            self._encoder = Reason1Encoder(self.path, device=self.device, dtype=self.dtype, max_length=self.max_length)
        return self._encoder

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def release(self) -> None:
        """Free the encoder (its weights and, on a GPU, the cached blocks), keeping the disk cache."""
        self._encoder = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
